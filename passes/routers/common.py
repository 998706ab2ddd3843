"""What the routers share: a flow's lanes, a bundle (one flow routed in one shape, with its loads), detours
around dead PEs, the colors, and the result type `Routes`.

Each flow is modelled as `lanes` parallel paths (a bundle), bytes split evenly over the lanes:

- Rectangles side by side (no shared column): lanes = min(src.h, dst.h). Lane i leaves the source from its
  side facing the destination (right column if the destination lies east, else left column), on a row
  spread evenly over the source's rows, and arrives on the destination's near column, on a row spread evenly
  over the destination's rows.
- Rectangles sharing columns (one above the other): a row-based lane would climb through its own
  rectangle, so the flow leaves through the facing bottom/top side instead, with lanes = min(src.w, dst.w)
  spread over the columns the same way.

A lane end that falls on a dead PE inside a kernel moves to the nearest working PE of that kernel.

Each lane follows its bundle's shape (SHAPES): XY (along its row, then along the destination column), YX,
and the two staggered Z shapes (row, column, row with each lane turning at its own column; or column, row,
column with its own row). A lane whose path crosses a dead PE is re-routed around it: each blocked stretch
is replaced by a shortest path between the last good PE before it and the first good PE after it, searched
in a window that grows until a path is found (so a single dead PE costs a small detour, not a whole-mesh
search).

Colors: the fabric routes by color (virtual channel) and a router forwards a color one way, so two flows
that share a directed link need different colors; all lanes of one flow share its color. Colors are given by
greedy coloring of that conflict graph (most conflicts first) within the target's routable colors, and a
flow that finds none free is an error naming it. Loads are accumulated in difference arrays and summed once,
so a straight 1700-hop lane costs O(1) numpy work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from wsc.core.errors import WscError
from wsc.core.mesh import Flow, Mesh, Placement, Rect

SHAPES: tuple[str, ...] = ("xy", "yx", "zx", "zy")


@dataclass
class Routes:
    """Link loads in bytes per direction, per-flow route summaries, lane paths and colors.

    `link_load["east"][r, c]` is the bytes sent from (r, c) to (r, c+1); "west" the reverse; both have shape
    [rows, cols-1]. `link_load["south"][r, c]` is from (r, c) to (r+1, c) (rows grow southward); "north"
    the reverse; both [rows-1, cols]. Each edge dict has src, dst, bytes, hops (longest lane), lanes,
    rerouted (lanes detoured around dead PEs), shape and color. `paths[(src, dst)]` holds each lane's
    corners as an [n, 2] array of (row, col), from its first PE to its last. `colors[(src, dst)]` is the
    flow's color (flows that stay inside one kernel use no fabric and get none).
    """

    max_link_load: int
    total_byte_hops: int
    longest_route_hops: int
    link_load: dict[str, np.ndarray]
    edges: list[dict]
    colors: dict[tuple[str, str], int] = field(default_factory=dict)
    router: str = "xy"
    paths: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=dict)


@dataclass
class Bundle:
    """One flow routed in one shape: its lanes' corners, and its loads in a window of the mesh.

    `load` is [4, h, w] (east, west, south, north, indexed by the link's first PE as in Routes.link_load)
    over the window whose top-left PE is `origin`.
    """

    flow: Flow
    shape: str
    paths: list[np.ndarray]
    hops: np.ndarray
    val: np.ndarray
    rerouted: int
    origin: tuple[int, int] = (0, 0)
    load: np.ndarray = field(default_factory=lambda: np.zeros((4, 0, 0), dtype=np.int64))

    @property
    def byte_hops(self) -> int:
        return int((self.hops * self.val).sum())


def distinct(options: list[Bundle]) -> list[Bundle]:
    """The options without repeats: two shapes that load the same links the same way (e.g. XY and YX of a
    straight bundle) are one option, the first kept."""
    out: list[Bundle] = []
    for b in options:
        same = any(
            o.origin == b.origin and o.load.shape == b.load.shape and np.array_equal(o.load, b.load) for o in out
        )
        if not same:
            out.append(b)
    return out


def bundle(f: Flow, placement: Placement, mesh: Mesh, dead: np.ndarray, shape: str) -> Bundle:
    """Flow `f` routed in `shape` (one of SHAPES) between its rectangles, every lane detoured around the dead
    PEs of `dead` (the mesh's dead grid); a flow inside one kernel has no lanes."""
    for end in (f.src, f.dst):
        if end not in placement.rects:
            raise WscError(f"flow {f.src} -> {f.dst} names {end!r}, which is not placed; place it first")
    if f.src == f.dst:
        return Bundle(f, shape, [], np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    src, dst = placement.rects[f.src], placement.rects[f.dst]
    r0, c0, r1, c1 = lane_endpoints(src, dst)
    if dead.any():
        r0, c0 = _snap(r0, c0, src, dead, f)
        r1, c1 = _snap(r1, c1, dst, dead, f)
    lanes = r0.size
    # Integer split: the first bytes % lanes lanes carry one byte more, so loads add up exactly.
    val = np.full(lanes, f.bytes // lanes, dtype=np.int64)
    val[: f.bytes % lanes] += 1
    corners = _corners(shape, r0, c0, r1, c1)  # [lanes, k, 2]
    blocked = _hits_dead(corners, dead)
    paths: list[np.ndarray] = []
    hops = np.abs(np.diff(corners, axis=1)).sum(axis=(1, 2))
    for i in range(lanes):
        if blocked[i]:
            nodes = _detour(_polyline_nodes(corners[i]), dead, f)
            hops[i] = len(nodes) - 1
            paths.append(_corners_of(nodes))
        else:
            paths.append(_drop_repeats(corners[i]))
    b = Bundle(f, shape, paths, hops, val, int(blocked.sum()))
    _window_load(b, mesh)
    return b


def _corners(shape: str, r0: np.ndarray, c0: np.ndarray, r1: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """[lanes, 4, 2] corner points of every lane for one shape (a repeated point is a zero-length leg)."""
    lanes = r0.size
    i = np.arange(lanes, dtype=np.int64)
    if shape == "xy":
        pts = [(r0, c0), (r0, c1), (r1, c1), (r1, c1)]
    elif shape == "yx":
        pts = [(r0, c0), (r1, c0), (r1, c1), (r1, c1)]
    elif shape == "zx":  # turn down at a column of its own, spread between the two ends
        m = c0 + (c1 - c0) * (i + 1) // (lanes + 1)
        pts = [(r0, c0), (r0, m), (r1, m), (r1, c1)]
    else:  # "zy": turn across at a row of its own
        m = r0 + (r1 - r0) * (i + 1) // (lanes + 1)
        pts = [(r0, c0), (m, c0), (m, c1), (r1, c1)]
    return np.stack([np.stack([r, c], axis=1) for r, c in pts], axis=1).astype(np.int64)


def _drop_repeats(points: np.ndarray) -> np.ndarray:
    keep = np.concatenate([[True], np.any(np.diff(points, axis=0) != 0, axis=1)])
    return points[keep]


def _corners_of(nodes: np.ndarray) -> np.ndarray:
    """The corners of a PE path: its ends and every PE where the direction changes."""
    if len(nodes) < 3:
        return nodes
    steps = np.diff(nodes, axis=0)
    turns = np.flatnonzero(np.any(steps[1:] != steps[:-1], axis=1)) + 1
    return nodes[np.concatenate([[0], turns, [len(nodes) - 1]])]


def _polyline_nodes(points: np.ndarray) -> np.ndarray:
    """Every PE along straight legs between consecutive points."""
    pieces = [points[:1]]
    for a, b in zip(points[:-1], points[1:], strict=True):
        n = int(np.abs(b - a).sum())
        if n:
            step = np.sign(b - a)
            pieces.append(a + step * np.arange(1, n + 1)[:, None])
    return np.concatenate(pieces).astype(np.int64)


_PREFIXES: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # the last few dead grids' prefix counts


def _prefix_counts(dead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dead PEs before each PE along its row and along its column, with a zero border: made once per grid (a
    mesh's `dead_grid` is one read-only array), not once per bundle, which on a 750 x 994 wafer is most of
    routing's time."""
    for known, along_row, along_col in _PREFIXES:
        if known is dead:
            return along_row, along_col
    along_row = np.concatenate([np.zeros((dead.shape[0], 1), np.int64), dead.cumsum(axis=1)], axis=1)
    along_col = np.concatenate([np.zeros((1, dead.shape[1]), np.int64), dead.cumsum(axis=0)], axis=0)
    if not dead.flags.writeable:  # a grid that can change cannot be remembered
        _PREFIXES[:] = [*_PREFIXES[-3:], (dead, along_row, along_col)]
    return along_row, along_col


def _hits_dead(corners: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """Per lane: does any leg of its polyline touch a dead PE? O(1) per leg with prefix counts."""
    if not dead.any():
        return np.zeros(corners.shape[0], dtype=bool)
    along_row, along_col = _prefix_counts(dead)
    hit = np.zeros(corners.shape[0], dtype=bool)
    for k in range(corners.shape[1] - 1):
        (ra, ca), (rb, cb) = corners[:, k].T, corners[:, k + 1].T
        row_leg = ra == rb
        lo_c, hi_c = np.minimum(ca, cb), np.maximum(ca, cb)
        lo_r, hi_r = np.minimum(ra, rb), np.maximum(ra, rb)
        in_row = along_row[ra, hi_c + 1] - along_row[ra, lo_c]
        in_col = along_col[hi_r + 1, ca] - along_col[lo_r, ca]
        hit |= np.where(row_leg, in_row, in_col) > 0
    return hit


def _snap(r: np.ndarray, c: np.ndarray, rect: Rect, dead: np.ndarray, f: Flow) -> tuple[np.ndarray, np.ndarray]:
    """Move lane ends that sit on dead PEs to the nearest working PE of the same rectangle."""
    bad = np.flatnonzero(dead[r, c])
    if not bad.size:
        return r, c
    r, c = r.copy(), c.copy()
    live = np.argwhere(~dead[rect.y : rect.y + rect.h, rect.x : rect.x + rect.w]) + [rect.y, rect.x]
    if not live.size:
        raise WscError(f"flow {f.src} -> {f.dst}: kernel {rect.name} has no working PE to send or receive on")
    for i in bad.tolist():
        j = int(np.argmin(np.abs(live[:, 0] - r[i]) + np.abs(live[:, 1] - c[i])))
        r[i], c[i] = live[j]
    return r, c


def _window_load(b: Bundle, mesh: Mesh) -> None:
    """The bundle's loads over the smallest window holding all its paths."""
    if not b.paths:
        return
    pts = np.concatenate(b.paths)
    (r_lo, c_lo), (r_hi, c_hi) = pts.min(axis=0), pts.max(axis=0)
    loads = _Loads(int(r_hi - r_lo + 1), int(c_hi - c_lo + 1))
    for path, v in zip(b.paths, b.val.tolist(), strict=True):
        loads.corners(path - [r_lo, c_lo], v)
    b.origin = (int(r_lo), int(c_lo))
    b.load = loads.full()


def finish(bundles: list[Bundle], mesh: Mesh, colors: int | None, router: str) -> Routes:
    """The chosen bundles, one per flow in the flows' order, as Routes: their loads summed over the mesh and
    the flows colored within `colors` (None: no limit), under the name `router`."""
    total = np.zeros((4, mesh.rows, mesh.cols), dtype=np.int64)
    for b in bundles:
        r0, c0 = b.origin
        total[:, r0 : r0 + b.load.shape[1], c0 : c0 + b.load.shape[2]] += b.load
    link_load = {
        "east": total[0, :, : mesh.cols - 1],
        "west": total[1, :, : mesh.cols - 1],
        "south": total[2, : mesh.rows - 1, :],
        "north": total[3, : mesh.rows - 1, :],
    }
    flow_colors = _color(bundles, colors)
    edges: list[dict[str, Any]] = [
        {
            "src": b.flow.src, "dst": b.flow.dst, "bytes": b.flow.bytes,
            "hops": int(b.hops.max()) if b.hops.size else 0, "lanes": len(b.paths), "rerouted": b.rerouted,
            "shape": b.shape, "color": flow_colors.get((b.flow.src, b.flow.dst)),
        }
        for b in bundles
    ]
    return Routes(
        max_link_load=int(max((int(a.max()) for a in link_load.values() if a.size), default=0)),
        total_byte_hops=sum(b.byte_hops for b in bundles),
        longest_route_hops=max((int(e["hops"]) for e in edges), default=0),
        link_load=link_load,
        edges=edges,
        colors=flow_colors,
        router=router,
        paths={(b.flow.src, b.flow.dst): b.paths for b in bundles},
    )


def _color(bundles: list[Bundle], limit: int | None) -> dict[tuple[str, str], int]:
    """Greedy coloring of the flows' conflict graph (two flows conflict when they share a directed link)."""
    routed = [b for b in bundles if b.paths]
    conflicts: dict[int, set[int]] = {i: set() for i in range(len(routed))}
    for i, a in enumerate(routed):
        for j in range(i + 1, len(routed)):
            if _share_link(a, routed[j]):
                conflicts[i].add(j)
                conflicts[j].add(i)
    order = sorted(conflicts, key=lambda i: (-len(conflicts[i]), -routed[i].flow.bytes, i))
    given: dict[int, int] = {}
    for i in order:
        taken = {given[j] for j in conflicts[i] if j in given}
        color = next(c for c in range(len(routed) + 1) if c not in taken)
        if limit is not None and color >= limit:
            f = routed[i].flow
            raise WscError(
                f"flow {f.src} -> {f.dst} cannot be given a color: it shares links with {len(conflicts[i])} "
                f"other flows and those already use all {limit} routable colors; use the congestion router, "
                "a target with more colors, or spread the kernels out"
            )
        given[i] = color
    return {(routed[i].flow.src, routed[i].flow.dst): c for i, c in given.items()}


def _share_link(a: Bundle, b: Bundle) -> bool:
    (ar, ac), (br, bc) = a.origin, b.origin
    r_lo, c_lo = max(ar, br), max(ac, bc)
    r_hi = min(ar + a.load.shape[1], br + b.load.shape[1])
    c_hi = min(ac + a.load.shape[2], bc + b.load.shape[2])
    if r_lo >= r_hi or c_lo >= c_hi:
        return False
    wa = a.load[:, r_lo - ar : r_hi - ar, c_lo - ac : c_hi - ac]
    wb = b.load[:, r_lo - br : r_hi - br, c_lo - bc : c_hi - bc]
    return bool(np.any((wa > 0) & (wb > 0)))


class _Loads:
    """Four direction difference arrays over an h x w window: a straight run adds +v at its first link and
    -v after its last."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        # Row runs: diff along axis 1; column runs: diff along axis 0. One spare slot for the -v end.
        self.diff = np.zeros((4, rows + 1, cols + 1), dtype=np.int64)

    def corners(self, points: np.ndarray, val: int) -> None:
        """Add `val` along the straight legs between consecutive (row, col) points."""
        for (ra, ca), (rb, cb) in zip(points[:-1].tolist(), points[1:].tolist(), strict=True):
            if ra == rb and cb > ca:
                self.diff[0, ra, ca] += val
                self.diff[0, ra, cb] -= val
            elif ra == rb and cb < ca:
                self.diff[1, ra, cb] += val
                self.diff[1, ra, ca] -= val
            elif ca == cb and rb > ra:
                self.diff[2, ra, ca] += val
                self.diff[2, rb, ca] -= val
            elif ca == cb and rb < ra:
                self.diff[3, rb, ca] += val
                self.diff[3, ra, ca] -= val

    def full(self) -> np.ndarray:
        """[4, rows, cols]: east and west loads summed along rows, south and north along columns."""
        out = np.empty((4, self.rows, self.cols), dtype=np.int64)
        out[:2] = self.diff[:2, : self.rows, : self.cols].cumsum(axis=2)
        out[2:] = self.diff[2:, : self.rows, : self.cols].cumsum(axis=1)
        return out


def lane_endpoints(src: Rect, dst: Rect) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(start rows, start cols, end rows, end cols) of each lane, as int64 arrays of equal length.

    Lanes leave from the source's side facing the destination, one per row (or column) of it, and end at
    PEs spread along the destination's diagonal: every lane ends on a row and a column of its own, so the
    two legs of different lanes never share a link, whichever of XY or YX the router picks."""
    share_columns = src.x < dst.x + dst.w and dst.x < src.x + src.w
    if not share_columns:
        lanes = min(src.h, dst.h)
        i = np.arange(lanes, dtype=np.int64)
        east = dst.x >= src.x + src.w
        r0 = src.y + i * src.h // lanes
        r1 = dst.y + i * dst.h // lanes
        c0 = np.full(lanes, src.x + src.w - 1 if east else src.x, dtype=np.int64)
        spread = i * dst.w // lanes
        c1 = dst.x + spread if east else dst.x + dst.w - 1 - spread
    else:
        lanes = min(src.w, dst.w)
        i = np.arange(lanes, dtype=np.int64)
        south = dst.y + dst.h / 2 >= src.y + src.h / 2
        c0 = src.x + i * src.w // lanes
        c1 = dst.x + i * dst.w // lanes
        r0 = np.full(lanes, src.y + src.h - 1 if south else src.y, dtype=np.int64)
        spread = i * dst.h // lanes
        r1 = dst.y + spread if south else dst.y + dst.h - 1 - spread
    return r0, c0, r1, c1


def _detour(nodes: np.ndarray, dead: np.ndarray, f: Flow) -> np.ndarray:
    """Replace each stretch of `nodes` through dead PEs by a shortest live path around it."""
    is_dead = dead[nodes[:, 0], nodes[:, 1]]
    if is_dead[0] or is_dead[-1]:
        raise WscError(
            f"flow {f.src} -> {f.dst} starts or ends on a dead PE; re-run placement with the defect map"
        )
    # Stretches of consecutive dead PEs: [first dead, first live after).
    edges = np.flatnonzero(np.diff(is_dead.astype(np.int8)))
    firsts, afters = edges[0::2] + 1, edges[1::2] + 1
    pieces: list[np.ndarray] = []
    k = 0
    for first, after in zip(firsts.tolist(), afters.tolist(), strict=True):
        pieces.append(nodes[k : first - 1])
        around = _shortest_live_path(tuple(nodes[first - 1]), tuple(nodes[after]), dead, f)
        pieces.append(np.array(around[:-1], dtype=np.int64))
        k = after
    pieces.append(nodes[k:])
    return _erase_loops(np.concatenate(pieces))


def _erase_loops(nodes: np.ndarray) -> np.ndarray:
    """Drop any cycle a detour made by running back over the path: a route visits each PE once."""
    out: list[tuple[int, int]] = []
    where: dict[tuple[int, int], int] = {}
    for node in map(tuple, nodes.tolist()):
        if node in where:
            for gone in out[where[node] + 1 :]:
                del where[gone]
            del out[where[node] + 1 :]
        else:
            where[node] = len(out)
            out.append(node)
    return np.array(out, dtype=np.int64)


def _shortest_live_path(
    a: tuple[int, int], b: tuple[int, int], dead: np.ndarray, f: Flow
) -> list[tuple[int, int]]:
    rows, cols = dead.shape
    margin = 1
    while True:
        r_lo, r_hi = max(0, min(a[0], b[0]) - margin), min(rows - 1, max(a[0], b[0]) + margin)
        c_lo, c_hi = max(0, min(a[1], b[1]) - margin), min(cols - 1, max(a[1], b[1]) + margin)
        g = nx.grid_2d_graph(range(r_lo, r_hi + 1), range(c_lo, c_hi + 1))
        window = dead[r_lo : r_hi + 1, c_lo : c_hi + 1]
        g.remove_nodes_from((int(r) + r_lo, int(c) + c_lo) for r, c in np.argwhere(window))
        try:
            return [(int(r), int(c)) for r, c in nx.shortest_path(g, a, b)]
        except nx.NetworkXNoPath:
            if r_lo == 0 and c_lo == 0 and r_hi == rows - 1 and c_hi == cols - 1:
                raise WscError(
                    f"flow {f.src} -> {f.dst} has no route: dead PEs cut ({a[0]}, {a[1]}) off from "
                    f"({b[0]}, {b[1]}); move the kernels or check the defect map"
                ) from None
            margin *= 2
