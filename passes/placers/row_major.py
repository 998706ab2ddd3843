"""row-major: shelf packing in the given order, a baseline that ignores traffic; and the shelf packing
itself, which `snake` shares."""

from __future__ import annotations

import numpy as np

from wsc.core.mesh import KernelRect, Mesh, Placement, Rect
from wsc.passes.placers import PlaceRequest, register
from wsc.passes.placers.common import Grid, heuristic, no_fit


@register("row-major")
def place_row_major(request: PlaceRequest) -> Placement:
    return heuristic("row-major", row_major(request.kernels, request.mesh), request.flows)


def row_major(kernels: list[KernelRect], mesh: Mesh) -> dict[str, Rect]:
    """Shelf packing: kernels left to right along a shelf, a new shelf below the tallest kernel on it.

    Pure shelves waste the space under short kernels, so a kernel that fits on neither the current nor a
    new shelf goes to the first free position in row-major order (top to bottom, left to right).
    """
    return shelves(kernels, mesh, alternate=False)


def shelves(kernels: list[KernelRect], mesh: Mesh, alternate: bool) -> dict[str, Rect]:
    """Pack in the given order, every shelf left to right or (`alternate`) every other one right to left; a
    kernel that finds no room at all moves to the front and packing restarts (a tall kernel last in line may
    find every shelf taken), as in `greedy`."""
    if not kernels:  # a layer of layout ops alone has nothing to place
        return {}
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
