"""The one dead-PE grid (wsc/mesh_grid.py) and the Mesh's cached copy of it."""

import numpy as np
import pytest

from wsc.core.errors import WscError
from wsc.core.mesh import Mesh, dead_grid, row_runs


def test_dead_grid_marks_exactly_the_dead_pes_row_major():
    # A dead row, a dead column and two lone PEs on a 4 x 6 mesh: rows index the first axis, cols the second.
    dead = {(1, c) for c in range(6)} | {(r, 4) for r in range(4)} | {(0, 0), (3, 5)}
    grid = dead_grid(4, 6, sorted(dead, reverse=True) + [(0, 0)])  # any order; a repeat is harmless
    assert grid.shape == (4, 6) and grid.dtype == bool
    assert {(int(r), int(c)) for r, c in np.argwhere(grid)} == dead
    assert grid[1].all() and grid[:, 4].all() and grid[0, 0] and grid[3, 5] and not grid[0, 5] and not grid[2, 5]
    assert not dead_grid(2, 3, []).any() and dead_grid(2, 3, []).shape == (2, 3)


@pytest.mark.parametrize("pe", [(4, 0), (0, 6), (-1, 0), (0, -1)])
def test_dead_grid_refuses_a_pe_outside_the_mesh(pe):
    with pytest.raises(ValueError, match=rf"dead PE \({pe[0]}, {pe[1]}\) is outside the 4 x 6 mesh"):
        dead_grid(4, 6, [(0, 0), pe])


def test_row_runs_are_the_true_stretches_along_each_row():
    grid = dead_grid(3, 5, [(0, 1), (0, 2), (0, 4), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4)])
    assert row_runs(grid) == [(0, 1, 2), (0, 4, 1), (2, 0, 5)]
    assert row_runs(~grid) == [(0, 0, 1), (0, 3, 1), (1, 0, 5)]


def test_mesh_dead_grid_is_cached_read_only_and_checked():
    mesh = Mesh(3, 4, frozenset({(2, 3), (0, 1)}))
    grid = mesh.dead_grid
    assert grid is mesh.dead_grid  # built once per mesh
    assert np.array_equal(grid, dead_grid(3, 4, [(0, 1), (2, 3)]))
    with pytest.raises(ValueError):
        grid[0, 0] = True  # shared: no caller may change it
    assert mesh == Mesh(3, 4, frozenset({(0, 1), (2, 3)}))  # the cache is no field
    with pytest.raises(WscError, match=r"dead PE \(3, 0\) is outside the 3 x 4 mesh; fix the defect map"):
        _ = Mesh(3, 4, frozenset({(3, 0)})).dead_grid
