"""snake: boustrophedon shelf packing, so consecutive kernels (a layer's dataflow chain) stay adjacent at the
turns."""

from __future__ import annotations

from wsc.core.mesh import KernelRect, Mesh, Placement, Rect
from wsc.passes.placers import PlaceRequest, register
from wsc.passes.placers.common import heuristic
from wsc.passes.placers.row_major import shelves


@register("snake")
def place_snake(request: PlaceRequest) -> Placement:
    return heuristic("snake", snake(request.kernels, request.mesh), request.flows)


def snake(kernels: list[KernelRect], mesh: Mesh) -> dict[str, Rect]:
    """Boustrophedon shelf packing: shelves alternate left-to-right and right-to-left, kernels in the given
    order, so the last kernel of a shelf sits right above the first of the next one and consecutive kernels
    (a layer's dataflow chain) stay adjacent across the turn."""
    return shelves(kernels, mesh, alternate=True)
