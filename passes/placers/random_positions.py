"""random: each kernel at a seeded random free position; the floor any placer must beat. (The file is not
called random.py so that it is never mistaken for the standard library's module.)"""

from __future__ import annotations

import numpy as np

from wsc.core.mesh import KernelRect, Mesh, Placement, Rect
from wsc.passes.placers import PlaceRequest, register
from wsc.passes.placers.common import Grid, heuristic, no_fit


@register("random")
def place_random(request: PlaceRequest) -> Placement:
    return heuristic("random", random_placement(request.kernels, request.mesh, request.seed), request.flows)


def random_placement(kernels: list[KernelRect], mesh: Mesh, seed: int, attempts: int = 8) -> dict[str, Rect]:
    """Each kernel at a uniformly random free position, largest first (small kernels dropped first would
    cut the mesh into pieces no large one fits). A draw that corners itself is retried; after `attempts`
    failures the kernels go, in a random order, to the first free position in row-major order, which is
    still a legal seeded answer, just a less random one."""
    rng = np.random.default_rng(seed)
    order = sorted(kernels, key=lambda k: -k.w * k.h)
    for attempt in range(attempts + 1):
        packed = attempt == attempts
        if packed:
            order = [kernels[i] for i in rng.permutation(len(kernels))]
        grid = Grid(mesh)
        rects: dict[str, Rect] = {}
        for k in order:
            flat = np.flatnonzero(grid.free(k))
            if not flat.size:
                break
            pick = int(flat[0]) if packed else int(flat[rng.integers(flat.size)])
            y, x = divmod(pick, mesh.cols - k.w + 1)
            rects[k.name] = Rect(k.name, x, y, k.w, k.h)
            grid.take(rects[k.name])
        else:
            return {k.name: rects[k.name] for k in kernels}
    raise no_fit(kernels, mesh, f"random placement found no free position in {attempts + 1} draws")
