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
from wsc.core.mesh import Flow, Mesh, Placement, mesh_of
from wsc.core.program import Program
from wsc.passes import routers
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
    routed inside its own band; traffic between layers (activations handed down the pipeline) is not routed
    yet."""

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
        return replace(program, layers=layers)
