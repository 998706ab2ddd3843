"""Routing: exact link loads on a hand-made case, detours around dead PEs, and scale."""

from __future__ import annotations

import time

import numpy as np
import pytest

from wsc.errors import WscError
from wsc.passes.place import Flow, Mesh, Placement, Rect
from wsc.passes.route import route_xy


def placed(*rects: Rect) -> Placement:
    return Placement({r.name: r for r in rects}, "hand", "HAND", 0.0, 0.0, 0.0, 0, 0.0)


def net_outflow(loads: dict[str, np.ndarray], rows: int, cols: int) -> np.ndarray:
    """Bytes leaving minus bytes entering each PE: +bytes at a source, -bytes at a sink, 0 elsewhere."""
    out = np.zeros((rows, cols), dtype=np.int64)
    out[:, :-1] += loads["east"] - loads["west"]
    out[:, 1:] += loads["west"] - loads["east"]
    out[:-1, :] += loads["south"] - loads["north"]
    out[1:, :] += loads["north"] - loads["south"]
    return out


def test_hand_made_8x8_link_loads() -> None:
    mesh = Mesh(8, 8)
    a = Rect("a", 0, 0, 2, 2)  # rows 0-1, cols 0-1
    b = Rect("b", 5, 3, 2, 2)  # rows 3-4, cols 5-6
    c = Rect("c", 0, 5, 3, 2)  # rows 5-6, cols 0-2
    d = Rect("d", 1, 7, 4, 1)  # row 7, cols 1-4: shares columns with c, so lanes go down
    flows = [Flow("a", "b", 100), Flow("b", "a", 30), Flow("c", "d", 90)]
    routes = route_xy(placed(a, b, c, d), flows, mesh)
    load = routes.link_load

    # a -> b: 2 lanes of 50, rows 0 and 1 east from col 1 to col 5, then south down col 5 to rows 3 and 4.
    # c -> d: 3 lanes of 30 from c's bottom row 6, cols 0,1,2 -> d's cols 1,2,3: one hop east, one south.
    east = np.zeros((8, 7), dtype=np.int64)
    east[0, 1:5] = 50
    east[1, 1:5] = 50
    east[6, 0:3] = 30
    south = np.zeros((7, 8), dtype=np.int64)
    south[0:4, 5] = [50, 100, 100, 50]
    south[6, 1:4] = 30
    # b -> a: 2 lanes of 15 from b's left col 5 on rows 3 and 4, west to a's right col 1, north to rows 0, 1.
    west = np.zeros((8, 7), dtype=np.int64)
    west[3, 1:5] = 15
    west[4, 1:5] = 15
    north = np.zeros((7, 8), dtype=np.int64)
    north[0:4, 1] = [15, 30, 30, 15]

    np.testing.assert_array_equal(load["east"], east)
    np.testing.assert_array_equal(load["west"], west)
    np.testing.assert_array_equal(load["south"], south)
    np.testing.assert_array_equal(load["north"], north)
    assert routes.max_link_load == 100
    assert routes.total_byte_hops == 100 * 7 + 30 * 7 + 90 * 2
    assert routes.longest_route_hops == 7
    assert [(e["src"], e["dst"], e["bytes"], e["hops"], e["lanes"]) for e in routes.edges] == [
        ("a", "b", 100, 7, 2),
        ("b", "a", 30, 7, 2),
        ("c", "d", 90, 2, 3),
    ]
    assert sum(int(x.sum()) for x in load.values()) == routes.total_byte_hops


def test_uneven_split_keeps_every_byte() -> None:
    routes = route_xy(placed(Rect("a", 0, 0, 1, 3), Rect("b", 4, 0, 1, 3)), [Flow("a", "b", 10)], Mesh(3, 5))
    np.testing.assert_array_equal(routes.link_load["east"][:, 0], [4, 3, 3])
    assert routes.max_link_load == 4


def test_route_around_a_dead_pe_avoids_it_and_delivers() -> None:
    dead = (0, 4)
    mesh = Mesh(8, 8, frozenset({dead}))
    routes = route_xy(placed(Rect("a", 0, 0, 1, 1), Rect("b", 7, 0, 1, 1)), [Flow("a", "b", 64)], mesh)
    load = routes.link_load
    # No link into or out of the dead PE carries anything.
    assert load["east"][0, 3] == load["east"][0, 4] == load["west"][0, 3] == load["west"][0, 4] == 0
    assert load["south"][0, 4] == load["north"][0, 4] == 0
    # Every byte leaves a, arrives at b, and nothing is lost on the way.
    flow = net_outflow(load, 8, 8)
    assert flow[0, 0] == 64 and flow[0, 7] == -64
    flow[0, 0] = flow[0, 7] = 0
    assert not flow.any()
    # The detour is the shortest one: 7 hops east plus one down and one back up.
    assert routes.edges[0]["hops"] == 9 and routes.edges[0]["rerouted"] == 1
    assert routes.total_byte_hops == 64 * 9


def test_no_route_raises_naming_the_flow() -> None:
    mesh = Mesh(8, 8, frozenset({(6, 7), (7, 6)}))
    with pytest.raises(WscError, match=r"flow a -> b has no route"):
        route_xy(placed(Rect("a", 0, 0, 1, 1), Rect("b", 7, 7, 1, 1)), [Flow("a", "b", 1)], mesh)


def test_unplaced_kernel_raises() -> None:
    with pytest.raises(WscError, match="'z', which is not placed"):
        route_xy(placed(Rect("a", 0, 0, 1, 1)), [Flow("a", "z", 1)], Mesh(4, 4))


def test_wafer_scale_routes_are_fast_and_conserve_bytes() -> None:
    mesh = Mesh(750, 994, frozenset({(150, 500), (440, 984)}))
    a = Rect("a", 0, 0, 10, 300)
    b = Rect("b", 984, 450, 10, 300)
    c = Rect("c", 400, 0, 300, 200)
    flows = [Flow("a", "b", 3_000_000), Flow("b", "c", 1_234_567), Flow("c", "a", 999)]
    start = time.perf_counter()
    routes = route_xy(placed(a, b, c), flows, mesh)
    assert time.perf_counter() - start < 5.0
    # Lane i of a -> b runs from (i, 9) east to col 984, then south to row 450 + i: 975 + 450 hops. Lane 150
    # steps aside (2 extra hops) at both dead PEs: (150, 500) on its row and (440, 984) on its column.
    assert routes.longest_route_hops == (984 - 9) + 450 + 2 + 2
    assert sum(int(x.sum()) for x in routes.link_load.values()) == routes.total_byte_hops
    # Every a -> b lane goes down column 984 past the dead PE; so do all 3 MB.
    assert routes.edges[0]["lanes"] == 300 and routes.edges[0]["rerouted"] == 300
    assert routes.max_link_load == 3_000_000
    for r, col in mesh.dead:
        assert routes.link_load["east"][r, col - 1] == routes.link_load["east"][r, col] == 0
        assert routes.link_load["south"][r - 1, col] == routes.link_load["south"][r, col] == 0
