"""The heuristic placers: baselines to compare CP-SAT against, and the hints it starts from.

Every one returns {kernel name: Rect}, legal under the defect model of `layout.py`, or raises WscError
(`no_fit`) when it finds no room. All are deterministic for a given seed.
"""

from __future__ import annotations

import math
import random as stdrandom

import numpy as np

from wsc.core.mesh import Flow, KernelRect, Mesh, Rect
from wsc.passes.layout import Grid, no_fit, traffic

# ----------------------------------------------------------------------------------------------- shelves


def row_major(kernels: list[KernelRect], mesh: Mesh) -> dict[str, Rect]:
    """Shelf packing: kernels left to right along a shelf, a new shelf below the tallest kernel on it.

    Pure shelves waste the space under short kernels, so a kernel that fits on neither the current nor a
    new shelf goes to the first free position in row-major order (top to bottom, left to right).
    """
    return _shelves(kernels, mesh, alternate=False)


def snake(kernels: list[KernelRect], mesh: Mesh) -> dict[str, Rect]:
    """Boustrophedon shelf packing: shelves alternate left-to-right and right-to-left, kernels in the given
    order, so the last kernel of a shelf sits right above the first of the next one and consecutive kernels
    (a layer's dataflow chain) stay adjacent across the turn."""
    return _shelves(kernels, mesh, alternate=True)


def _shelves(kernels: list[KernelRect], mesh: Mesh, alternate: bool) -> dict[str, Rect]:
    """Pack in the given order; a kernel that finds no room at all moves to the front and packing restarts
    (a tall kernel last in line may find every shelf taken), as in `greedy`."""
    order = list(kernels)
    for _ in range(len(kernels)):
        rects, failed = _shelves_once(order, mesh, alternate)
        if rects is not None:
            return {k.name: rects[k.name] for k in kernels}
        if order[0] is failed:
            break
        order.remove(failed)
        order.insert(0, failed)
    raise no_fit(kernels, mesh, f"shelf packing found no free position for kernel {failed.name}")


def _shelves_once(
    kernels: list[KernelRect], mesh: Mesh, alternate: bool
) -> tuple[dict[str, Rect] | None, KernelRect]:
    grid = Grid(mesh)
    rects: dict[str, Rect] = {}
    shelf_y, shelf_h, cursor, leftward = 0, 0, 0, False
    for k in kernels:
        free = grid.free(k)
        spot = _on_shelf(free, shelf_y, cursor, leftward, k.w)
        if spot is None and shelf_h > 0:
            turn = alternate and not leftward
            spot = _on_shelf(free, shelf_y + shelf_h, mesh.cols if turn else 0, turn, k.w)
            if spot is not None:
                leftward = turn
        if spot is not None:
            x, y = spot
            if y != shelf_y:
                shelf_y, shelf_h = y, 0
            cursor, shelf_h = (x if leftward else x + k.w), max(shelf_h, y - shelf_y + k.h)
        else:
            flat = np.flatnonzero(free)
            if not flat.size:
                return None, k
            y, x = (int(v) for v in np.unravel_index(int(flat[0]), free.shape))
        rect = Rect(k.name, x, y, k.w, k.h)
        rects[k.name] = rect
        grid.take(rect)
    return rects, kernels[-1]


def _on_shelf(free: np.ndarray, shelf_y: int, cursor: int, leftward: bool, w: int) -> tuple[int, int] | None:
    """First free (x, y) past `cursor` on the shelf starting at row `shelf_y`, going right (x >= cursor) or
    left (x + w <= cursor).

    A dead PE may block a shelf's first row; the shelf's first kernel then slides down a row at a time.
    """
    at_start = cursor == (free.shape[1] + w - 1 if leftward else 0)
    for y in range(shelf_y, free.shape[0]):
        if leftward:
            xs = np.flatnonzero(free[y, : max(0, cursor - w + 1)])
            if xs.size:
                return int(xs[-1]), y
        else:
            xs = np.flatnonzero(free[y, cursor:])
            if xs.size:
                return cursor + int(xs[0]), y
        if not at_start:
            return None
    return None


# ----------------------------------------------------------------------------------------------- greedy


def greedy(kernels: list[KernelRect], flows: list[Flow], mesh: Mesh) -> dict[str, Rect]:
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
    raise no_fit(kernels, mesh, "greedy placement found no free position for some kernel")


def _neighbours(kernels: list[KernelRect], flows: list[Flow]) -> dict[str, dict[str, int]]:
    neighbours: dict[str, dict[str, int]] = {k.name: {} for k in kernels}
    for (a, b), nbytes in traffic(flows).items():
        neighbours[a][b] = nbytes
        neighbours[b][a] = nbytes
    return neighbours


def _greedy_once(
    kernels: list[KernelRect], flows: list[Flow], mesh: Mesh, anchor: str, first: list[str]
) -> tuple[dict[str, Rect] | None, str]:
    """One greedy pass: the placement, or None and the name of the kernel that found no room."""
    by_name = {k.name: k for k in kernels}
    order_index = {k.name: i for i, k in enumerate(kernels)}
    neighbours = _neighbours(kernels, flows)
    total = {n: sum(v.values()) for n, v in neighbours.items()}

    grid = Grid(mesh)
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
        free = grid.free(k)
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


# ----------------------------------------------------------------------------------------------- random


def random_placement(kernels: list[KernelRect], mesh: Mesh, seed: int, attempts: int = 8) -> dict[str, Rect]:
    """Each kernel at a uniformly random free position, largest first (small kernels dropped first would
    cut the mesh into pieces no large one fits). A draw that corners itself is retried; after `attempts`
    failures the kernels go, in a random order, to the first free position in row-major order, which is
    still a legal seeded answer, just a less random one."""
    rng = np.random.default_rng(seed)
    order = sorted(kernels, key=lambda k: -k.w * k.h)
    for attempt in range(attempts + 1):
        packed = attempt == attempts
        if packed:
            order = [kernels[i] for i in rng.permutation(len(kernels))]
        grid = Grid(mesh)
        rects: dict[str, Rect] = {}
        for k in order:
            flat = np.flatnonzero(grid.free(k))
            if not flat.size:
                break
            pick = int(flat[0]) if packed else int(flat[rng.integers(flat.size)])
            y, x = divmod(pick, mesh.cols - k.w + 1)
            rects[k.name] = Rect(k.name, x, y, k.w, k.h)
            grid.take(rects[k.name])
        else:
            return {k.name: rects[k.name] for k in kernels}
    raise no_fit(kernels, mesh, f"random placement found no free position in {attempts + 1} draws")


# ----------------------------------------------------------------------------------------------- anneal

ANNEAL_ITERATIONS = 30_000


def anneal(
    kernels: list[KernelRect],
    flows: list[Flow],
    mesh: Mesh,
    seed: int,
    start: dict[str, Rect] | None = None,
    iterations: int = ANNEAL_ITERATIONS,
) -> dict[str, Rect]:
    """Simulated annealing from the greedy answer (or `start`), minimising bytes x hops.

    Moves keep the placement legal at every step: shift one rectangle (by up to a distance that shrinks as
    the temperature falls), pull one towards the bytes-weighted median of its neighbours, or swap the
    centres of two rectangles of similar area. The number of iterations is fixed, not timed, so the answer
    depends only on the input and the seed. The best placement seen is returned, never worse than `start`.
    """
    rects = dict(start) if start is not None else greedy(kernels, flows, mesh)
    names = [k.name for k in kernels]
    if len(names) < 2 or not flows:
        return rects
    rng = stdrandom.Random(seed)
    grid = Grid(mesh)
    by_name = {k.name: k for k in kernels}
    neighbours = _neighbours(kernels, flows)
    pos = {n: [rects[n].x, rects[n].y] for n in names}

    def centre(n: str, x: int, y: int) -> tuple[int, int]:
        return 2 * x + by_name[n].w, 2 * y + by_name[n].h

    def cost_of(n: str, x: int, y: int, skip: str = "") -> int:
        cx, cy = centre(n, x, y)
        total = 0
        for m, b in neighbours[n].items():
            if m != skip:
                mx, my = centre(m, *pos[m])
                total += b * (abs(cx - mx) + abs(cy - my))
        return total

    def fits(n: str, x: int, y: int, ignore: tuple[str, ...]) -> bool:
        k = by_name[n]
        if x < 0 or y < 0 or x + k.w > mesh.cols or y + k.h > mesh.rows:
            return False
        if k.slack < k.w * k.h and grid.dead_in(x, y, k.w, k.h) > k.slack:
            return False
        for m in names:
            if m == n or m in ignore:
                continue
            km, (mx, my) = by_name[m], pos[m]
            if x < mx + km.w and mx < x + k.w and y < my + km.h and my < y + k.h:
                return False
        return True

    current = sum(cost_of(n, pos[n][0], pos[n][1]) for n in names) // 2
    best, best_pos = current, {n: list(p) for n, p in pos.items()}
    # Hot enough early to leave the greedy basin (a move costing 0.1% of the total is taken half the time).
    t_start = max(1.0, current / 1500)
    t_end = t_start * 1e-4
    reach = max(mesh.rows, mesh.cols) // 4
    similar = [
        (a, b)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if max(by_name[a].w * by_name[a].h, by_name[b].w * by_name[b].h)
        <= 2 * min(by_name[a].w * by_name[a].h, by_name[b].w * by_name[b].h)
    ]
    for it in range(iterations):
        frac = it / iterations
        temp = t_start * (t_end / t_start) ** frac
        step = max(1, int(reach * (1 - frac) ** 2))
        move = rng.random()
        if move < 0.15 and similar:
            a, b = similar[rng.randrange(len(similar))]
            (acx, acy), (bcx, bcy) = centre(a, *pos[a]), centre(b, *pos[b])
            ka, kb = by_name[a], by_name[b]
            na = ((bcx - ka.w) // 2, (bcy - ka.h) // 2)
            nb = ((acx - kb.w) // 2, (acy - kb.h) // 2)
            old = cost_of(a, pos[a][0], pos[a][1]) + cost_of(b, pos[b][0], pos[b][1], skip=a)
            if not (fits(a, *na, ignore=(b,)) and fits(b, *nb, ignore=(a,))):
                continue
            # Place both provisionally so their mutual flow is costed at the new distance.
            sa, sb = pos[a], pos[b]
            pos[a], pos[b] = list(na), list(nb)
            delta = cost_of(a, na[0], na[1]) + cost_of(b, nb[0], nb[1], skip=a) - old
            if delta <= 0 or rng.random() < math.exp(-delta / temp):
                current += delta
            else:
                pos[a], pos[b] = sa, sb
        else:
            n = names[rng.randrange(len(names))]
            k = by_name[n]
            x, y = pos[n]
            if move < 0.4 and neighbours[n]:
                tx, ty = _weighted_median_centre(neighbours[n], {m: centre(m, *pos[m]) for m in neighbours[n]})
                nx_, ny_ = (tx - k.w) // 2 + rng.randint(-1, 1), (ty - k.h) // 2 + rng.randint(-1, 1)
            elif move < 0.7:  # slide along one axis: next to packed neighbours most 2-D jumps collide
                d = rng.randint(-step, step)
                nx_, ny_ = (x + d, y) if rng.random() < 0.5 else (x, y + d)
            else:
                nx_, ny_ = x + rng.randint(-step, step), y + rng.randint(-step, step)
            if (nx_, ny_) == (x, y) or not fits(n, nx_, ny_, ignore=()):
                continue
            delta = cost_of(n, nx_, ny_) - cost_of(n, x, y)
            if delta <= 0 or rng.random() < math.exp(-delta / temp):
                pos[n] = [nx_, ny_]
                current += delta
        if current < best:
            best, best_pos = current, {m: list(p) for m, p in pos.items()}
    return {n: Rect(n, best_pos[n][0], best_pos[n][1], by_name[n].w, by_name[n].h) for n in names}


def _weighted_median_centre(weights: dict[str, int], centres: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """The point minimising the bytes-weighted L1 distance to the neighbours: the weighted median per axis."""

    def median(values: list[tuple[int, int]]) -> int:
        values.sort()
        half, run = sum(w for _, w in values) / 2, 0
        for v, w in values:
            run += w
            if run >= half:
                return v
        return values[-1][0]

    return (
        median([(centres[m][0], w) for m, w in weights.items()]),
        median([(centres[m][1], w) for m, w in weights.items()]),
    )

