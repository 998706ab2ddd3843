"""A throwaway router in one file: `yx-fixture`, every lane in YX order (along its column, then along the
destination row), detoured around dead PEs and colored by the shared helpers.

Loaded by tests/test_plugins.py to show that a router defined in a single file and registered runs as the
route pass, with no other file touched.
"""

from __future__ import annotations

from wsc.passes.routers import RouteRequest, register
from wsc.passes.routers.common import Routes, bundle, finish


@register("yx-fixture")
def route_yx(request: RouteRequest) -> Routes:
    dead = request.mesh.dead_grid
    bundles = [bundle(f, request.placement, request.mesh, dead, "yx") for f in request.flows]
    return finish(bundles, request.mesh, request.colors, "yx-fixture")
