"""What every placer shares: the cost, the refusal, the free-space grid, and the Placement a heuristic
returns (the problem's types are the core's, wsc.core.mesh)."""

from __future__ import annotations

import numpy as np

from wsc.core.errors import DoesNotPlace
from wsc.core.mesh import Anchor, Flow, KernelRect, Mesh, Placement, Rect


def wirelength(rects: dict[str, Rect], flows: list[Flow]) -> int:
    """Sum of bytes x Manhattan hops between rectangle centres, rounded to an integer."""
    doubled = 0
    for f in flows:
        a, b = rects[f.src], rects[f.dst]
        dist2 = abs((2 * a.x + a.w) - (2 * b.x + b.w)) + abs((2 * a.y + a.h) - (2 * b.y + b.h))
        doubled += f.bytes * dist2
    return (doubled + 1) // 2


def anchored_wirelength(rects: dict[str, Rect], flows: list[Flow], anchors: tuple[Anchor, ...] = ()) -> int:
    """`wirelength` plus bytes x hops from each anchored kernel's centre to its anchor."""
    doubled = sum(a.bytes * (abs(2 * rects[a.kernel].x + rects[a.kernel].w - a.x2)
                             + abs(2 * rects[a.kernel].y + rects[a.kernel].h - a.y2)) for a in anchors)
    return wirelength(rects, flows) + (doubled + 1) // 2


def lane_load(flow: Flow, a: Rect, b: Rect) -> int:
    """Bytes on each lane of `flow` from rectangle `a` to `b`, as the routers split it
    (passes/routers/common.py): one lane per facing row when the rectangles sit side by side (no shared
    column), one per facing column when they share columns (one above the other)."""
    share_columns = a.x < b.x + b.w and b.x < a.x + a.w
    lanes = min(a.w, b.w) if share_columns else min(a.h, b.h)
    return -(-flow.bytes // max(lanes, 1))


def charged_cycles(rects: dict[str, Rect], flows: list[Flow], link_bytes_per_cycle: float,
                   hop_latency_cycles: float, anchors: tuple[Anchor, ...] = ()) -> float:
    """The fabric time a placement is charged, as the placer can see it before routing: the most loaded
    lane of any one flow over the link bandwidth, plus the longest centre-to-centre distance in hops at the
    hop latency. It is the estimate's fabric term (busiest link plus longest route) without the sharing of
    links between flows, which only routing decides. With `anchors` (a pipelined band's edges), plus the
    hops from each edge point to its kernel (once per kernel and point): the band's share of the handoff's
    longest route."""
    loads, hops = [0], [0.0]
    for f in flows:
        if f.src == f.dst:
            continue
        a, b = rects[f.src], rects[f.dst]
        loads.append(lane_load(f, a, b))
        hops.append((abs(2 * a.x + a.w - 2 * b.x - b.w) + abs(2 * a.y + a.h - 2 * b.y - b.h)) / 2)
    seen = {(a.kernel, a.x2, a.y2) for a in anchors}
    edges = sum(abs(2 * rects[k].x + rects[k].w - x2) + abs(2 * rects[k].y + rects[k].h - y2) for k, x2, y2 in seen)
    return max(loads) / link_bytes_per_cycle + (max(hops) + edges / 2) * hop_latency_cycles


def traffic(flows: list[Flow]) -> dict[tuple[str, str], int]:
    """Bytes between each unordered pair of distinct kernels (distance is symmetric; self-flows cost 0)."""
    pairs: dict[tuple[str, str], int] = {}
    for f in flows:
        if f.src != f.dst:
            key = (min(f.src, f.dst), max(f.src, f.dst))
            pairs[key] = pairs.get(key, 0) + f.bytes
    return pairs


def neighbours(kernels: list[KernelRect], flows: list[Flow]) -> dict[str, dict[str, int]]:
    """Per kernel, the bytes it exchanges with each other kernel (both directions summed)."""
    out: dict[str, dict[str, int]] = {k.name: {} for k in kernels}
    for (a, b), nbytes in traffic(flows).items():
        out[a][b] = nbytes
        out[b][a] = nbytes
    return out


def heuristic(strategy: str, rects: dict[str, Rect], flows: list[Flow]) -> Placement:
    """A heuristic's answer as a Placement: its objective is its wirelength, its bound the trivial 0."""
    wl = wirelength(rects, flows)
    return Placement(rects, strategy, "HEURISTIC", float(wl), 0.0, 1.0 if wl > 0 else 0.0, wl, 0.0)


def no_fit(kernels: list[KernelRect], mesh: Mesh, why: str) -> DoesNotPlace:
    need = sum(k.w * k.h for k in kernels)
    have = mesh.rows * mesh.cols - len(mesh.dead)
    dead = f" ({len(mesh.dead)} dead PEs split the free space)" if mesh.dead and need <= have else ""
    return DoesNotPlace(
        f"the layer's {len(kernels)} kernels do not fit on the {mesh.rows} x {mesh.cols} mesh ({why}): "
        f"they need {need} PEs, {have} are usable{dead}; use smaller kernel rectangles",
        need, have,
    )


def summed_area(a: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero border: the sum over rows y0..y1-1, cols x0..x1-1 is
    s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0]."""
    s = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.int64)
    s[1:, 1:] = a.cumsum(0).cumsum(1)
    return s


def window_sums(s: np.ndarray, w: int, h: int) -> np.ndarray:
    """[rows-h+1, cols-w+1]: the sum under a w x h rectangle at every top-left (y, x)."""
    return s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w]


class Grid:
    """Dead PEs and PEs taken by placed kernels, each with a summed-area table, so 'may this kernel go here'
    is O(1) per position and numpy answers it for every position of a kernel at once."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.dead_sat = summed_area(mesh.dead_grid)
        self.taken = np.zeros((mesh.rows, mesh.cols), dtype=np.int32)
        self.taken_sat = summed_area(self.taken)

    def legal(self, k: KernelRect) -> np.ndarray:
        """Bool [rows-h+1, cols-w+1]: True where k's top-left may go given dead PEs alone."""
        return window_sums(self.dead_sat, k.w, k.h) <= k.slack

    def free(self, k: KernelRect) -> np.ndarray:
        """Bool [rows-h+1, cols-w+1]: legal and clear of every kernel placed so far."""
        return self.legal(k) & (window_sums(self.taken_sat, k.w, k.h) == 0)

    def dead_in(self, x: int, y: int, w: int, h: int) -> int:
        s = self.dead_sat
        return int(s[y + h, x + w] - s[y, x + w] - s[y + h, x] + s[y, x])

    def take(self, r: Rect) -> None:
        self.taken[r.y : r.y + r.h, r.x : r.x + r.w] = 1
        self.taken_sat = summed_area(self.taken)
