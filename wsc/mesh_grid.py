"""The dead-PE grid: which PEs of a rows x cols mesh are dead, as one boolean array, and its runs along rows.

A core module (it imports numpy only), so that every layer builds the grid the same way: the placer and the
router (through `passes.layout.Mesh.dead_grid`, cached per mesh), the partitioner, the independent checker of
placement.json (`wsc check`) and the pictures (`wsc viz`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


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
