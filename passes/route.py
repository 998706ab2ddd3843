"""Routing: turn placed flows into per-link byte loads on the mesh, and give each flow a color.

The routers are plug-ins, one file each in `passes/routers/` (its `__init__` holds the `Router` protocol and
the registry), behind one interface, `route(...)`:

- `xy`, the baseline: every lane in dimension order, along its row, then along the destination column.
- `congestion`, the default: each bundle's shape (XY, YX or a staggered Z) negotiated as in PathFinder, so
  the turns of a bundle spread out; never a worse worst link than XY's.

How a flow becomes a bundle of lanes, how lanes detour around dead PEs, and how flows are colored is shared
by both, in `passes/routers/common.py`, with the result type `Routes`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from wsc.core.errors import WscError
from wsc.core.mesh import Flow, Mesh, Placement, Rect, mesh_of
from wsc.core.program import DTYPE_SIZE, Layer, Program
from wsc.passes import routers
from wsc.passes.group_layers import handoff_flows
from wsc.passes.routers import ROUTERS, RouteRequest, Routes

__all__ = ["ROUTERS", "Route", "Routes", "route"]


def route(placement: Placement, flows: list[Flow], mesh: Mesh, router: str = "congestion",
          colors: int | None = None) -> Routes:
    """Route with the named router (one of ROUTERS), coloring within `colors` (None: no limit)."""
    return routers.get(router)(RouteRequest(placement, flows, mesh, colors))


@dataclass(frozen=True)
class Route:
    """route: every flow of every layer with the named router (one of ROUTERS), colored within the
    target's routable colors; identical layers share their routes. In pipelined mode each layer's flows are
    routed inside its own band, and the activations each layer hands to a later one are routed too, all of
    them at once between the resident layers' rectangles (`Program.handoff_routes`): every layer works on
    the stream of tokens at the same time, so those flows share links."""

    name: ClassVar[str] = "route"
    router: str = "congestion"

    def __call__(self, program: Program) -> Program:
        router = routers.get(self.router)
        mesh = mesh_of(program.target)
        limit = getattr(program.target, "routable_colors", program.target.colors)
        routed: dict[str, Routes] = {}
        layers = []
        for layer in program.layers:
            # Layers placed in bands of their own (pipelined mode) sit elsewhere on the mesh: route each.
            key = layer.signature(program.graph) + (f"@{layer.region}" if layer.region else "")
            if key not in routed:
                if layer.placement is None:
                    raise WscError(f"layer {layer.name} is not placed; run the place pass before route")
                routed[key] = router(RouteRequest(layer.placement, layer.flows, mesh, limit))
            layers.append(replace(layer, routes=routed[key]))
        handoff = handoff_routes(program, layers, self.router, mesh, limit) if program.mode == "pipelined" else None
        return replace(program, layers=layers, handoff_routes=handoff)


def handoff_routes(program: Program, layers: list[Layer], router: str, mesh: Mesh,
                   colors: int | None) -> Routes | None:
    """The flows between pipelined layers, routed between the rectangles of every layer (named
    `layer/kernel`). Their colors are their own: a color may repeat in another layer's band, as the fabric
    routes each color per router. None for a single layer."""
    flows = handoff_flows(program.graph, layers, DTYPE_SIZE[program.dtype])
    if not flows:
        return None
    where: dict[tuple[int, str], Rect] = {}
    for layer in layers:
        assert layer.placement is not None  # routed above
        where.update({(layer.index, name): rect for name, rect in layer.placement.rects.items()})
    return route_between_layers(where, flows, router, mesh, colors)


def route_between_layers(where: dict[tuple[int, str], Rect], flows: list[tuple[int, str, int, str, int]],
                         router: str, mesh: Mesh, colors: int | None) -> Routes:
    """Route `flows` ((producer layer, kernel, consumer layer, kernel, bytes)) between the rectangles `where`
    gives each (layer, kernel), all on one mesh, the kernels named `layer/kernel`."""
    rects = {f"{i}/{n}": replace(r, name=f"{i}/{n}") for (i, n), r in where.items()}
    combined = Placement(rects, "pipelined layers", "combined", 0.0, 0.0, 0.0, 0, 0.0)
    wanted = [Flow(f"{a}/{src}", f"{b}/{dst}", nbytes) for a, src, b, dst, nbytes in flows]
    return route(combined, wanted, mesh, router, colors)
