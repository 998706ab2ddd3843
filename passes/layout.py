"""What every placer shares: the problem's data types, the cost, and the free-space grid.

Kept apart from `place.py` so that the heuristics (`place_heuristics.py`) and the exact model
(`place_cpsat.py`) can import it without importing each other; `place.py` re-exports the public names.

Defect model (see `place.py` for why): a kernel asks for a w x h rectangle and `pes` working PEs. The
rectangle may cover up to `w * h - pes` dead PEs (its `slack`); its tiles go to the working PEs only. With
`pes` left out the kernel needs every PE of its rectangle, so it may cover no dead PE at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from wsc.errors import DoesNotPlace, WscError
from wsc.mesh_grid import dead_grid, row_runs


@dataclass(frozen=True)
class KernelRect:
    """A kernel's requested rectangle, w columns (x extent) by h rows (y extent), and the working PEs it
    needs inside it (`pes`; None means all w * h, so no dead PE may be covered)."""

    name: str
    w: int
    h: int
    pes: int | None = None

    @property
    def need(self) -> int:
        return self.w * self.h if self.pes is None else self.pes

    @property
    def slack(self) -> int:
        """How many dead PEs the rectangle may cover and still hold every tile."""
        return self.w * self.h - self.need


@dataclass(frozen=True)
class Flow:
    """Bytes sent from one kernel to another per step (direction does not matter for placement)."""

    src: str
    dst: str
    bytes: int


@dataclass(frozen=True)
class Mesh:
    """The PE grid; dead PEs are (row, col) pairs that hold no tile and carry no route."""

    rows: int
    cols: int
    dead: frozenset[tuple[int, int]] = frozenset()

    @cached_property
    def dead_grid(self) -> np.ndarray:
        """Bool [rows, cols], True where a PE is dead; built once per mesh and read-only (it is shared).
        Raises WscError when a dead PE lies outside the mesh."""
        try:
            grid = dead_grid(self.rows, self.cols, self.dead)
        except ValueError as error:
            raise WscError(f"{error}; fix the defect map") from None
        grid.flags.writeable = False
        return grid


@dataclass(frozen=True)
class Rect:
    """A placed kernel: x = left column, y = top row."""

    name: str
    x: int
    y: int
    w: int
    h: int


@dataclass
class Placement:
    """A placement and how it was found.

    `objective` and `best_bound` are in bytes x hops. For `cpsat` they are the solver's values converted back
    from its scaled units (flow bytes are divided by a common unit to keep coefficients small), so they can
    differ slightly from `wirelength`, which is always exact. The heuristics report the trivial bound 0.
    """

    rects: dict[str, Rect]
    strategy: str
    status: str
    objective: float
    best_bound: float
    gap: float
    wirelength: int
    seconds: float


def wirelength(rects: dict[str, Rect], flows: list[Flow]) -> int:
    """Sum of bytes x Manhattan hops between rectangle centres, rounded to an integer."""
    doubled = 0
    for f in flows:
        a, b = rects[f.src], rects[f.dst]
        dist2 = abs((2 * a.x + a.w) - (2 * b.x + b.w)) + abs((2 * a.y + a.h) - (2 * b.y + b.h))
        doubled += f.bytes * dist2
    return (doubled + 1) // 2


def traffic(flows: list[Flow]) -> dict[tuple[str, str], int]:
    """Bytes between each unordered pair of distinct kernels (distance is symmetric; self-flows cost 0)."""
    pairs: dict[tuple[str, str], int] = {}
    for f in flows:
        if f.src != f.dst:
            key = (min(f.src, f.dst), max(f.src, f.dst))
            pairs[key] = pairs.get(key, 0) + f.bytes
    return pairs


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


def cut_off(mesh: Mesh) -> frozenset[tuple[int, int]]:
    """Working PEs that no route can reach from the largest connected region of working PEs.

    A whole dead row or column cuts the fabric in two, and routes never pass a dead PE, so kernels on
    opposite sides could not exchange a byte (nor could the two halves of one kernel straddling the cut).
    Treating the smaller side as dead keeps every layer on one connected region. Found by union-find over
    runs of working PEs along each row (a few per row at 1% defects), so it is fast on 750 x 994.
    """
    if not mesh.dead:
        return frozenset()
    runs = [(r, a, a + n - 1) for r, a, n in row_runs(~mesh.dead_grid)]  # (row, first col, last col)
    by_row: list[list[int]] = [[] for _ in range(mesh.rows)]
    for i, (r, _, _) in enumerate(runs):
        by_row[r].append(i)
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for r in range(1, mesh.rows):
        above, below = by_row[r - 1], by_row[r]
        i = j = 0
        while i < len(above) and j < len(below):
            _, a0, a1 = runs[above[i]]
            _, b0, b1 = runs[below[j]]
            if a0 <= b1 and b0 <= a1:
                parent[find(above[i])] = find(below[j])
            if a1 < b1:
                i += 1
            else:
                j += 1
    size: dict[int, int] = {}
    for i, (_, a, b) in enumerate(runs):
        root = find(i)
        size[root] = size.get(root, 0) + b - a + 1
    if len(size) <= 1:
        return frozenset()
    main = max(size, key=lambda root: (size[root], -root))
    return frozenset(
        (r, c) for i, (r, a, b) in enumerate(runs) if find(i) != main for c in range(a, b + 1)
    )
