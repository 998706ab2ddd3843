"""Placement: put each kernel's rectangle of PEs on the mesh so that heavy flows travel few hops.

This is the ISPD 2020 formulation (Cerebras' own placement contest) with shapes already chosen: rectangles
must lie inside the mesh and must not overlap, and the heuristics' cost is the sum over flows of bytes x
Manhattan distance between rectangle centres; cpsat's is first what the estimate charges the fabric (the
busiest lane and the longest distance), then that sum. The strategies are plug-ins, one file each in
`passes/placers/` (its `__init__` holds the `Placer` protocol and the registry), behind one interface,
`place(...)`:

- `row-major`: shelf packing in the given order; a baseline that ignores traffic.
- `snake`: the same shelves, alternating direction, so consecutive kernels stay adjacent at the turns.
- `random`: each kernel at a seeded random free position; the floor any placer must beat.
- `greedy`: heaviest-traffic kernel first, each next kernel at the free position nearest (in bytes x hops)
  to its already placed neighbours. Exact over every position, using numpy, so it is fast on 750 x 994.
- `anneal`: simulated annealing from the greedy answer, a fixed number of legal moves.
- `cpsat`: an exact model solved by OR-Tools CP-SAT (`placers/cpsat.py`), hinted with the best of the other
  deterministic heuristics by its own objective, so it always has an answer and is never worse than any of
  them by it.

Defect model. With 1% of a CS-2's PEs dead at random there is a dead PE every ~100 PEs, so a kernel of
90 x 994 PEs cannot avoid them, and no layer of a GPT fits in the defect-free gaps. Real wafers hide defects
behind spare rows and columns; we model the same idea per kernel: a kernel's rectangle may cover dead PEs,
which hold no tile and do no work, as long as it keeps enough working PEs for all its tiles
(`KernelRect.pes`; the rectangle's spare PEs are its `slack`). The kernel's tiles go, in row-major order,
to the working PEs of its rectangle. The `Place` pass below gives each kernel on a faulty mesh a few spare
rows, enough for its expected share of dead PEs with margin, so partitioning needs no knowledge of the
defect map: the partitioner's h x w grid (its tiles, SRAM and compute) is unchanged and the placer finds a
rectangle holding h * w working PEs. A kernel without `pes` needs every PE, so it covers no dead PE (the
stricter rule, kept for callers that want it). Routes never pass through a dead PE (`route.py`), so a whole
dead row or column cuts the fabric: `mesh_of` counts the smaller side as dead too, keeping every layer on
one connected region.

Centres use doubled coordinates (2x + w) so that every quantity stays an integer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from wsc.core import progress
from wsc.core.errors import DoesNotPlace, WscError
from wsc.core.mesh import Anchor, Flow, KernelRect, Mesh, Placement, Rect, mesh_of
from wsc.core.program import DTYPE_SIZE, Layer, Program
from wsc.passes import placers
from wsc.passes.estimate import Estimate, routes_seconds  # the estimate's own terms: the two cannot disagree
from wsc.passes.group_layers import handoff_flows
from wsc.passes.placers import STRATEGIES, Placer, PlaceRequest
from wsc.passes.placers.common import no_fit
from wsc.passes.route import route_between_layers

__all__ = ["STRATEGIES", "Place", "check_placement", "place", "scattered_density", "spare_rows"]


def place(
    kernels: list[KernelRect],
    flows: list[Flow],
    mesh: Mesh,
    strategy: str = "cpsat",
    *,
    seed: int = 0,
    workers: int = 1,
    time_limit: float = 5.0,
) -> Placement:
    """Place `kernels` on `mesh` minimising sum(bytes x hops) over `flows` with the named strategy.

    `seed` drives `random`, `anneal` and CP-SAT; `workers` and `time_limit` (deterministic seconds) only
    CP-SAT. Raises WscError when the kernels do not fit or the strategy is unknown.
    """
    return _run(placers.get(strategy), PlaceRequest(kernels, flows, mesh, seed, workers, time_limit))


def _run(placer: Placer, request: PlaceRequest) -> Placement:
    """Check the request, then place it with `placer`, timed."""
    _validate(request.kernels, request.flows, request.mesh)
    start = time.perf_counter()
    result = placer(request)
    result.seconds = time.perf_counter() - start
    return result


def check_placement(placement: Placement, kernels: list[KernelRect], mesh: Mesh) -> list[str]:
    """Every rule the placement breaks, as readable lines; empty when it is legal.

    Deliberately written without the placer's helpers (plain loops and rectangle arithmetic) so that tests
    check the placer against something independent.
    """
    problems: list[str] = []
    rects = placement.rects
    wanted = {k.name: k for k in kernels}
    for name in wanted:
        if name not in rects:
            problems.append(f"kernel {name} is not placed")
    for name, r in rects.items():
        k = wanted.get(name)
        if k is None:
            problems.append(f"rect {name} is not a requested kernel")
            continue
        if (r.w, r.h) != (k.w, k.h):
            problems.append(f"{name} is {r.w}x{r.h} but {k.w}x{k.h} was requested")
        if r.x < 0 or r.y < 0 or r.x + r.w > mesh.cols or r.y + r.h > mesh.rows:
            problems.append(f"{name} at x={r.x} y={r.y} size {r.w}x{r.h} is outside the mesh")
        covered = [(row, col) for row, col in sorted(mesh.dead) if r.y <= row < r.y + r.h and r.x <= col < r.x + r.w]
        if k.pes is None:
            problems += [f"{name} covers dead PE ({row}, {col})" for row, col in covered]
        elif r.w * r.h - len(covered) < k.pes:
            problems.append(
                f"{name} has {r.w * r.h - len(covered)} working PEs ({len(covered)} dead) but needs {k.pes}"
            )
    placed = sorted(rects.values(), key=lambda r: r.name)
    for i, a in enumerate(placed):
        for b in placed[i + 1 :]:
            if a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h:
                problems.append(f"{a.name} overlaps {b.name}")
    return problems


# ----------------------------------------------------------------------------------------------- checks


def _validate(kernels: list[KernelRect], flows: list[Flow], mesh: Mesh) -> None:
    if mesh.rows <= 0 or mesh.cols <= 0:
        raise WscError(f"mesh must have positive size, got {mesh.rows} x {mesh.cols}")
    _ = mesh.dead_grid  # raises when a dead PE lies outside the mesh
    names = set()
    for k in kernels:
        if k.name in names:
            raise WscError(f"kernel name {k.name!r} appears twice; kernel names must be unique")
        names.add(k.name)
        if k.w <= 0 or k.h <= 0:
            raise WscError(f"kernel {k.name} has size {k.w}x{k.h}; widths and heights must be positive")
        if k.pes is not None and not 0 < k.pes <= k.w * k.h:
            raise WscError(f"kernel {k.name} needs {k.pes} working PEs in a {k.w}x{k.h} rectangle; use 1 to w*h")
        if k.w > mesh.cols or k.h > mesh.rows:
            raise WscError(
                f"kernel {k.name} is {k.w} cols x {k.h} rows but the mesh is {mesh.cols} cols x "
                f"{mesh.rows} rows; reshape or split the kernel"
            )
    for f in flows:
        for end in (f.src, f.dst):
            if end not in names:
                raise WscError(
                    f"flow {f.src} -> {f.dst} names unknown kernel {end!r}; flows must join kernels"
                )
        if f.bytes < 0:
            raise WscError(f"flow {f.src} -> {f.dst} has negative size {f.bytes}; bytes must be >= 0")
    need = sum(k.need for k in kernels)
    have = mesh.rows * mesh.cols - len(mesh.dead)
    if need > have:
        raise no_fit(kernels, mesh, "their total area exceeds the usable PEs")


# ------------------------------------------------------------------------------------- the pipeline's pass


def scattered_density(mesh: Mesh) -> float:
    """The fraction of PEs dead outside whole dead rows and columns (a cut-off strip counts as whole rows):
    what a kernel can expect to find under it. Whole lines are not averaged in, since a kernel either avoids
    them (the placer sees them exactly) or pays for them in full."""
    if not mesh.dead:
        return 0.0
    dead = mesh.dead_grid
    rows, cols = ~dead.all(axis=1), ~dead.all(axis=0)
    inner = dead[np.ix_(rows, cols)]
    return float(inner.mean()) if inner.size else 1.0


# The shares of `spare_rows` a faulty mesh's layer is placed with, in turn, until one places.
SPARE_SHARES: tuple[float, ...] = (1.0, 0.5, 0.0)


def spare_rows(h: int, density: float) -> int:
    """Rows to add under an h-row kernel so its rectangle still holds h rows' worth of working PEs.

    At a scattered dead fraction d an (h + s) x w rectangle holds about d * (h + s) * w dead PEs; s rows
    cover them when s >= d * (h + s). We give twice the expected count plus one row, which also absorbs a
    whole dead row crossing a kernel; the placer's legality check is what guarantees the count.
    """
    return math.ceil(2 * density * h) + 1 if density > 0 else 0


def floor_cycles(program: Program, layer: Layer, before: float) -> float:
    """The layer's time in cycles whatever its placement, as `charged_layer_cycles` counts it: the larger of
    its compute (slowest kernel and fill, without the fill's hops) and its weights' stream at the I/O rate,
    plus what of that stream the `before` seconds of the layer before cannot hide (none of either when
    pipelined)."""
    target = program.target
    rate = target.pe_flops(program.dtype)
    terms = Estimate.layer_terms(program, replace(layer, placement=None, routes=None), rate)
    if program.mode == "pipelined":
        return terms["compute_seconds"] * target.clock_hz
    stream = terms["stream_seconds"]
    return (max(terms["compute_seconds"], stream) + max(0.0, stream - before)) * target.clock_hz


def before_seconds(program: Program, layer: Layer) -> float:
    """The compute of the layer before `layer`, under which its weights stream in (0 for the first, and when
    pipelined: no weights stream)."""
    if layer.index == 0 or program.mode == "pipelined":
        return 0.0
    previous = program.layers[layer.index - 1]
    return Estimate.layer_terms(program, replace(previous, placement=None, routes=None),
                                program.target.pe_flops(program.dtype))["compute_seconds"]


def charged_layer_cycles(program: Program, layer: Layer, before: float,
                         handoff: HandoffContext | None = None):
    """The estimate's time in cycles for the layer placed as `rects` and routed as `routes` (in the band's own
    coordinates): the largest of its compute (with the fill's hops), fabric and stream (with the weights'
    delivery) terms. Streaming weights, plus what of its stream the slot before it (`before` seconds of
    compute) cannot hide: a layer's
    weights stream in while the layer before it computes (passes/schedule.py), so a slower delivery costs
    twice, here and there. Pipelined, also the handoff this band takes part in (`HandoffContext.cycles`),
    when it is longer: the activations from the bands already placed, and to the next band if that band is
    a twin of this one (every block of a GPT), routed between their rectangles."""
    target = program.target
    rate = target.pe_flops(program.dtype)
    pipelined = program.mode == "pipelined"

    def cycles(rects: dict[str, Rect], routes) -> float:
        trial = replace(layer, placement=Placement(rects, "", "", 0.0, 0.0, 0.0, 0, 0.0), routes=routes)
        terms = Estimate.layer_terms(program, trial, rate)
        if pipelined:
            own = max(terms["compute_seconds"], terms["fabric_seconds"]) * target.clock_hz
            return max(own, handoff.cycles(rects)) if handoff is not None else own
        stream = terms["stream_seconds"]
        own = max(terms["compute_seconds"], terms["fabric_seconds"], stream)
        return (own + max(0.0, stream - before)) * target.clock_hz

    return cycles


@dataclass
class HandoffContext:
    """What a pipelined band's placement needs to see the handoff it takes part in: the layers placed so far
    (global coordinates), the handoff flows, this layer, its band's top row, the next layer when it is a twin
    of this one (placed the same, one band lower), and the router."""

    program: Program
    placed: list[Layer]
    flows: list[tuple[int, str, int, str, int]]
    layer: Layer
    top: int
    twin_below: Layer | None
    router: str
    mesh: Mesh
    colors: int | None

    def cycles(self, rects: dict[str, Rect]) -> float:
        index, rows = self.layer.index, self.layer.region[1] if self.layer.region else 0
        mine = {n: replace(r, y=r.y + self.top) for n, r in rects.items()}
        below = {}
        if self.twin_below is not None:
            rename = dict(zip(self.layer.kernels, self.twin_below.kernels, strict=True))
            below = {rename[n]: replace(r, y=r.y + rows) for n, r in mine.items()}
        where: dict[tuple[int, str], Rect] = {(index, n): r for n, r in mine.items()}
        where.update({(index + 1, n): r for n, r in below.items()})
        for other in self.placed:
            assert other.placement is not None
            where.update({(other.index, n): r for n, r in other.placement.rects.items()})
        wanted = [(a, src, b, dst, nbytes) for a, src, b, dst, nbytes in self.flows
                  if index in (a, b) and (a, src) in where and (b, dst) in where]
        if not wanted:
            return 0.0
        routes = route_between_layers(where, wanted, self.router, self.mesh, self.colors)
        return routes_seconds(routes, self.program.target) * self.program.target.clock_hz


def band_anchors(layer: Layer, handoff: list[tuple[int, str, int, str, int]], band: Mesh) -> tuple[Anchor, ...]:
    """Pipelined mode: where this layer's handed-over activations enter and leave its band. The bands are
    stacked in layer order, so what an earlier layer hands it enters at the band's top edge and what it hands
    a later one leaves at the bottom edge, both at the middle column (a modelling choice: where the other
    layer's kernel sits across the edge is its own placement's). A placer that weighs traffic pulls the
    receiving kernels up and the sending ones down."""
    anchors = []
    for producer_layer, producer, consumer_layer, consumer, nbytes in handoff:
        if consumer_layer == layer.index and producer_layer < layer.index:
            anchors.append(Anchor(consumer, band.cols, 0, nbytes))
        elif producer_layer == layer.index and consumer_layer > layer.index:
            anchors.append(Anchor(producer, band.cols, 2 * band.rows, nbytes))
    return tuple(anchors)


@dataclass(frozen=True)
class Place:
    """place: each streaming layer's kernels become rectangles on the mesh. Layers that map identically
    (every block of a GPT) are placed once; the others reuse that placement under their own kernel names.

    On a faulty mesh each kernel's rectangle is its tile grid (h x w) plus `spare_rows` rows, and must hold
    h * w working PEs (see the module docstring)."""

    name: ClassVar[str] = "place"
    strategy: str = "cpsat"
    seed: int = 0
    workers: int = 1  # one worker: reproducible placements (see placers/cpsat.py)
    time_limit: float = 2.0  # deterministic seconds per distinct layer
    router: str | None = None  # the compile's router: cpsat keeps the answer that routes best

    def __call__(self, program: Program) -> Program:
        placer = placers.get(self.strategy)
        whole = mesh_of(program.target)
        placed: dict[str, tuple[list[str], Placement, int]] = {}
        layers = []
        handoff = (handoff_flows(program.graph, program.layers, DTYPE_SIZE[program.dtype])
                   if program.mode == "pipelined" else [])
        for layer in progress.track(program.layers, lambda each: f"placing {each.name} ({self.strategy})"):
            names = list(layer.kernels)
            # Pipelined mode gives each layer a band of rows (its region): it is placed inside the band,
            # then moved to the band's place on the mesh. Identical layers share one placement, moved.
            top, mesh = 0, whole
            if layer.region is not None:
                top, rows = layer.region
                band_dead = frozenset((r - top, c) for r, c in whole.dead if top <= r < top + rows)
                mesh = Mesh(rows, whole.cols, band_dead)
            anchors = band_anchors(layer, handoff, mesh) if layer.region is not None else ()
            # A band's height and dead PEs are part of the key: a placement fits only bands like its own; and
            # so are its anchors, by the kernels' positions in the layer.
            position = {n: i for i, n in enumerate(names)}
            key = layer.signature(program.graph) + (f"@{mesh.rows}{sorted(mesh.dead)}" if layer.region else "") \
                + str(sorted((position[a.kernel], a.x2, a.y2, a.bytes) for a in anchors))
            if key in placed:
                twin_names, twin, twin_top = placed[key]
                rename = dict(zip(twin_names, names, strict=True))
                shift = top - twin_top
                rects = {rename[n]: replace(r, name=rename[n], y=r.y + shift) for n, r in twin.rects.items()}
                layers.append(replace(layer, placement=replace(twin, rects=rects, seconds=0.0)))
                continue
            density = scattered_density(mesh)
            target = program.target
            before = before_seconds(program, layer)
            context = None
            if layer.region is not None and self.router is not None:
                after = program.layers[layer.index + 1] if layer.index + 1 < len(program.layers) else None
                below = after if after is not None and after.region is not None and after.region[1] == \
                    layer.region[1] and after.signature(program.graph) == layer.signature(program.graph) else None
                context = HandoffContext(program, list(layers), handoff, layer, top, below, self.router, whole,
                                         getattr(target, "routable_colors", target.colors))
            floor = floor_cycles(program, layer, before)
            charged = charged_layer_cycles(program, layer, before, context)
            # On a faulty mesh the spare rows may take the room the kernels need (three kernels of 4 rows on a
            # 16-row mesh with a few dead PEs): fewer spare rows are tried, down to none (a rectangle clear of
            # dead PEs), before the layer is refused at this share of the mesh.
            ladder = SPARE_SHARES if mesh.dead else (1.0,)
            for share in ladder:
                kernels = [self.kernel_rect(n, plan.h, plan.w, mesh, density, share)
                           for n, plan in layer.kernels.items()]
                request = PlaceRequest(kernels, layer.flows, mesh, self.seed, self.workers, self.time_limit,
                                       link_bytes_per_cycle=target.link_bytes_per_cycle,
                                       hop_latency_cycles=target.hop_latency_cycles, anchors=anchors,
                                       router=self.router, colors=getattr(target, "routable_colors", target.colors),
                                       floor_cycles=floor, layer_cycles=charged)
                try:
                    placement = _run(placer, request)
                    break
                except DoesNotPlace:
                    if share == ladder[-1]:
                        raise
            if top:
                placement.rects = {n: replace(r, y=r.y + top) for n, r in placement.rects.items()}
            layers.append(replace(layer, placement=placement))
            placed[key] = (names, placement, top)
        return replace(program, layers=layers)

    @staticmethod
    def kernel_rect(name: str, h: int, w: int, mesh: Mesh, density: float, share: float = 1.0) -> KernelRect:
        """A kernel's rectangle on `mesh`: its tile grid, plus spare rows on a faulty mesh (`share` of
        `spare_rows`, rounded down: 0 asks for a rectangle of working PEs only)."""
        if not mesh.dead:
            return KernelRect(name, w, h)
        spare = math.floor(share * spare_rows(h, density))
        return KernelRect(name, w, min(mesh.rows, h + spare), pes=h * w)
