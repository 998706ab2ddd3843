"""Placement: put each kernel's rectangle of PEs on the mesh so that heavy flows travel few hops.

This is the ISPD 2020 formulation (Cerebras' own placement contest) with shapes already chosen: rectangles
must lie inside the mesh, must not overlap, must not cover a dead PE, and the cost is the sum over flows of
bytes x Manhattan distance between rectangle centres. Three strategies trade quality for speed:

- `row-major`: shelf packing in the given order; a baseline that ignores traffic.
- `greedy`: heaviest-traffic kernel first, each next kernel at the free position nearest (in bytes x hops)
  to its already placed neighbours. Exact over every position, using numpy, so it is fast on 750 x 994.
- `cpsat`: an exact model solved by OR-Tools CP-SAT, hinted with the best heuristic answer, so it always has
  an answer and is never worse than the heuristics.

Centres use doubled coordinates (2x + w) so that every quantity stays an integer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
from ortools.sat.python import cp_model

from wsc.errors import WscError


@dataclass(frozen=True)
class KernelRect:
    """A kernel's requested rectangle: w columns (x extent) by h rows (y extent)."""

    name: str
    w: int
    h: int


@dataclass(frozen=True)
class Flow:
    """Bytes sent from one kernel to another per step (direction does not matter for placement)."""

    src: str
    dst: str
    bytes: int


@dataclass(frozen=True)
class Mesh:
    """The PE grid; dead PEs are (row, col) pairs no rectangle or route may use."""

    rows: int
    cols: int
    dead: frozenset[tuple[int, int]] = frozenset()


@dataclass(frozen=True)
class Rect:
    """A placed kernel: x = left column, y = top row."""

    name: str
    x: int
    y: int
    w: int
    h: int


@dataclass
class Placement:
    """A placement and how it was found.

    `objective` and `best_bound` are in bytes x hops. For `cpsat` they are the solver's values converted back
    from its scaled units (flow bytes are divided by a common unit to keep coefficients small), so they can
    differ slightly from `wirelength`, which is always exact. The heuristics report the trivial bound 0.
    """

    rects: dict[str, Rect]
    strategy: str
    status: str
    objective: float
    best_bound: float
    gap: float
    wirelength: int
    seconds: float


STRATEGIES: tuple[str, ...] = ("cpsat", "greedy", "row-major")


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
    """Place `kernels` on `mesh` minimising sum(bytes x hops) over `flows` with the named strategy."""
    _validate(kernels, flows, mesh)
    start = time.perf_counter()
    if strategy == "row-major":
        result = _heuristic_placement("row-major", _row_major(kernels, mesh), flows)
    elif strategy == "greedy":
        result = _heuristic_placement("greedy", _greedy(kernels, flows, mesh), flows)
    elif strategy == "cpsat":
        result = _cpsat(kernels, flows, mesh, seed=seed, workers=workers, time_limit=time_limit)
    else:
        raise WscError(f"unknown placement strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    result.seconds = time.perf_counter() - start
    return result


def wirelength(rects: dict[str, Rect], flows: list[Flow]) -> int:
    """Sum of bytes x Manhattan hops between rectangle centres, rounded to an integer."""
    doubled = 0
    for f in flows:
        a, b = rects[f.src], rects[f.dst]
        dist2 = abs((2 * a.x + a.w) - (2 * b.x + b.w)) + abs((2 * a.y + a.h) - (2 * b.y + b.h))
        doubled += f.bytes * dist2
    return (doubled + 1) // 2


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
        for row, col in sorted(mesh.dead):
            if r.y <= row < r.y + r.h and r.x <= col < r.x + r.w:
                problems.append(f"{name} covers dead PE ({row}, {col})")
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
    for r, c in mesh.dead:
        if not (0 <= r < mesh.rows and 0 <= c < mesh.cols):
            raise WscError(
                f"dead PE ({r}, {c}) is outside the {mesh.rows} x {mesh.cols} mesh; fix the defect map"
            )
    names = set()
    for k in kernels:
        if k.name in names:
            raise WscError(f"kernel name {k.name!r} appears twice; kernel names must be unique")
        names.add(k.name)
        if k.w <= 0 or k.h <= 0:
            raise WscError(f"kernel {k.name} has size {k.w}x{k.h}; widths and heights must be positive")
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
    need = sum(k.w * k.h for k in kernels)
    have = mesh.rows * mesh.cols - len(mesh.dead)
    if need > have:
        raise _no_fit(kernels, mesh, "their total area exceeds the usable PEs")


def _no_fit(kernels: list[KernelRect], mesh: Mesh, why: str) -> WscError:
    need = sum(k.w * k.h for k in kernels)
    have = mesh.rows * mesh.cols - len(mesh.dead)
    dead = f" ({len(mesh.dead)} dead PEs split the free space)" if mesh.dead and need <= have else ""
    return WscError(
        f"the layer's {len(kernels)} kernels do not fit on the {mesh.rows} x {mesh.cols} mesh ({why}): "
        f"they need {need} PEs, {have} are usable{dead}; use smaller kernel rectangles"
    )


def _heuristic_placement(strategy: str, rects: dict[str, Rect], flows: list[Flow]) -> Placement:
    wl = wirelength(rects, flows)
    return Placement(rects, strategy, "HEURISTIC", float(wl), 0.0, 1.0 if wl > 0 else 0.0, wl, 0.0)


# ----------------------------------------------------------------------------------------------- grids


class _Grid:
    """Blocked PEs (dead or taken) with a summed-area table, so 'is this rectangle free' is O(1) per position
    and numpy can answer it for every position of a kernel at once."""

    def __init__(self, mesh: Mesh) -> None:
        self.blocked = np.zeros((mesh.rows, mesh.cols), dtype=np.int32)
        for r, c in mesh.dead:
            self.blocked[r, c] = 1
        self._refresh()

    def _refresh(self) -> None:
        self.sat = np.zeros((self.blocked.shape[0] + 1, self.blocked.shape[1] + 1), dtype=np.int64)
        self.sat[1:, 1:] = self.blocked.cumsum(0).cumsum(1)

    def free(self, w: int, h: int) -> np.ndarray:
        """Bool array [rows-h+1, cols-w+1]: True where a w x h rectangle with top-left (y, x) is free."""
        s = self.sat
        taken = s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w]
        return taken == 0

    def take(self, r: Rect) -> None:
        self.blocked[r.y : r.y + r.h, r.x : r.x + r.w] = 1
        self._refresh()


# ----------------------------------------------------------------------------------------------- row-major


def _row_major(kernels: list[KernelRect], mesh: Mesh) -> dict[str, Rect]:
    """Shelf packing: kernels left to right along a shelf, a new shelf below the tallest kernel on it.

    Pure shelves waste the space under short kernels, so a kernel that fits on neither the current nor a
    new shelf goes to the first free position in row-major order (top to bottom, left to right).
    """
    grid = _Grid(mesh)
    rects: dict[str, Rect] = {}
    shelf_y, shelf_h, cursor = 0, 0, 0
    for k in kernels:
        free = grid.free(k.w, k.h)
        spot = _on_shelf(free, shelf_y, cursor)
        if spot is None and shelf_h > 0:
            spot = _on_shelf(free, shelf_y + shelf_h, 0)
        if spot is not None:
            x, y = spot
            if y != shelf_y:
                shelf_y, shelf_h = y, 0
            cursor, shelf_h = x + k.w, max(shelf_h, y - shelf_y + k.h)
        else:
            flat = np.flatnonzero(free)
            if not flat.size:
                raise _no_fit(kernels, mesh, f"row-major packing found no free position for kernel {k.name}")
            y, x = (int(v) for v in np.unravel_index(int(flat[0]), free.shape))
        rect = Rect(k.name, x, y, k.w, k.h)
        rects[k.name] = rect
        grid.take(rect)
    return rects


def _on_shelf(free: np.ndarray, shelf_y: int, cursor: int) -> tuple[int, int] | None:
    """First free (x, y) at or right of `cursor` on the shelf starting at row `shelf_y`.

    A dead PE may block a shelf's first row; the shelf's first kernel then slides down a row at a time.
    """
    for y in range(shelf_y, free.shape[0]):
        xs = np.flatnonzero(free[y, cursor:])
        if xs.size:
            return cursor + int(xs[0]), y
        if cursor > 0:
            return None
    return None


# ----------------------------------------------------------------------------------------------- greedy


def _traffic(flows: list[Flow]) -> dict[tuple[str, str], int]:
    """Bytes between each unordered pair of distinct kernels (distance is symmetric; self-flows cost 0)."""
    pairs: dict[tuple[str, str], int] = {}
    for f in flows:
        if f.src != f.dst:
            key = (min(f.src, f.dst), max(f.src, f.dst))
            pairs[key] = pairs.get(key, 0) + f.bytes
    return pairs


def _greedy(kernels: list[KernelRect], flows: list[Flow], mesh: Mesh) -> dict[str, Rect]:
    """Connectivity-ordered greedy placement, with retries when the free space fragments.

    Anchoring the first kernel at the centre leaves room for neighbours on every side. When a kernel then
    finds no free position, it is retried first in the order (big awkward kernels claim space before the
    small ones cut it up); if that still fails, a top-left anchor packs the way row-major does.
    """
    for anchor in ("centre", "corner"):
        first: list[str] = []
        while True:
            rects, failed = _greedy_once(kernels, flows, mesh, anchor, first)
            if rects is not None:
                return rects
            if failed in first:
                break
            first.append(failed)
    raise _no_fit(kernels, mesh, "greedy placement found no free position for some kernel")


def _greedy_once(
    kernels: list[KernelRect], flows: list[Flow], mesh: Mesh, anchor: str, first: list[str]
) -> tuple[dict[str, Rect] | None, str]:
    """One greedy pass: the placement, or None and the name of the kernel that found no room."""
    pairs = _traffic(flows)
    by_name = {k.name: k for k in kernels}
    order_index = {k.name: i for i, k in enumerate(kernels)}
    neighbours: dict[str, dict[str, int]] = {k.name: {} for k in kernels}
    for (a, b), nbytes in pairs.items():
        neighbours[a][b] = nbytes
        neighbours[b][a] = nbytes
    total = {n: sum(v.values()) for n, v in neighbours.items()}

    grid = _Grid(mesh)
    rects: dict[str, Rect] = {}
    unplaced = [k.name for k in kernels]
    while unplaced:
        # Most bytes to already placed kernels first, then most bytes overall, then the caller's order.
        name = min(
            unplaced,
            key=lambda n: (
                first.index(n) if n in first else len(first),
                -sum(b for m, b in neighbours[n].items() if m in rects),
                -total[n],
                order_index[n],
            ),
        )
        unplaced.remove(name)
        k = by_name[name]
        free = grid.free(k.w, k.h)
        if not free.any():
            return None, name
        # Doubled centre coordinates of every candidate position.
        cx = 2 * np.arange(free.shape[1], dtype=np.int64) + k.w
        cy = 2 * np.arange(free.shape[0], dtype=np.int64) + k.h
        cost_x = np.zeros_like(cx)
        cost_y = np.zeros_like(cy)
        for m, nbytes in neighbours[name].items():
            if m in rects:
                r = rects[m]
                cost_x += nbytes * np.abs(cx - (2 * r.x + r.w))
                cost_y += nbytes * np.abs(cy - (2 * r.y + r.h))
        cost = cost_y[:, None] + cost_x[None, :]
        # Ties (no placed neighbour, or flat cost) go to the position nearest the anchor.
        if anchor == "centre":
            tie = np.abs(cy - mesh.rows)[:, None] + np.abs(cx - mesh.cols)[None, :]
        else:
            tie = cy[:, None] * (2 * mesh.cols + 1) + cx[None, :]
        cost = np.where(free, cost, np.iinfo(np.int64).max)
        best = cost.min()
        tie = np.where(cost == best, tie, np.iinfo(np.int64).max)
        y, x = np.unravel_index(int(np.argmin(tie)), tie.shape)
        rect = Rect(name, int(x), int(y), k.w, k.h)
        rects[name] = rect
        grid.take(rect)
    return {k.name: rects[k.name] for k in kernels}, ""


# ----------------------------------------------------------------------------------------------- cp-sat


def _dead_runs(mesh: Mesh) -> list[tuple[int, int, int]]:
    """Dead PEs merged into horizontal runs (row, first col, length): fewer fixed boxes for NoOverlap2D."""
    runs: list[tuple[int, int, int]] = []
    for r, c in sorted(mesh.dead):
        if runs and runs[-1][0] == r and runs[-1][1] + runs[-1][2] == c:
            runs[-1] = (r, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((r, c, 1))
    return runs


def _best_hint(kernels: list[KernelRect], flows: list[Flow], mesh: Mesh) -> dict[str, Rect] | None:
    """The better legal heuristic answer, or None when neither heuristic fits the kernels."""
    best: dict[str, Rect] | None = None
    heuristics: tuple[Callable[[], dict[str, Rect]], ...] = (
        lambda: _greedy(kernels, flows, mesh),
        lambda: _row_major(kernels, mesh),
    )
    for heuristic in heuristics:
        try:
            rects = heuristic()
        except WscError:
            continue
        if best is None or wirelength(rects, flows) < wirelength(best, flows):
            best = rects
    return best


def _cpsat(
    kernels: list[KernelRect], flows: list[Flow], mesh: Mesh, *, seed: int, workers: int, time_limit: float
) -> Placement:
    """Exact CP-SAT model: NoOverlap2D over kernels and dead PEs, L1 distance between doubled centres."""
    # Data: traffic per kernel pair, in units of the smallest flow (capped at a 1e6 spread) so that the
    # objective coefficients stay small integers.
    pairs = {p: b for p, b in _traffic(flows).items() if b > 0}
    unit = max(min(pairs.values()), max(pairs.values()) / 1e6) if pairs else 1.0
    weight = {p: max(1, round(b / unit)) for p, b in pairs.items()}
    by_name = {k.name: k for k in kernels}
    hint = _best_hint(kernels, flows, mesh)

    # Variables: top-left corner per kernel, with fixed-size intervals for the no-overlap constraint.
    model = cp_model.CpModel()
    xs, ys, x_iv, y_iv = {}, {}, [], []
    for k in kernels:
        xs[k.name] = model.new_int_var(0, mesh.cols - k.w, f"x_{k.name}")
        ys[k.name] = model.new_int_var(0, mesh.rows - k.h, f"y_{k.name}")
        x_iv.append(model.new_fixed_size_interval_var(xs[k.name], k.w, f"xi_{k.name}"))
        y_iv.append(model.new_fixed_size_interval_var(ys[k.name], k.h, f"yi_{k.name}"))

    # Constraints: kernels and dead PEs (fixed boxes) never overlap.
    for r, c, length in _dead_runs(mesh):
        x_iv.append(model.new_fixed_size_interval_var(c, length, f"dead_x_{r}_{c}"))
        y_iv.append(model.new_fixed_size_interval_var(r, 1, f"dead_y_{r}_{c}"))
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
            for var, value in (
                (dx, hx),
                (dy, hy),
                (adx, abs(hx)),
                (ady, abs(hy)),
                (dists[a, b], abs(hx) + abs(hy)),
            ):
                model.add_hint(var, value)
            model.add_hint(apart_in_x, abs(hx) >= ka.w + kb.w)

    # Objective: scaled bytes x doubled hops.
    model.minimize(sum(weight[p] * dists[p] for p in weight))

    # A complete hint lets the solver start from a known solution at once.
    if hint is not None:
        for name, rect in hint.items():
            model.add_hint(xs[name], rect.x)
            model.add_hint(ys[name], rect.y)

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
    hint_is_legal = hint is not None and not check_placement(
        Placement(hint, "", "", 0.0, 0.0, 0.0, 0, 0.0), kernels, mesh
    )
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        rects = {
            k.name: Rect(k.name, solver.value(xs[k.name]), solver.value(ys[k.name]), k.w, k.h)
            for k in kernels
        }
        objective, bound = solver.objective_value, solver.best_objective_bound
        if hint is not None and hint_is_legal and wirelength(hint, flows) < wirelength(rects, flows):
            rects, objective, status_name = hint, scaled(hint), f"{status_name} (kept hint)"
    elif hint is not None and hint_is_legal:
        rects, objective, bound, status_name = hint, scaled(hint), 0.0, f"{status_name} (used hint)"
    elif status == cp_model.INFEASIBLE:
        raise _no_fit(kernels, mesh, "CP-SAT proved that no non-overlapping arrangement exists")
    else:
        raise _no_fit(kernels, mesh, f"CP-SAT found no arrangement in {time_limit:g} s")
    bound = min(max(bound, 0.0), objective)
    gap = (objective - bound) / objective if objective > 0 else 0.0
    # Doubled coordinates count each hop twice; convert back to bytes x hops.
    return Placement(
        rects,
        "cpsat",
        status_name,
        objective * unit / 2,
        bound * unit / 2,
        gap,
        wirelength(rects, flows),
        0.0,
    )


# ------------------------------------------------------------------------------------- the pipeline's pass


def mesh_of(target) -> Mesh:
    return Mesh(target.rows, target.cols, frozenset(target.dead_pes))


@dataclass(frozen=True)
class Place:
    """place: each streaming layer's kernels become rectangles on the mesh. Layers that map identically
    (every block of a GPT) are placed once; the others reuse that placement under their own kernel names."""

    name: ClassVar[str] = "place"
    strategy: str = "cpsat"
    seed: int = 0
    workers: int = 1  # one worker: reproducible placements (see _cpsat)
    time_limit: float = 2.0  # deterministic seconds per distinct layer

    def __call__(self, program):
        if self.strategy not in STRATEGIES:
            raise WscError(f"unknown placement strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        mesh = mesh_of(program.target)
        placed: dict[str, tuple[list[str], Placement]] = {}
        for layer in program.layers:
            names = list(layer.kernels)
            key = layer.signature(program.graph)
            if key in placed:
                twin_names, twin = placed[key]
                rename = dict(zip(twin_names, names, strict=True))
                layer.placement = replace(
                    twin, rects={rename[n]: replace(r, name=rename[n]) for n, r in twin.rects.items()}, seconds=0.0
                )
                continue
            kernels = [KernelRect(n, plan.w, plan.h) for n, plan in layer.kernels.items()]
            layer.placement = place(kernels, layer.flows, mesh, self.strategy, seed=self.seed,
                                    workers=self.workers, time_limit=self.time_limit)
            placed[key] = (names, layer.placement)
        return program
