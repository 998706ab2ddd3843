"""Routing: exact link loads on a hand-made case, detours around dead PEs, and scale."""

from __future__ import annotations

import numpy as np
import pytest

from wsc.artifacts.routes_json import route_json
from wsc.core.errors import WscError
from wsc.core.mesh import Flow, Mesh, Placement, Rect
from wsc.passes.route import route


def route_xy(placement: Placement, flows: list[Flow], mesh: Mesh, colors: int | None = None):
    return route(placement, flows, mesh, "xy", colors)


def route_congestion_aware(placement: Placement, flows: list[Flow], mesh: Mesh, colors: int | None = None):
    return route(placement, flows, mesh, "congestion", colors)


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

    # a -> b: 2 lanes of 50 ending on b's diagonal, (3, 5) and (4, 6): row 0 east from col 1 to col 5 then
    # south down col 5 to row 3; row 1 east from col 1 to col 6 then south down col 6 to row 4.
    # c -> d: 3 lanes of 30 from c's bottom row 6, cols 0,1,2 -> d's cols 1,2,3: one hop east, one south.
    east = np.zeros((8, 7), dtype=np.int64)
    east[0, 1:5] = 50
    east[1, 1:6] = 50
    east[6, 0:3] = 30
    south = np.zeros((7, 8), dtype=np.int64)
    south[0:3, 5] = 50
    south[1:4, 6] = 50
    south[6, 1:4] = 30
    # b -> a: 2 lanes of 15 from b's left col 5 on rows 3 and 4 to a's diagonal, (0, 1) and (1, 0): row 3
    # west to col 1 then north to row 0; row 4 west to col 0 then north to row 1.
    west = np.zeros((8, 7), dtype=np.int64)
    west[3, 1:5] = 15
    west[4, 0:5] = 15
    north = np.zeros((7, 8), dtype=np.int64)
    north[0:3, 1] = 15
    north[1:4, 0] = 15

    np.testing.assert_array_equal(load["east"], east)
    np.testing.assert_array_equal(load["west"], west)
    np.testing.assert_array_equal(load["south"], south)
    np.testing.assert_array_equal(load["north"], north)
    assert routes.max_link_load == 50  # no two lanes share a link
    assert routes.total_byte_hops == 50 * (7 + 8) + 15 * (7 + 8) + 90 * 2
    assert routes.longest_route_hops == 8
    assert [(e["src"], e["dst"], e["bytes"], e["hops"], e["lanes"]) for e in routes.edges] == [
        ("a", "b", 100, 8, 2),
        ("b", "a", 30, 8, 2),
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
    routes = route_xy(placed(a, b, c), flows, mesh)
    # Lane i of a -> b runs from (i, 9) east to col 984 + i * 10 // 300 (b's diagonal), then south to row
    # 450 + i. The longest is lane 299: 984 + 450 hops. Lane 150 steps aside (2 hops) at (150, 500).
    assert routes.longest_route_hops == (993 - 9) + 450
    assert sum(int(x.sum()) for x in routes.link_load.values()) == routes.total_byte_hops
    # Lanes 0..29 go down column 984, past its dead PE at row 440; lane 150 meets the one on its row.
    assert routes.edges[0]["lanes"] == 300 and routes.edges[0]["rerouted"] == 31
    # Each of b's 10 columns carries 30 lanes of 10 kB down to b.
    assert routes.max_link_load == 300_000
    for r, col in mesh.dead:
        assert routes.link_load["east"][r, col - 1] == routes.link_load["east"][r, col] == 0
        assert routes.link_load["south"][r - 1, col] == routes.link_load["south"][r, col] == 0


# ----------------------------------------------------------------------------- congestion router, colors


def lane_nodes(path: np.ndarray) -> list[tuple[int, int]]:
    nodes = [tuple(path[0])]
    for a, b in zip(path[:-1], path[1:], strict=True):
        step = np.sign(b - a)
        for i in range(1, int(np.abs(b - a).sum()) + 1):
            nodes.append(tuple(a + step * i))
    return nodes


def test_congestion_router_spreads_a_bundle_that_xy_funnels() -> None:
    # a (rows 0-3) sends east to b (rows 6-9, one column wide): XY sends all 4 lanes down b's column.
    mesh = Mesh(12, 20)
    p = placed(Rect("a", 0, 0, 2, 4), Rect("b", 16, 6, 1, 4))
    flows = [Flow("a", "b", 400)]
    xy = route_xy(p, flows, mesh)
    cg = route_congestion_aware(p, flows, mesh)
    assert xy.max_link_load == 400  # every lane shares column 16 between rows 3 and 6
    assert cg.max_link_load == 100  # staggered turns: one lane per link
    assert cg.total_byte_hops == xy.total_byte_hops  # no longer: Z shapes are still shortest paths
    assert cg.router == "congestion" and xy.router == "xy"
    assert cg.edges[0]["shape"] in ("zx", "zy")


def test_congestion_router_takes_a_flow_off_the_links_xy_stacks() -> None:
    # Four single-PE kernels on a 4 x 6 mesh: a at (0, 0) sends 100 B to b at (2, 4); c at (0, 1) sends 60 B
    # to d at (1, 4). XY runs both east along row 0 and then south down column 4, so the links (0, 1) -> (0, 4)
    # and (0, 4) -> (1, 4) carry both flows: 160 B. The congestion router routes the heavier a -> b first (XY)
    # and gives c -> d its YX shape (down column 1 to row 1, then east along row 1 to column 4), which shares
    # no link with it: the busiest link carries a -> b's 100 B alone. Both are shortest paths: the byte-hops
    # are 100 * 6 + 60 * 4 = 840 either way.
    p = placed(Rect("a", 0, 0, 1, 1), Rect("c", 1, 0, 1, 1), Rect("b", 4, 2, 1, 1), Rect("d", 4, 1, 1, 1))
    flows = [Flow("a", "b", 100), Flow("c", "d", 60)]
    mesh = Mesh(4, 6)
    xy, cg = route_xy(p, flows, mesh), route_congestion_aware(p, flows, mesh)
    assert xy.max_link_load == 160 and xy.link_load["east"][0, 1:4].tolist() == [160] * 3
    assert xy.link_load["south"][0, 4] == 160
    assert cg.max_link_load == 100
    assert [e["shape"] for e in cg.edges] == ["xy", "yx"]
    assert cg.link_load["south"][0, 1] == 60 and cg.link_load["east"][1, 1:4].tolist() == [60] * 3
    assert cg.total_byte_hops == xy.total_byte_hops == 840
    assert len(set(cg.colors.values())) == 1 < len(set(xy.colors.values()))  # sharing no link: one color


def test_both_routers_conserve_bytes_and_avoid_dead_pes_among_scattered_defects() -> None:
    rng = np.random.default_rng(3)
    mesh = Mesh(30, 30, frozenset({(int(r), int(c)) for r, c in rng.integers(0, 30, (12, 2))}) - {(0, 0)})
    rects = [Rect("a", 0, 0, 4, 5), Rect("b", 20, 2, 5, 4), Rect("c", 8, 20, 6, 3), Rect("d", 22, 22, 3, 6)]
    rects = [r for r in rects]
    flows = [Flow("a", "b", 5000), Flow("b", "c", 3000), Flow("c", "d", 7000), Flow("a", "d", 999)]
    p = placed(*rects)
    dead_free = Mesh(30, 30, frozenset(pe for pe in mesh.dead if not any(
        r.y <= pe[0] < r.y + r.h and r.x <= pe[1] < r.x + r.w for r in rects)))
    xy, cg = route_xy(p, flows, dead_free), route_congestion_aware(p, flows, dead_free)
    for routes in (xy, cg):
        assert sum(int(x.sum()) for x in routes.link_load.values()) == routes.total_byte_hops
        for f in flows:
            for path in routes.paths[f.src, f.dst]:
                assert not any(n in dead_free.dead for n in lane_nodes(path))


def test_router_on_obstacles_goes_around_a_wall() -> None:
    # A wall of dead PEs in column 5, rows 0-6, between a and b: every lane must go below it.
    wall = frozenset((r, 5) for r in range(7))
    mesh = Mesh(10, 10, wall)
    p = placed(Rect("a", 0, 0, 2, 3), Rect("b", 8, 0, 2, 3))
    for router in (route_xy, route_congestion_aware):
        routes = router(p, [Flow("a", "b", 30)], mesh)
        assert routes.edges[0]["rerouted"] == 3
        for path in routes.paths["a", "b"]:
            nodes = lane_nodes(path)
            assert not set(nodes) & wall and nodes[-1][1] in (8, 9)  # inside b
            assert max(r for r, _ in nodes) >= 7
        assert sum(int(x.sum()) for x in routes.link_load.values()) == routes.total_byte_hops


def test_lane_end_on_a_dead_pe_moves_to_a_working_one() -> None:
    mesh = Mesh(6, 10, frozenset({(0, 1), (2, 8)}))  # a's right column, row 0; b's left column, row 2
    routes = route_congestion_aware(placed(Rect("a", 0, 0, 2, 3), Rect("b", 8, 0, 2, 3)), [Flow("a", "b", 9)], mesh)
    for path in routes.paths["a", "b"]:
        nodes = lane_nodes(path)
        assert nodes[0] not in mesh.dead and nodes[-1] not in mesh.dead
        assert 0 <= nodes[0][1] <= 1 and 8 <= nodes[-1][1] <= 9


def test_flows_sharing_a_link_get_different_colors_within_the_limit() -> None:
    # Three sources in a row all send east to one sink: their lanes share the links of row 2 into it.
    p = placed(Rect("a", 0, 2, 1, 1), Rect("b", 1, 2, 1, 1), Rect("c", 2, 2, 1, 1), Rect("z", 6, 2, 1, 1),
               Rect("q", 0, 8, 1, 1), Rect("r", 3, 8, 1, 1))
    flows = [Flow("a", "z", 10), Flow("b", "z", 10), Flow("c", "z", 10), Flow("q", "r", 5)]
    routes = route_xy(p, flows, Mesh(10, 8), colors=3)
    c = routes.colors
    assert len({c["a", "z"], c["b", "z"], c["c", "z"]}) == 3
    assert all(0 <= v < 3 for v in c.values())
    assert c["q", "r"] == 0  # shares nothing: the first color again
    assert [e["color"] for e in routes.edges] == [c[f.src, f.dst] for f in flows]
    with pytest.raises(WscError, match=r"flow . -> z cannot be given a color: .* all 2 routable colors"):
        route_xy(p, flows, Mesh(10, 8), colors=2)


def test_route_pass_router_option_and_unknown_router(small_target) -> None:
    from conftest import tiny_gpt

    from wsc.passes.route import Route
    from wsc.pipeline import compile_model

    model, inputs = tiny_gpt(layers=1)
    program = compile_model(model, inputs, small_target, time_limit=0.5).program
    assert Route().router == "congestion"
    assert all(layer.routes.router == "congestion" for layer in program.layers)
    program = Route(router="xy")(program)
    assert all(layer.routes.router == "xy" for layer in program.layers)
    with pytest.raises(WscError, match="unknown router 'manhattan'"):
        Route(router="manhattan")(program)
    with pytest.raises(WscError, match="unknown router"):
        route(placed(), [], Mesh(2, 2), "manhattan")


def test_route_json_lists_every_lane() -> None:
    routes = route_congestion_aware(placed(Rect("a", 0, 0, 1, 2), Rect("b", 4, 0, 1, 2)), [Flow("a", "b", 4)],
                                    Mesh(3, 5))
    j = route_json(routes, 0)
    assert j == {"router": "congestion", "color": 0, "lanes": 2, "hops": 4,
                 "paths": [[[0, 0], [0, 4]], [[1, 0], [1, 4]]]}
