"""cpsat: an exact OR-Tools CP-SAT model of the ISPD 2020 formulation with fixed shapes, hinted with the best
of the deterministic heuristics, so it always has an answer and is never worse than any of them.

Rectangles are fixed-size interval pairs in one NoOverlap2D. The objective is what the estimate charges the
fabric, in two stages: first the charged fabric time (`charged_cycles`: the most loaded lane of any flow over
the link bandwidth, plus the longest centre-to-centre distance at the hop latency; a flow's lanes are its
facing rows when the two rectangles sit side by side, its facing columns when they share columns), then,
with that time held at its optimum, bytes x L1 distance between doubled centres (2x + w keeps everything
integer), which spreads traffic the first stage cannot see (links shared by several flows). The status,
objective and bound reported are the first stage's, in cycles. A pipelined band's anchors (where the
activations of the layers above and below cross its edges) add their hops to the first stage and their
bytes x hops to the second. The layer's slowest-kernel time, the other
term of the contest's objective, is a constant here: shapes are chosen by the partitioner before placement.

Dead PEs enter in one of two ways, whichever keeps the model small:
- obstacles: when no kernel may cover a dead PE, dead PEs merged into maximal boxes (runs along a row,
  then identical runs on consecutive rows: a dead row or column is one box) join the NoOverlap2D as fixed
  boxes. Cheap while there are few boxes.
- position tables: otherwise (kernels with slack, or thousands of scattered dead PEs, e.g. 1% of a CS-2 is
  ~7,450 boxes), each kernel's legal top-left positions, computed exactly with a summed-area table, become
  a table of (row, first col, last col) runs that (y, lo, hi) must match, with lo <= x <= hi. Kernels legal
  everywhere get no table. A table longer than MAX_TABLE_ROWS keeps every k-th row (and the hint's), so the
  model stays small at the price of some positions: the answer is still legal, and never worse than the hint.

The solve is four steps, each a function: `build` (the model as data: variables, constraints, objectives),
`hint` (the best heuristic answer, `best_hint`, as the solver's starting point), `solve` (fixed seed,
workers and a deterministic time limit, half of it for each stage) and `read` (status, rectangles, objective
and bound into a Placement). `place_cpsat` runs them in that order, then, given the compile's router,
`routed_choice`: the model cannot see links shared by several flows, nor the estimate's other
placement-dependent terms, so its answer and every heuristic's are routed and the one the layer is charged
least for (the request's `layer_cycles`, the estimate's own terms) is kept.

When the solver returns no arrangement (UNKNOWN: the time limit ran out first; MODEL_INVALID; INFEASIBLE of
a thinned model), the placement falls back to the best baseline, the heuristics' answer the layer is charged
least for, and says so (`Placement.fallback`, `fallback_status`; report.json's `placement.solver.fallback`).
Only a proof that the rectangles cannot be packed, or no answer from any of them, refuses the layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from ortools.sat.python import cp_model

from wsc.core import progress
from wsc.core.errors import WscError
from wsc.core.mesh import Anchor, Flow, KernelRect, Mesh, Placement, Rect, row_runs
from wsc.passes import routers
from wsc.passes.placers import PlaceRequest, register
from wsc.passes.placers.anneal import anneal
from wsc.passes.placers.common import (
    Grid,
    anchored_wirelength,
    charged_cycles,
    lane_load,
    no_fit,
    traffic,
    wirelength,
)
from wsc.passes.placers.greedy import greedy
from wsc.passes.placers.random_positions import random_placement
from wsc.passes.placers.row_major import row_major
from wsc.passes.placers.snake import snake
from wsc.passes.routers import RouteRequest

MAX_OBSTACLES = 500
MAX_TABLE_ROWS = 3000
# Whether the solver starts from the best heuristic answer. Always, in a compile; a test turns it off to see the
# solver search alone, which at a small time limit finds nothing (the fallback then keeps the baseline).
HINT_SOLVER = True


@register("cpsat")
def place_cpsat(request: PlaceRequest) -> Placement:
    """Build the model, hint it with the best heuristic answer, solve for the charged fabric time, then for
    wirelength at that time, and read the answer back."""
    fabric = (request.link_bytes_per_cycle, request.hop_latency_cycles)
    answers = heuristic_answers(request.kernels, request.flows, request.mesh, request.seed)
    start, baseline = best_hint(request.kernels, request.flows, request.mesh, request.seed, fabric,
                                request.anchors, answers, request.floor_cycles)
    model = build(request.kernels, request.flows, request.mesh, keep=start, fabric=fabric, anchors=request.anchors,
                  floor_cycles=request.floor_cycles)
    if start is not None and HINT_SOLVER:
        hint(model, start)
    solver, status, stage_one = solve_in_stages(model, seed=request.seed, workers=request.workers,
                                                time_limit=request.time_limit)
    placement = read(model, solver, status, start, request.flows, request.time_limit, stage_one, baseline=baseline)
    return routed_choice(placement, answers, request) if request.router is not None else placement


def routed_choice(placement: Placement, answers: dict[str, dict[str, Rect]], request: PlaceRequest) -> Placement:
    """Route the solver's answer and every heuristic's with the compile's router and keep the one the estimate
    charges least: the routed fabric time (busiest link over the link bandwidth, longest lane at the hop
    latency, plus a pipelined band's anchor hops) or the layer's floor when that is longer, then wirelength.
    The model sees each flow's lanes but not
    the links flows share, which only routing decides; this closes that gap, so cpsat is never charged more
    fabric time than another strategy's answer. The status names the answer kept when it is not the solver's;
    when the solver found none (`Placement.fallback`), the baseline kept is the one that routes best."""
    def charged(rects: dict[str, Rect]) -> tuple[float, int]:
        trial = Placement(rects, "cpsat", "", 0.0, 0.0, 0.0, 0, 0.0)
        routes = routers.get(request.router)(RouteRequest(trial, request.flows, request.mesh, request.colors))
        wire = anchored_wirelength(rects, request.flows, request.anchors)
        if request.layer_cycles is not None:  # the estimate's own layer time: compute, fabric and stream
            return request.layer_cycles(rects, routes), wire
        edges = charged_cycles(rects, [], request.link_bytes_per_cycle, request.hop_latency_cycles, request.anchors)
        cycles = (routes.max_link_load / request.link_bytes_per_cycle
                  + routes.longest_route_hops * request.hop_latency_cycles + edges)
        return max(request.floor_cycles, cycles), wire

    costs: dict[str, tuple[float, int]] = {}
    for name, rects in {"cpsat": placement.rects, **answers}.items():
        try:
            costs[name] = charged(rects)
        except WscError:  # a router that finds no colors for this arrangement: not a candidate
            continue
        if name == "cpsat" and costs[name][0] <= request.floor_cycles * (1 + 1e-12):
            return placement  # charged only the floor, which no answer is under: the model's least wirelength there
    if not costs:
        return placement
    best = min(costs, key=costs.__getitem__)  # the solver's answer first, so it wins a tie
    if best == "cpsat":
        return placement
    rects = answers[best]
    if placement.fallback:
        objective = max(request.floor_cycles, charged_cycles(rects, request.flows, request.link_bytes_per_cycle,
                                                             request.hop_latency_cycles, request.anchors))
        return replace(placement, rects=rects, status=fallen_back(placement.fallback_status, best),
                       objective=objective, fallback=best, wirelength=wirelength(rects, request.flows))
    return replace(placement, rects=rects, status=f"{placement.status} (routed: {best}'s kept)",
                   wirelength=wirelength(rects, request.flows))


# ------------------------------------------------------------------------------------------------- build


@dataclass
class Pair:
    """The variables of one kernel pair that exchanges bytes: doubled-centre offsets, their absolute values,
    which axis keeps the two apart, and the distance the objective weighs."""

    dx: cp_model.IntVar
    dy: cp_model.IntVar
    adx: cp_model.IntVar
    ady: cp_model.IntVar
    apart_in_x: cp_model.IntVar
    dist: cp_model.IntVar


@dataclass
class Model:
    """The CP-SAT model and the variables `hint` and `read` need.

    `weight` is each pair's traffic in units of `unit` bytes (small integers for the solver); `tables` holds,
    per kernel held to a position table, its (lo, hi) variables and the table; `thinned` says a table was cut
    to MAX_TABLE_ROWS rows, so the solver's bound covers the thinned model only."""

    cp: cp_model.CpModel
    kernels: list[KernelRect]
    mesh: Mesh
    weight: dict[tuple[str, str], int]
    unit: float
    flows: list[Flow] = field(default_factory=list)
    # The fabric: (link bytes per cycle, hop latency in cycles), and the first stage's objective in its
    # integer units (CHARGE_SCALE per cycle), and the second's.
    fabric: tuple[float, float] = (4.0, 1.0)
    charged: Any = 0  # a cp_model linear expression once built
    wirelength: Any = 0
    xs: dict[str, cp_model.IntVar] = field(default_factory=dict)
    ys: dict[str, cp_model.IntVar] = field(default_factory=dict)
    tables: dict[str, tuple[cp_model.IntVar, cp_model.IntVar, list[tuple[int, int, int]]]] = field(
        default_factory=dict
    )
    pairs: dict[tuple[str, str], Pair] = field(default_factory=dict)
    lane_vars: list[tuple[str, str, cp_model.IntVar, cp_model.IntVar]] = field(default_factory=list)
    busiest: cp_model.IntVar | None = None
    longest: cp_model.IntVar | None = None
    anchors: tuple[Anchor, ...] = ()
    anchor_vars: list[tuple[cp_model.IntVar, cp_model.IntVar]] = field(default_factory=list)
    floor: float = 0.0  # the layer's cycles whatever the placement
    thinned: bool = False
    found: dict[str, Rect] | None = None  # the first stage's answer, once it has one


def build(kernels: list[KernelRect], flows: list[Flow], mesh: Mesh, keep: dict[str, Rect] | None,
          fabric: tuple[float, float] = (4.0, 1.0), anchors: tuple[Anchor, ...] = (),
          floor_cycles: float = 0.0) -> Model:
    """The model: a corner per kernel, no overlap, dead PEs as obstacles or position tables (a thinned table
    keeps the row of each kernel's rectangle in `keep`, the hint), and the two objectives: the charged fabric
    time (`Model.charged`) and bytes x doubled hops (`Model.wirelength`). Raises DoesNotPlace when some
    kernel has no legal position at all."""
    # Data: traffic per kernel pair, in units of the smallest flow (capped at a 1e6 spread) so that the
    # objective coefficients stay small integers.
    pairs = {p: b for p, b in traffic(flows).items() if b > 0}
    sizes = list(pairs.values()) + [a.bytes for a in anchors if a.bytes > 0]
    unit = max(min(sizes), max(sizes) / 1e6) if sizes else 1.0
    weight = {p: max(1, round(b / unit)) for p, b in pairs.items()}
    by_name = {k.name: k for k in kernels}
    boxes = dead_boxes(mesh)
    as_obstacles = all(k.slack == 0 for k in kernels) and len(boxes) <= MAX_OBSTACLES

    # Variables: top-left corner per kernel, with fixed-size intervals for the no-overlap constraint.
    m = Model(cp_model.CpModel(), kernels, mesh, weight, unit, flows, fabric)
    model, xs, ys = m.cp, m.xs, m.ys
    x_iv, y_iv = [], []
    for k in kernels:
        xs[k.name] = model.new_int_var(0, mesh.cols - k.w, f"x_{k.name}")
        ys[k.name] = model.new_int_var(0, mesh.rows - k.h, f"y_{k.name}")
        x_iv.append(model.new_fixed_size_interval_var(xs[k.name], k.w, f"xi_{k.name}"))
        y_iv.append(model.new_fixed_size_interval_var(ys[k.name], k.h, f"yi_{k.name}"))

    # Constraints: kernels never overlap; dead PEs are obstacles in the same constraint, or each kernel's
    # corner is held to its table of legal positions.
    if as_obstacles:
        for r, c, h, w in boxes:
            x_iv.append(model.new_fixed_size_interval_var(c, w, f"dead_x_{r}_{c}"))
            y_iv.append(model.new_fixed_size_interval_var(r, h, f"dead_y_{r}_{c}"))
    if not as_obstacles and mesh.dead:
        grid = Grid(mesh)
        for k in kernels:
            legal = grid.legal(k)
            if legal.all():
                continue
            if not legal.any():
                raise no_fit(kernels, mesh, f"every position of kernel {k.name} covers too many dead PEs")
            table, cut = position_table(legal, keep[k.name].y if keep is not None else None)
            m.thinned = m.thinned or cut
            lo = model.new_int_var(0, mesh.cols - k.w, f"lo_{k.name}")
            hi = model.new_int_var(0, mesh.cols - k.w, f"hi_{k.name}")
            model.add_allowed_assignments([ys[k.name], lo, hi], table)
            model.add(lo <= xs[k.name])
            model.add(xs[k.name] <= hi)
            m.tables[k.name] = (lo, hi, table)
    model.add_no_overlap_2d(x_iv, y_iv)

    # Distances between doubled centres: dist = |dx| + |dy| per kernel pair that exchanges bytes.
    for a, b in weight:
        ka, kb = by_name[a], by_name[b]
        dx = model.new_int_var(-2 * mesh.cols, 2 * mesh.cols, f"dx_{a}_{b}")
        dy = model.new_int_var(-2 * mesh.rows, 2 * mesh.rows, f"dy_{a}_{b}")
        model.add(dx == 2 * xs[a] + ka.w - 2 * xs[b] - kb.w)
        model.add(dy == 2 * ys[a] + ka.h - 2 * ys[b] - kb.h)
        adx = model.new_int_var(0, 2 * mesh.cols, f"adx_{a}_{b}")
        ady = model.new_int_var(0, 2 * mesh.rows, f"ady_{a}_{b}")
        model.add_abs_equality(adx, dx)
        model.add_abs_equality(ady, dy)
        # Implied by NoOverlap2D, but stated on the distances it gives the objective a real lower bound:
        # two disjoint rectangles' doubled centres are apart by at least the sum of their sizes on some axis.
        apart_in_x = model.new_bool_var(f"apart_x_{a}_{b}")
        model.add(adx >= ka.w + kb.w).only_enforce_if(apart_in_x)
        model.add(ady >= ka.h + kb.h).only_enforce_if(~apart_in_x)
        nearest = min(ka.w + kb.w, ka.h + kb.h)
        dist = model.new_int_var(nearest, 2 * (mesh.rows + mesh.cols), f"dist_{a}_{b}")
        model.add(dist == adx + ady)
        m.pairs[a, b] = Pair(dx, dy, adx, ady, apart_in_x, dist)

    # Objectives. Wirelength: scaled bytes x doubled hops. Charged fabric time: the most loaded lane, which
    # depends on whether the pair shares columns (lanes per facing column) or not (per facing row), and the
    # longest distance; in CHARGE_SCALE units a cycle, so that a lane's bytes and a hop's latency add up.
    m.wirelength = sum(weight[p] * m.pairs[p].dist for p in weight)
    m.anchors = anchors
    for i, anchor in enumerate(anchors):  # a fixed point: |2x + w - x2| + |2y + h - y2|, far ones included
        k = by_name[anchor.kernel]
        reach = 2 * (mesh.rows + mesh.cols) + abs(anchor.x2) + abs(anchor.y2)
        adx = model.new_int_var(0, reach, f"anchor_dx_{i}")
        ady = model.new_int_var(0, reach, f"anchor_dy_{i}")
        model.add_abs_equality(adx, 2 * xs[k.name] + k.w - anchor.x2)
        model.add_abs_equality(ady, 2 * ys[k.name] + k.h - anchor.y2)
        m.anchor_vars.append((adx, ady))
        m.wirelength += max(1, round(anchor.bytes / unit)) * (adx + ady)
    link, latency = fabric
    heaviest = max((f.bytes for f in flows if f.src != f.dst), default=0)
    busiest = model.new_int_var(0, heaviest, "busiest_lane")
    longest = model.new_int_var(0, 2 * (mesh.rows + mesh.cols), "longest_doubled")
    for f in flows:
        if f.src == f.dst:
            continue
        a, b = f.src, f.dst
        ka, kb = by_name[a], by_name[b]
        key = (min(a, b), max(a, b))
        model.add(longest >= m.pairs[key].dist)
        left = model.new_bool_var(f"left_{a}_{b}")  # a entirely west of b
        right = model.new_bool_var(f"right_{a}_{b}")  # b entirely west of a
        model.add(xs[a] + ka.w <= xs[b]).only_enforce_if(left)
        model.add(xs[a] + ka.w > xs[b]).only_enforce_if(~left)
        model.add(xs[b] + kb.w <= xs[a]).only_enforce_if(right)
        model.add(xs[b] + kb.w > xs[a]).only_enforce_if(~right)
        side = -(-f.bytes // min(ka.h, kb.h))  # side by side: one lane per facing row
        stacked = -(-f.bytes // min(ka.w, kb.w))  # sharing columns: one lane per facing column
        model.add(busiest >= stacked + (side - stacked) * (left + right))
        m.lane_vars.append((a, b, left, right))
    m.busiest, m.longest = busiest, longest
    fabric_time = round(CHARGE_SCALE / link) * busiest + round(CHARGE_SCALE * latency / 2) * longest
    # A pipelined band's share of the handoff's longest route: the hops from where activations enter the band
    # to the kernel receiving them, and from the kernel sending them on to where they leave (each edge point
    # once per kernel), at the hop latency.
    seen: set[tuple[str, int, int]] = set()
    for anchor, (adx, ady) in zip(anchors, m.anchor_vars, strict=True):
        if (anchor.kernel, anchor.x2, anchor.y2) not in seen:
            seen.add((anchor.kernel, anchor.x2, anchor.y2))
            fabric_time += round(CHARGE_SCALE * latency / 2) * (adx + ady)
    # What is charged is the layer's time: fabric time under its floor (compute, stream) costs nothing.
    floor = round(floor_cycles * CHARGE_SCALE)
    ceiling = round(CHARGE_SCALE * (heaviest / link + latency * (4 * (mesh.rows + mesh.cols) + sum(
        abs(a.x2) + abs(a.y2) for a in anchors)))) + floor + 1
    charged = model.new_int_var(0, ceiling, "charged")
    model.add(charged >= fabric_time)
    model.add(charged >= floor)
    m.charged, m.floor = charged, floor_cycles
    model.minimize(m.charged)
    return m


# Integer units of the charged fabric time per cycle: fine enough that rounding the per-byte and per-hop
# coefficients changes nothing that matters (a link of 4 B/cycle is 250 units a byte).
CHARGE_SCALE = 1000


def dead_boxes(mesh: Mesh) -> list[tuple[int, int, int, int]]:
    """Dead PEs as maximal boxes (row, col, height, width): runs along each row, then equal runs on
    consecutive rows merged."""
    runs = row_runs(mesh.dead_grid)
    open_boxes: dict[tuple[int, int], list[int]] = {}  # (col, width) -> [row, height]
    boxes: list[tuple[int, int, int, int]] = []
    for r, c, w in runs:
        box = open_boxes.get((c, w))
        if box is not None and box[0] + box[1] == r:
            box[1] += 1
        else:
            if box is not None:
                boxes.append((box[0], c, box[1], w))
            open_boxes[(c, w)] = [r, 1]
    boxes += [(row, c, h, w) for (c, w), (row, h) in open_boxes.items()]
    return sorted(boxes)


def position_table(legal: np.ndarray, keep_row: int | None) -> tuple[list[tuple[int, int, int]], bool]:
    """(y, first x, last x) for each run of legal top-left positions, thinned to about MAX_TABLE_ROWS, and
    whether it was thinned."""
    padded = np.zeros((legal.shape[0], legal.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = legal
    change = np.diff(padded, axis=1)
    ys, starts = np.nonzero(change == 1)
    _, stops = np.nonzero(change == -1)
    table = list(zip(ys.tolist(), starts.tolist(), (stops - 1).tolist(), strict=True))
    if len(table) > MAX_TABLE_ROWS:
        stride = math.ceil(len(table) / MAX_TABLE_ROWS)
        rows = sorted({y for y, _, _ in table})
        kept = set(rows[::stride]) | ({keep_row} if keep_row is not None else set())
        return [t for t in table if t[0] in kept], True
    return table, False


# -------------------------------------------------------------------------------------------------- hint


def heuristic_answers(kernels: list[KernelRect], flows: list[Flow], mesh: Mesh,
                      seed: int) -> dict[str, dict[str, Rect]]:
    """Every legal answer of the heuristics (greedy, row-major, snake, anneal, random), by strategy name; each
    is run exactly as its strategy runs, so cpsat can never lose to one of them."""
    found: dict[str, dict[str, Rect]] = {}
    heuristics: dict[str, Callable[[], dict[str, Rect]]] = {
        "greedy": lambda: greedy(kernels, flows, mesh),
        "row-major": lambda: row_major(kernels, mesh),
        "snake": lambda: snake(kernels, mesh),
        "anneal": lambda: anneal(kernels, flows, mesh, seed, start=found.get("greedy")),
        "random": lambda: random_placement(kernels, mesh, seed),
    }
    for name, heuristic in heuristics.items():
        if name == "anneal" and "greedy" not in found:
            continue
        try:
            found[name] = heuristic()
        except WscError:
            continue
    return found


def best_hint(
    kernels: list[KernelRect], flows: list[Flow], mesh: Mesh, seed: int, fabric: tuple[float, float] = (4.0, 1.0),
    anchors: tuple[Anchor, ...] = (), found: dict[str, dict[str, Rect]] | None = None, floor: float = 0.0,
) -> tuple[dict[str, Rect] | None, str]:
    """The best heuristic answer (of `found`, else of every heuristic run now) by the charged time (the
    fabric's, at least `floor`), then by wirelength, and its strategy's name."""
    found = heuristic_answers(kernels, flows, mesh, seed) if found is None else found
    if not found:
        return None, ""
    name = min(found, key=lambda n: (max(floor, charged_cycles(found[n], flows, *fabric, anchors)),
                                     anchored_wirelength(found[n], flows, anchors)))
    return found[name], name


def hint(m: Model, rects: dict[str, Rect]) -> None:
    """Give the solver `rects` as its starting point: every variable's value in that placement (the table
    run each corner lies in, each pair's offsets and distance, then the corners)."""
    model, by_name = m.cp, {k.name: k for k in m.kernels}
    for name, (lo, hi, table) in m.tables.items():
        r = rects[name]
        run = next(t for t in table if t[0] == r.y and t[1] <= r.x <= t[2])
        model.add_hint(lo, run[1])
        model.add_hint(hi, run[2])
    for (a, b), v in m.pairs.items():
        ka, kb = by_name[a], by_name[b]
        hx = 2 * rects[a].x + ka.w - 2 * rects[b].x - kb.w
        hy = 2 * rects[a].y + ka.h - 2 * rects[b].y - kb.h
        for var, value in ((v.dx, hx), (v.dy, hy), (v.adx, abs(hx)), (v.ady, abs(hy)), (v.dist, abs(hx) + abs(hy))):
            model.add_hint(var, value)
        model.add_hint(v.apart_in_x, abs(hx) >= ka.w + kb.w)
    busiest, longest = 0, 0
    for a, b, left, right in m.lane_vars:
        ra, rb = rects[a], rects[b]
        model.add_hint(left, ra.x + ra.w <= rb.x)
        model.add_hint(right, rb.x + rb.w <= ra.x)
        busiest = max(busiest, lane_load(next(f for f in m.flows if (f.src, f.dst) == (a, b)), ra, rb))
        longest = max(longest, abs(2 * ra.x + ra.w - 2 * rb.x - rb.w) + abs(2 * ra.y + ra.h - 2 * rb.y - rb.h))
    if m.busiest is not None and m.longest is not None:
        model.add_hint(m.busiest, busiest)
        model.add_hint(m.longest, longest)
    for anchor, (adx, ady) in zip(m.anchors, m.anchor_vars, strict=True):
        r = rects[anchor.kernel]
        model.add_hint(adx, abs(2 * r.x + r.w - anchor.x2))
        model.add_hint(ady, abs(2 * r.y + r.h - anchor.y2))
    for name, rect in rects.items():
        model.add_hint(m.xs[name], rect.x)
        model.add_hint(m.ys[name], rect.y)


# ------------------------------------------------------------------------------------------------- solve


def solve(
    m: Model, *, seed: int, workers: int, time_limit: float
) -> tuple[cp_model.CpSolver, cp_model.CpSolverStatus]:
    """Run CP-SAT on the model: the solver (to read values from) and its status.

    The limit is in deterministic time (the solver's own work count, about a second each), not wall-clock
    seconds, so with a fixed seed and one worker the same input gives the same placement on any machine,
    however loaded. Several workers search in parallel and race: faster, not reproducible. The wall-clock
    limit is only a backstop."""
    solver = cp_model.CpSolver()
    # CP-SAT would take SIGINT for itself and stop the search early with what it has, so that Ctrl-C went
    # unnoticed and the compile went on with a weaker placement: leave it to Python, whose KeyboardInterrupt
    # then ends the compile when the search returns (within its time limit).
    solver.parameters.catch_sigint_signal = False
    solver.parameters.random_seed = seed
    solver.parameters.num_workers = workers
    solver.parameters.max_deterministic_time = time_limit
    solver.parameters.max_time_in_seconds = 10 * time_limit + 10
    return solver, solver.solve(m.cp)


def solve_in_stages(
    m: Model, *, seed: int, workers: int, time_limit: float
) -> tuple[cp_model.CpSolver, cp_model.CpSolverStatus, tuple[str, float, float] | None]:
    """The charged fabric time first, then wirelength with that time held at what the first stage found,
    from its answer; half the time limit each, each shown as a progress stage while it runs (a SIGINT lands
    when the search returns). Returns the last solver and status, and the first stage's (status, objective,
    bound), None when it found nothing; its answer is kept in `m.found`."""
    half = time_limit / 2
    m.cp.minimize(m.charged)
    with progress.stage(f"CP-SAT searching the charged fabric time ({half:g} deterministic s at most)"):
        solver, status = solve(m, seed=seed, workers=workers, time_limit=half)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return solver, status, None
    stage_one = (solver.status_name(status), solver.objective_value, solver.best_objective_bound)
    found = m.found = {k.name: Rect(k.name, solver.value(m.xs[k.name]), solver.value(m.ys[k.name]), k.w, k.h)
                       for k in m.kernels}
    m.cp.add(m.charged <= round(stage_one[1]))
    m.cp.clear_hints()
    hint(m, found)
    m.cp.minimize(m.wirelength)
    with progress.stage(f"CP-SAT searching wirelength at that time ({half:g} deterministic s at most)"):
        solver, status = solve(m, seed=seed, workers=workers, time_limit=half)
    return solver, status, stage_one


# -------------------------------------------------------------------------------------------------- read


def read(
    m: Model,
    solver: cp_model.CpSolver,
    status: cp_model.CpSolverStatus,
    start: dict[str, Rect] | None,
    flows: list[Flow],
    time_limit: float,
    stage_one: tuple[str, float, float] | None = None,
    *,
    baseline: str = "hint",
) -> Placement:
    """The solver's answer as a Placement, kept only if it exists and is no worse than the hint `start` by the
    charged fabric time, then wirelength (else the hint, saying so in the status). The status, objective and
    bound are the first stage's (`stage_one`: the charged fabric time, in cycles); when the second stage found
    nothing in its half of the limit, the first stage's answer (`m.found`) is the solver's.

    When the solver returned no answer at all (UNKNOWN: no time to find one; MODEL_INVALID; INFEASIBLE of a
    thinned model, which proves nothing of the mesh), the best baseline placement `start` (the heuristic
    `baseline`'s) is kept: `Placement.fallback` names it, `fallback_status` is the solver's status. Raises
    DoesNotPlace when there is no answer at all: CP-SAT proved that none exists, or neither it nor any
    heuristic found one."""
    def cost(rects: dict[str, Rect]) -> tuple[float, int]:
        return (max(m.floor, charged_cycles(rects, flows, *m.fabric, m.anchors)),
                anchored_wirelength(rects, flows, m.anchors))

    rects: dict[str, Rect] | None = None
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        rects = {
            k.name: Rect(k.name, solver.value(m.xs[k.name]), solver.value(m.ys[k.name]), k.w, k.h)
            for k in m.kernels
        }
    elif stage_one is not None:
        rects = m.found
    if stage_one is not None and rects is not None:
        status_name, objective, bound = stage_one[0], stage_one[1] / CHARGE_SCALE, stage_one[2] / CHARGE_SCALE
        if start is not None and cost(start) < cost(rects):
            rects, status_name = start, f"{status_name} (kept hint)"
            objective = cost(start)[0]
    elif start is not None:
        returned = solver.status_name(status)
        return Placement(start, "cpsat", fallen_back(returned, baseline), cost(start)[0], 0.0,
                         1.0 if cost(start)[0] > 0 else 0.0, wirelength(start, flows), 0.0,
                         fallback=baseline, fallback_status=returned)
    elif status == cp_model.INFEASIBLE:
        among = " among the sampled rows of legal positions" if m.thinned else ""
        raise no_fit(m.kernels, m.mesh, f"CP-SAT proved that no non-overlapping arrangement exists{among}")
    else:
        raise no_fit(m.kernels, m.mesh, f"neither CP-SAT in {time_limit:g} s nor a heuristic found an arrangement")
    if m.thinned:
        # The bound holds for the thinned model only, not for every position: claim nothing.
        bound, status_name = 0.0, f"{status_name} (thinned positions)"
    bound = min(max(bound, 0.0), objective)
    gap = (objective - bound) / objective if objective > 0 else 0.0
    return Placement(rects, "cpsat", status_name, objective, bound, gap, wirelength(rects, flows), 0.0)


def fallen_back(returned: str, baseline: str) -> str:
    """The status of a placement kept from the baseline `baseline` when the solver returned `returned` and no
    arrangement."""
    return f"{returned} (no solution: {baseline}'s kept)"
