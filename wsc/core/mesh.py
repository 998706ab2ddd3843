"""Mesh geometry, shared by every layer: the PE grid and its dead PEs, the rectangles kernels ask for and are
given, the flows between them, and a placement.

The dead-PE grid (`dead_grid`, cached per mesh as `Mesh.dead_grid`) is built one way for all: the placers and
routers, the partitioner, the independent checker of placement.json (`wsc check`) and the pictures (`wsc viz`).

Defect model (see passes/place.py for why): a kernel asks for a w x h rectangle and `pes` working PEs. The
rectangle may cover up to `w * h - pes` dead PEs (its `slack`); its tiles go to the working PEs only, in
row-major order (`tile_pes`). With `pes` left out the kernel needs every PE of its rectangle, so it may cover
no dead PE at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from wsc.core.errors import WscError


def dead_grid(rows: int, cols: int, dead_pes: Iterable[Sequence[int]]) -> np.ndarray:
    """Bool [rows, cols]: True at each (row, col) of `dead_pes` (pairs in any order; a repeat is harmless).

    Raises ValueError naming the first pair, in the order given, that lies outside the mesh."""
    grid = np.zeros((rows, cols), dtype=bool)
    pes = np.array([(int(r), int(c)) for r, c in dead_pes], dtype=np.int64).reshape(-1, 2)
    outside = np.flatnonzero((pes[:, 0] < 0) | (pes[:, 0] >= rows) | (pes[:, 1] < 0) | (pes[:, 1] >= cols))
    if outside.size:
        r, c = pes[outside[0]].tolist()
        raise ValueError(f"dead PE ({r}, {c}) is outside the {rows} x {cols} mesh")
    grid[pes[:, 0], pes[:, 1]] = True
    return grid


def row_runs(grid: np.ndarray) -> list[tuple[int, int, int]]:
    """The True cells of a bool [rows, cols] grid as (row, first col, length) runs along each row, in row-major
    order: thousands of scattered dead PEs (or the working stretches between them) as few pieces."""
    rows, cols = grid.shape
    padded = np.zeros((rows, cols + 2), dtype=np.int8)
    padded[:, 1:-1] = grid
    step = np.diff(padded, axis=1)
    starts = np.argwhere(step == 1)  # row-major, so the i-th start and the i-th end are one run
    ends = np.argwhere(step == -1)
    return [(r, c, e - c) for (r, c), e in zip(starts.tolist(), ends[:, 1].tolist(), strict=True)]


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


def tile_pes(rect: Rect, count: int, dead: Mesh | np.ndarray) -> np.ndarray:
    """The (x, y) mesh coordinates of the PE that holds each of a placed kernel's first `count` slots,
    int64 of shape (count, 2); x is the column and y the row, as in Rect (a dead PE's (row, col) is (y, x)).

    Slot p = block * k_splits + k_slice (see KernelPlan; count is the plan's `active_pes`) goes to the p-th
    working PE of the rectangle in row-major order from its top-left corner, so on a clean rectangle it is
    (rect.x + p % rect.w, rect.y + p // rect.w) and each dead PE pushes every later slot one PE along. `dead`
    is the mesh (its `dead_grid`; give `mesh_of(target)`, whose dead PEs include those cut off from the main
    region) or a bool [rows, cols] grid, True where a PE is dead. Raises WscError when the rectangle lies
    outside the grid or holds fewer working PEs than `count`."""
    offsets = _working_offsets(rect, count, dead)
    return np.stack([rect.x + offsets % rect.w, rect.y + offsets // rect.w], axis=1)


def _working_offsets(rect: Rect, count: int, dead: Mesh | np.ndarray) -> np.ndarray:
    """Row-major offsets (y * w + x from the rectangle's corner) of its first `count` working PEs."""
    grid = dead.dead_grid if isinstance(dead, Mesh) else dead
    rows, cols = grid.shape
    where = f"kernel {rect.name}'s {rect.w}x{rect.h} rectangle at x={rect.x}, y={rect.y}"
    if rect.x < 0 or rect.y < 0 or rect.w <= 0 or rect.h <= 0 or rect.x + rect.w > cols or rect.y + rect.h > rows:
        raise WscError(f"{where} is not inside the {rows} x {cols} mesh; give a placed rectangle of this mesh")
    if count < 0:
        raise WscError(f"{where}: {count} tiles asked for; give the plan's active_pes (at least 0)")
    window = grid[rect.y : rect.y + rect.h, rect.x : rect.x + rect.w]
    if not window.any():  # the common case, and all of a clean mesh: no search
        offsets = np.arange(min(count, rect.w * rect.h), dtype=np.int64)
    else:
        offsets = np.flatnonzero(~window.ravel()).astype(np.int64)[:count]
    if len(offsets) < count:
        raise WscError(f"{where} holds {len(offsets)} working PEs, fewer than the kernel's {count} tiles; "
                       "place it again on this mesh (its rectangle must keep a working PE for every tile)")
    return offsets


@dataclass(frozen=True)
class Anchor:
    """A point outside a placement that `kernel` exchanges `bytes` with, in the placement's doubled
    coordinates (2x, 2y): where a neighbouring pipelined layer's activations enter or leave this layer's band.
    A placer that weighs traffic may pull the kernel towards it."""

    kernel: str
    x2: int
    y2: int
    bytes: int


@dataclass
class Placement:
    """A placement and how it was found.

    For `cpsat`, `objective` and `best_bound` are the charged fabric time in cycles it minimises first (the
    most loaded lane of any flow over the link bandwidth, plus the longest centre distance at the hop
    latency: `passes/placers/common.charged_cycles`), before wirelength at that time. The heuristics report
    their wirelength in bytes x hops and the trivial bound 0. `wirelength` is always exact bytes x hops.

    When cpsat's solver returned no arrangement (no time to find one, or a model it refused) and a baseline
    heuristic's answer is kept instead, `fallback` names that heuristic and `fallback_status` is the status the
    solver returned (e.g. UNKNOWN); both are '' otherwise.
    """

    rects: dict[str, Rect]
    strategy: str
    status: str
    objective: float
    best_bound: float
    gap: float
    wirelength: int
    seconds: float
    fallback: str = ""
    fallback_status: str = ""


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


_MESHES: list[tuple[object, Mesh]] = []  # the last few targets' meshes, most recent last


def mesh_of(target) -> Mesh:
    """The target's mesh as placement and routing see it: its dead PEs, plus any working PEs a dead row or
    column cuts off from the largest connected region (see `cut_off`).

    Partition, place and route each need it; on a faulty wafer finding the cut-off regions takes a good
    fraction of a second, so the mesh is computed once per target object (targets are immutable)."""
    for known, mesh in _MESHES:
        if known is target:
            return mesh
    mesh = Mesh(target.rows, target.cols, frozenset(target.dead_pes))
    unreachable = cut_off(mesh)
    mesh = replace(mesh, dead=mesh.dead | unreachable) if unreachable else mesh
    _MESHES[:] = [*_MESHES[-3:], (target, mesh)]
    return mesh
