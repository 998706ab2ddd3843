"""A throwaway placer in one file: `columns-fixture`, the widest kernel first, each at the first free position
in column-major order (down the first column of positions, then the next).

Loaded by tests/test_plugins.py to show that a placer defined in a single file and registered runs as the
place pass, with no other file touched.
"""

from __future__ import annotations

import numpy as np

from wsc.core.mesh import Placement, Rect
from wsc.passes.placers import PlaceRequest, register
from wsc.passes.placers.common import Grid, heuristic, no_fit


@register("columns-fixture")
def place_columns(request: PlaceRequest) -> Placement:
    grid = Grid(request.mesh)
    rects: dict[str, Rect] = {}
    for k in sorted(request.kernels, key=lambda k: (-k.w, k.name)):
        free = grid.free(k)
        spots = np.flatnonzero(free.T)  # column-major: x first, then y
        if not spots.size:
            raise no_fit(request.kernels, request.mesh, f"no free column for kernel {k.name}")
        x, y = divmod(int(spots[0]), free.shape[0])
        rects[k.name] = Rect(k.name, x, y, k.w, k.h)
        grid.take(rects[k.name])
    return heuristic("columns-fixture", {k.name: rects[k.name] for k in request.kernels}, request.flows)
