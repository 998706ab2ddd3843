"""The placers: one file per strategy, each registering itself under the name the CLI gives it.

    passes/placers/cpsat.py             cpsat: an exact CP-SAT model, hinted with the best heuristic
    passes/placers/greedy.py            greedy: heaviest traffic first, each kernel nearest its neighbours
    passes/placers/row_major.py         row-major: shelf packing in the given order
    passes/placers/snake.py             snake: shelves alternating direction
    passes/placers/random_positions.py  random: each kernel at a seeded random free position
    passes/placers/anneal.py            anneal: simulated annealing from the greedy answer
    passes/placers/common.py            what they share: the cost, the refusal, the free-space grid

A placer is any callable taking a `PlaceRequest` and returning a `Placement` whose rectangles are legal (see
passes/place.py for the defect model, and `check_placement` there); `place(...)` checks the request before
and times the call. Every module of this package is loaded with it, so adding a placer is adding a file here
that decorates its function with `@register("name")`. `STRATEGIES` lists the names: the built-in ones in
the order reports and the mapping benchmark show them (`ORDER`), then any other in name order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from wsc.core.mesh import Anchor, Flow, KernelRect, Mesh, Placement, Rect

if TYPE_CHECKING:
    from wsc.passes.routers.common import Routes
from wsc.core.registry import Registry, load_modules

__all__ = ["ORDER", "STRATEGIES", "PlaceRequest", "Placer", "get", "names", "register", "unregister"]


@dataclass(frozen=True)
class PlaceRequest:
    """What a placer is asked: put `kernels` on `mesh` minimising sum(bytes x hops) over `flows`.

    `seed` drives every randomised choice (random, anneal, CP-SAT's search); `workers` and `time_limit`
    (deterministic seconds) bound a solver's search; `link_bytes_per_cycle` and `hop_latency_cycles` are the
    target's fabric, for a placer that weighs what the estimate charges (cpsat), and `anchors` the traffic
    with fixed points outside the request. A placer ignores what it does not use. The request has
    been checked (`passes/place.py`): names unique, sizes positive, every kernel no larger than the mesh,
    flows joining known kernels, and the total area no more than the usable PEs."""

    kernels: list[KernelRect]
    flows: list[Flow]
    mesh: Mesh
    seed: int = 0
    workers: int = 1
    time_limit: float = 5.0
    link_bytes_per_cycle: float = 4.0
    hop_latency_cycles: float = 1.0
    anchors: tuple[Anchor, ...] = ()  # traffic with fixed points outside the request (pipelined bands' edges)
    router: str | None = None  # the compile's router, for a placer that chooses among routed answers (cpsat)
    # The layer's time whatever the placement (its compute and weight stream, in cycles): fabric time under it
    # is not charged, so a placer weighing what is charged may trade it for wirelength.
    floor_cycles: float = 0.0
    # The layer's time as the estimate charges it for a placement and its routes (cycles), for a placer that
    # chooses among routed answers; None: the fabric time alone.
    layer_cycles: Callable[[dict[str, Rect], Routes], float] | None = None
    colors: int | None = None  # the target's routable colors, for that routing


class Placer(Protocol):
    """Places a request's kernels: a `Placement` with one legal rectangle per kernel, its `strategy` the
    placer's registered name, or `DoesNotPlace` (see `common.no_fit`) when it finds no room."""

    def __call__(self, request: PlaceRequest) -> Placement: ...


# The built-in strategies in the order they are listed; cpsat, the default, first.
ORDER: tuple[str, ...] = ("cpsat", "greedy", "row-major", "snake", "random", "anneal")

_REGISTRY: Registry[Placer] = Registry("placement strategy", ORDER)
register = _REGISTRY.register
unregister = _REGISTRY.unregister
names = _REGISTRY.names  # the built-in ones in ORDER, then the others by name
get = _REGISTRY.get  # the one check of a name

load_modules(__name__, __path__)

STRATEGIES: tuple[str, ...] = names()
