"""greedy: heaviest-traffic kernel first, each next kernel at the free position nearest (in bytes x hops) to
its already placed neighbours. Exact over every position, using numpy, so it is fast on 750 x 994."""

from __future__ import annotations

import numpy as np

from wsc.core.mesh import Flow, KernelRect, Mesh, Placement, Rect
from wsc.passes.placers import PlaceRequest, register
from wsc.passes.placers.common import Grid, heuristic, neighbours, no_fit


@register("greedy")
def place_greedy(request: PlaceRequest) -> Placement:
    return heuristic("greedy", greedy(request.kernels, request.flows, request.mesh), request.flows)


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


def _greedy_once(
    kernels: list[KernelRect], flows: list[Flow], mesh: Mesh, anchor: str, first: list[str]
) -> tuple[dict[str, Rect] | None, str]:
    """One greedy pass: the placement, or None and the name of the kernel that found no room."""
    by_name = {k.name: k for k in kernels}
    order_index = {k.name: i for i, k in enumerate(kernels)}
    near = neighbours(kernels, flows)
    total = {n: sum(v.values()) for n, v in near.items()}

    grid = Grid(mesh)
    rects: dict[str, Rect] = {}
    unplaced = [k.name for k in kernels]
    while unplaced:
        # Most bytes to already placed kernels first, then most bytes overall, then the caller's order.
        name = min(
            unplaced,
            key=lambda n: (
                first.index(n) if n in first else len(first),
                -sum(b for m, b in near[n].items() if m in rects),
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
        for m, nbytes in near[name].items():
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
