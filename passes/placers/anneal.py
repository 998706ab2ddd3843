"""anneal: simulated annealing from the greedy answer, a fixed number of legal moves (so the answer depends
only on the input and the seed)."""

from __future__ import annotations

import math
import random as stdrandom

from wsc.core.mesh import Flow, KernelRect, Mesh, Placement, Rect
from wsc.passes.placers import PlaceRequest, register
from wsc.passes.placers.common import Grid, heuristic, neighbours
from wsc.passes.placers.greedy import greedy


@register("anneal")
def place_anneal(request: PlaceRequest) -> Placement:
    return heuristic("anneal", anneal(request.kernels, request.flows, request.mesh, request.seed), request.flows)


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
    near = neighbours(kernels, flows)
    pos = {n: [rects[n].x, rects[n].y] for n in names}

    def centre(n: str, x: int, y: int) -> tuple[int, int]:
        return 2 * x + by_name[n].w, 2 * y + by_name[n].h

    def cost_of(n: str, x: int, y: int, skip: str = "") -> int:
        cx, cy = centre(n, x, y)
        total = 0
        for m, b in near[n].items():
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
            if move < 0.4 and near[n]:
                tx, ty = _weighted_median_centre(near[n], {m: centre(m, *pos[m]) for m in near[n]})
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

