"""The routers: one file per router, each registering itself under the name the CLI gives it.

    passes/routers/congestion.py  congestion: each bundle's shape chosen by negotiated congestion (the default)
    passes/routers/xy.py          xy: every lane in dimension order, the baseline
    passes/routers/common.py      what they share: lanes, bundles, detours around dead PEs, loads, colors, and
                                  the result type, `Routes`

A router is any callable taking a `RouteRequest` and returning `Routes` (see `common.Routes` for what it
holds); `common.finish` turns the bundles a router chose into one, colored. Every module of this package is
loaded with it, so adding a router is adding a file here that decorates its function with
`@register("name")`. `ROUTERS` lists the names: the built-in ones in `ORDER` (the default first), then any
other in name order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from wsc.core.mesh import Flow, Mesh, Placement
from wsc.core.registry import Registry, load_modules
from wsc.passes.routers.common import Routes

__all__ = ["ORDER", "ROUTERS", "RouteRequest", "Router", "Routes", "get", "names", "register", "unregister"]


@dataclass(frozen=True)
class RouteRequest:
    """What a router is asked: route every one of `flows` between the rectangles of `placement` on `mesh`,
    never through a dead PE, and color them within `colors` (None: no limit)."""

    placement: Placement
    flows: list[Flow]
    mesh: Mesh
    colors: int | None = None


class Router(Protocol):
    """Routes a request: `Routes` with one edge per flow, in the flows' order, its `router` the router's
    registered name, or WscError naming the flow that cannot be routed or colored."""

    def __call__(self, request: RouteRequest) -> Routes: ...


# The built-in routers in the order they are listed; congestion, the default, first.
ORDER: tuple[str, ...] = ("congestion", "xy")

_REGISTRY: Registry[Router] = Registry("router", ORDER)
register = _REGISTRY.register
unregister = _REGISTRY.unregister
names = _REGISTRY.names  # the built-in ones in ORDER, then the others by name
get = _REGISTRY.get  # the one check of a name

load_modules(__name__, __path__)

ROUTERS: tuple[str, ...] = names()
