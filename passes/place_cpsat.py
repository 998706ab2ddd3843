"""The exact placer: an OR-Tools CP-SAT model of the ISPD 2020 formulation with fixed shapes.

Rectangles are fixed-size interval pairs in one NoOverlap2D; the objective is bytes x L1 distance between
doubled centres (2x + w keeps everything integer). The layer's slowest-kernel time, the other term of the
contest's objective, is a constant here: shapes are chosen by the partitioner before placement.

Dead PEs enter in one of two ways, whichever keeps the model small:
- obstacles: when no kernel may cover a dead PE, dead PEs merged into maximal boxes (runs along a row,
  then identical runs on consecutive rows: a dead row or column is one box) join the NoOverlap2D as fixed
  boxes. Cheap while there are few boxes.
- position tables: otherwise (kernels with slack, or thousands of scattered dead PEs, e.g. 1% of a CS-2 is
  ~7,450 boxes), each kernel's legal top-left positions, computed exactly with a summed-area table, become
  a table of (row, first col, last col) runs that (y, lo, hi) must match, with lo <= x <= hi. Kernels legal
  everywhere get no table. A table longer than MAX_TABLE_ROWS keeps every k-th row (and the hint's), so the
  model stays small at the price of some positions: the answer is still legal, and never worse than the hint.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from ortools.sat.python import cp_model

from wsc.core.errors import WscError
from wsc.core.mesh import Flow, KernelRect, Mesh, Placement, Rect, row_runs
from wsc.passes.layout import Grid, no_fit, traffic, wirelength
from wsc.passes.place_heuristics import anneal, greedy, row_major, snake

MAX_OBSTACLES = 500
MAX_TABLE_ROWS = 3000


def best_hint(
    kernels: list[KernelRect], flows: list[Flow], mesh: Mesh, seed: int
) -> tuple[dict[str, Rect] | None, str]:
    """The best legal heuristic answer (greedy, row-major, snake, anneal) and its strategy's name; anneal is
    run exactly as the `anneal` strategy runs, so cpsat can never lose to it."""
    found: dict[str, dict[str, Rect]] = {}
    heuristics: dict[str, Callable[[], dict[str, Rect]]] = {
        "greedy": lambda: greedy(kernels, flows, mesh),
        "row-major": lambda: row_major(kernels, mesh),
        "snake": lambda: snake(kernels, mesh),
        "anneal": lambda: anneal(kernels, flows, mesh, seed, start=found.get("greedy")),
    }
    for name, heuristic in heuristics.items():
        if name == "anneal" and "greedy" not in found:
            continue
        try:
            found[name] = heuristic()
        except WscError:
            continue
    if not found:
        return None, ""
    name = min(found, key=lambda n: wirelength(found[n], flows))
    return found[name], name


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


def solve(
    kernels: list[KernelRect], flows: list[Flow], mesh: Mesh, *, seed: int, workers: int, time_limit: float
) -> Placement:
    # Data: traffic per kernel pair, in units of the smallest flow (capped at a 1e6 spread) so that the
    # objective coefficients stay small integers; the heuristics' best answer as the hint.
    pairs = {p: b for p, b in traffic(flows).items() if b > 0}
    unit = max(min(pairs.values()), max(pairs.values()) / 1e6) if pairs else 1.0
    weight = {p: max(1, round(b / unit)) for p, b in pairs.items()}
    by_name = {k.name: k for k in kernels}
    hint, _ = best_hint(kernels, flows, mesh, seed)
    boxes = dead_boxes(mesh)
    as_obstacles = all(k.slack == 0 for k in kernels) and len(boxes) <= MAX_OBSTACLES

    # Variables: top-left corner per kernel, with fixed-size intervals for the no-overlap constraint.
    model = cp_model.CpModel()
    xs, ys, x_iv, y_iv = {}, {}, [], []
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
    thinned = False
    if not as_obstacles and mesh.dead:
        grid = Grid(mesh)
        for k in kernels:
            legal = grid.legal(k)
            if legal.all():
                continue
            if not legal.any():
                raise no_fit(kernels, mesh, f"every position of kernel {k.name} covers too many dead PEs")
            table, cut = position_table(legal, hint[k.name].y if hint is not None else None)
            thinned = thinned or cut
            lo = model.new_int_var(0, mesh.cols - k.w, f"lo_{k.name}")
            hi = model.new_int_var(0, mesh.cols - k.w, f"hi_{k.name}")
            model.add_allowed_assignments([ys[k.name], lo, hi], table)
            model.add(lo <= xs[k.name])
            model.add(xs[k.name] <= hi)
            if hint is not None:
                run = next(t for t in table if t[0] == hint[k.name].y and t[1] <= hint[k.name].x <= t[2])
                model.add_hint(lo, run[1])
                model.add_hint(hi, run[2])
    model.add_no_overlap_2d(x_iv, y_iv)

    # Distances between doubled centres: dist = |dx| + |dy| per kernel pair that exchanges bytes.
    dists: dict[tuple[str, str], cp_model.IntVar] = {}
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
        dists[a, b] = model.new_int_var(nearest, 2 * (mesh.rows + mesh.cols), f"dist_{a}_{b}")
        model.add(dists[a, b] == adx + ady)
        if hint is not None:
            hx = 2 * hint[a].x + ka.w - 2 * hint[b].x - kb.w
            hy = 2 * hint[a].y + ka.h - 2 * hint[b].y - kb.h
            for var, value in ((dx, hx), (dy, hy), (adx, abs(hx)), (ady, abs(hy)), (dists[a, b], abs(hx) + abs(hy))):
                model.add_hint(var, value)
            model.add_hint(apart_in_x, abs(hx) >= ka.w + kb.w)
    if hint is not None:
        for name, rect in hint.items():
            model.add_hint(xs[name], rect.x)
            model.add_hint(ys[name], rect.y)

    # Objective: scaled bytes x doubled hops.
    model.minimize(sum(weight[p] * dists[p] for p in weight))

    # Solve. The limit is in deterministic time (the solver's own work count, about a second each), not
    # wall-clock seconds, so with a fixed seed and one worker the same input gives the same placement on
    # any machine, however loaded. Several workers search in parallel and race: faster, not reproducible.
    # The wall-clock limit is only a backstop.
    solver = cp_model.CpSolver()
    solver.parameters.random_seed = seed
    solver.parameters.num_workers = workers
    solver.parameters.max_deterministic_time = time_limit
    solver.parameters.max_time_in_seconds = 10 * time_limit + 10
    status = solver.solve(model)

    # Status check: keep the solver's answer only if it exists and is no worse than the hint.
    def scaled(rects: dict[str, Rect]) -> float:
        total = 0
        for (a, b), w in weight.items():
            ra, rb = rects[a], rects[b]
            total += w * (abs(2 * ra.x + ra.w - 2 * rb.x - rb.w) + abs(2 * ra.y + ra.h - 2 * rb.y - rb.h))
        return float(total)

    status_name = solver.status_name(status)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        rects = {
            k.name: Rect(k.name, solver.value(xs[k.name]), solver.value(ys[k.name]), k.w, k.h) for k in kernels
        }
        objective, bound = solver.objective_value, solver.best_objective_bound
        if hint is not None and wirelength(hint, flows) < wirelength(rects, flows):
            rects, objective, status_name = hint, scaled(hint), f"{status_name} (kept hint)"
    elif hint is not None:
        rects, objective, bound, status_name = hint, scaled(hint), 0.0, f"{status_name} (used hint)"
    elif status == cp_model.INFEASIBLE:
        among = " among the sampled rows of legal positions" if thinned else ""
        raise no_fit(kernels, mesh, f"CP-SAT proved that no non-overlapping arrangement exists{among}")
    else:
        raise no_fit(kernels, mesh, f"CP-SAT found no arrangement in {time_limit:g} s")
    if thinned:
        # The bound holds for the thinned model only, not for every position: claim nothing.
        bound, status_name = 0.0, f"{status_name} (thinned positions)"
    bound = min(max(bound, 0.0), objective)
    gap = (objective - bound) / objective if objective > 0 else 0.0
    # Doubled coordinates count each hop twice; convert back to bytes x hops.
    return Placement(
        rects, "cpsat", status_name, objective * unit / 2, bound * unit / 2, gap, wirelength(rects, flows), 0.0
    )
