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

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from wsc.core.errors import WscError
from wsc.core.mesh import Flow, Mesh, Placement
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

_ROUTERS: dict[str, Router] = {}


_T = TypeVar("_T", bound=Router)


def register(name: str) -> Callable[[_T], _T]:
    """Decorator: register the router under `name`. A name already taken by another router is refused."""

    def add(router: _T) -> _T:
        if name in _ROUTERS and _ROUTERS[name] is not router:
            raise ValueError(f"router {name!r} is already registered ({_ROUTERS[name].__module__})")
        _ROUTERS[name] = router
        return router

    return add


def unregister(name: str) -> None:
    """Remove a router (tests that register a throwaway one clean up with this)."""
    _ROUTERS.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered router: those of ORDER first, in that order, then the others by name."""
    rank = {name: i for i, name in enumerate(ORDER)}
    return tuple(sorted(_ROUTERS, key=lambda n: (rank.get(n, len(ORDER)), n)))


def get(name: str) -> Router:
    """The router registered under `name`; the one check of a router's name."""
    try:
        return _ROUTERS[name]
    except KeyError:
        raise WscError(f"unknown router {name!r}; use one of {', '.join(names())}") from None


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

ROUTERS: tuple[str, ...] = names()
