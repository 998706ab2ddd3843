"""A layer's routes as placement.json records them (the `route` of each edge), for `wsc check` to verify."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only read: the artifacts do not depend on the router's code
    from wsc.passes.routers.common import Routes


def route_json(routes: Routes, index: int) -> dict[str, Any]:
    """The route of the layer's flow number `index` (routes keep the order of the flows they were given) as
    placement.json records it for `wsc check`: router, color, lanes, longest lane in hops, and every lane's
    corners as [[row, col], ...] from its first PE to its last. By position, not by name, because identical
    layers share one Routes computed under the first layer's kernel names."""
    edge = routes.edges[index]
    key = (edge["src"], edge["dst"])
    return {
        "router": routes.router,
        "color": routes.colors.get(key),
        "lanes": edge["lanes"],
        "hops": edge["hops"],
        "paths": [p.tolist() for p in routes.paths.get(key, [])],
    }
