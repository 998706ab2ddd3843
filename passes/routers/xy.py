"""xy, the baseline: every lane in dimension order, along its row, then along the destination column. All
lanes of a bundle then share that one column: a hot spot."""

from __future__ import annotations

from wsc.passes.routers import RouteRequest, register
from wsc.passes.routers.common import Routes, bundle, finish


@register("xy")
def route_xy(request: RouteRequest) -> Routes:
    """Route every flow with XY lanes, detouring around dead PEs; color within the request's colors."""
    dead = request.mesh.dead_grid
    bundles = [bundle(f, request.placement, request.mesh, dead, "xy") for f in request.flows]
    return finish(bundles, request.mesh, request.colors, "xy")
