"""congestion, the default: each bundle picks one of four shapes (`common.SHAPES`), XY, YX, and the two
staggered Z shapes (row, column, row with each lane turning at its own column; or column, row, column with its
own row), so the turns of a bundle spread out. Choices are negotiated as in PathFinder: every flow in turn,
heaviest first, takes the shape whose most loaded link (counting every other flow's bytes) is lightest, then
each flow is ripped up and re-chosen against all the others until nothing changes (at most ROUNDS rounds).
Should the result still have a higher worst link than XY's, XY's answer is returned: never worse."""

from __future__ import annotations

import numpy as np

from wsc.passes.routers import RouteRequest, register
from wsc.passes.routers.common import SHAPES, Routes, bundle, distinct, finish

ROUNDS = 3


@register("congestion")
def route_congestion_aware(request: RouteRequest) -> Routes:
    """Route every flow choosing each bundle's shape by negotiated congestion (see the module docstring)."""
    placement, flows, mesh, colors = request.placement, request.flows, request.mesh, request.colors
    dead = mesh.dead_grid
    options = [[bundle(f, placement, mesh, dead, shape) for shape in SHAPES] for f in flows]
    # Identical shapes (e.g. XY and YX of a straight bundle) are one option.
    options = [distinct(opts) for opts in options]
    total = np.zeros((4, mesh.rows, mesh.cols), dtype=np.int64)
    chosen: list[int | None] = [None] * len(flows)

    def add(i: int, sign: int) -> None:
        b = options[i][chosen[i]]  # type: ignore[index]
        r0, c0 = b.origin
        total[:, r0 : r0 + b.load.shape[1], c0 : c0 + b.load.shape[2]] += sign * b.load

    def pick(i: int) -> int:
        best, best_key = 0, None
        for j, b in enumerate(options[i]):
            r0, c0 = b.origin
            window = total[:, r0 : r0 + b.load.shape[1], c0 : c0 + b.load.shape[2]]
            used = b.load > 0
            peak = int((window + b.load)[used].max()) if used.any() else 0
            key = (peak, b.byte_hops, j)
            if best_key is None or key < best_key:
                best, best_key = j, key
        return best

    order = sorted(range(len(flows)), key=lambda i: (-flows[i].bytes, i))
    for i in order:
        chosen[i] = pick(i)
        add(i, +1)
    for _ in range(ROUNDS):
        changed = False
        for i in order:
            add(i, -1)
            j = pick(i)
            changed |= j != chosen[i]
            chosen[i] = j
            add(i, +1)
        if not changed:
            break
    routes = finish([options[i][c] for i, c in enumerate(chosen) if c is not None], mesh, colors, "congestion")
    baseline = finish([opts[0] for opts in options], mesh, colors, "congestion")
    return baseline if baseline.max_link_load < routes.max_link_load else routes
