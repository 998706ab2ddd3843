"""Placers and routers are plug-ins: one registered in a file of its own runs as the place or route pass and
gives a legal, routed mapping; each registry refuses a taken name and an unknown one, in one place; and the
CP-SAT placer's four steps, run by hand, give what the strategy gives."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import tiny_gpt

from wsc.artifacts.check import check_output
from wsc.artifacts.report import placement_json
from wsc.core.errors import WscError
from wsc.core.mesh import Flow, KernelRect, Mesh, mesh_of
from wsc.passes import placers, routers
from wsc.passes.place import STRATEGIES, Place, check_placement, place, scattered_density
from wsc.passes.placers import PlaceRequest, cpsat
from wsc.passes.route import ROUTERS, Route, route
from wsc.pipeline import compile_model
from wsc.targets import load_target

FIXTURES = Path(__file__).resolve().parent / "plugin_fixtures"


def load(name: str) -> None:
    spec = importlib.util.spec_from_file_location(f"plugin_fixture_{name}", FIXTURES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


@pytest.fixture
def plugins():
    """tests/plugin_fixtures/columns.py and yx.py registered for one test, then removed again."""
    load("columns")
    load("yx")
    yield
    placers.unregister("columns-fixture")
    routers.unregister("yx-fixture")


@pytest.fixture(scope="module")
def faulty_program():
    """The tiny GPT mapped on mesh-64x64 (1% dead PEs, a dead row and a dead column)."""
    model, inputs = tiny_gpt(layers=1, seq=8)
    return compile_model(model, inputs, load_target("mesh-64x64"), strategy="greedy").program


def test_a_placer_and_a_router_in_one_file_each_map_a_model_legally(plugins, faulty_program, tmp_path) -> None:
    assert placers.names()[-1] == "columns-fixture" and routers.names()[-1] == "yx-fixture"
    program = Route(router="yx-fixture")(Place(strategy="columns-fixture")(faulty_program))
    mesh = mesh_of(program.target)
    density = scattered_density(mesh)
    for layer in program.layers:
        assert layer.placement.strategy == "columns-fixture"
        kernels = [Place.kernel_rect(n, plan.h, plan.w, mesh, density) for n, plan in layer.kernels.items()]
        assert check_placement(layer.placement, kernels, mesh) == []
        assert layer.placement.rects != faulty_program.layers[layer.index].placement.rects  # really re-placed
        assert layer.routes.router == "yx-fixture"
        assert [(e["src"], e["dst"]) for e in layer.routes.edges] == [(f.src, f.dst) for f in layer.flows]
        assert {e["shape"] for e in layer.routes.edges} == {"yx"}
    # The independent checker (wsc check) finds every kernel legal and every edge routed.
    (tmp_path / "placement.json").write_text(json.dumps(placement_json(program)))
    assert check_output(tmp_path) == []


def test_each_registry_refuses_a_taken_name() -> None:
    with pytest.raises(ValueError, match="placement strategy 'greedy' is already registered"):
        placers.register("greedy")(lambda request: place(request.kernels, [], request.mesh, "row-major"))
    with pytest.raises(ValueError, match="router 'xy' is already registered"):
        routers.register("xy")(lambda request: route(request.placement, [], request.mesh, "congestion"))
    # The built-in ones are untouched, and registering the same one again is harmless (a module reloaded).
    assert placers.register("greedy")(placers.get("greedy")) is placers.get("greedy")
    assert placers.get("greedy").__module__ == "wsc.passes.placers.greedy"
    assert routers.get("xy").__module__ == "wsc.passes.routers.xy"


def test_the_names_are_the_registries_in_their_fixed_order() -> None:
    assert STRATEGIES == placers.names() == ("cpsat", "greedy", "row-major", "snake", "random", "anneal")
    assert ROUTERS == routers.names() == ("congestion", "xy")


def test_an_unknown_name_is_refused_by_the_registry_wherever_it_is_used(faulty_program) -> None:
    want = "unknown placement strategy 'best'; use one of cpsat, greedy, row-major, snake, random, anneal"
    for attempt in (lambda: placers.get("best"), lambda: Place(strategy="best")(faulty_program),
                    lambda: place([KernelRect("a", 1, 1)], [], Mesh(2, 2), "best")):
        with pytest.raises(WscError, match=want):
            attempt()
    for attempt in (lambda: routers.get("manhattan"), lambda: Route(router="manhattan")(faulty_program)):
        with pytest.raises(WscError, match="unknown router 'manhattan'; use one of congestion, xy"):
            attempt()


def test_the_cpsat_steps_by_hand_give_the_strategy_s_answer() -> None:
    mesh = Mesh(12, 12, frozenset({(3, 3), (8, 1)}))
    kernels = [KernelRect("a", 3, 2), KernelRect("b", 2, 4, pes=7), KernelRect("c", 4, 1)]
    flows = [Flow("a", "b", 300), Flow("b", "c", 120), Flow("c", "a", 7)]
    start, name = cpsat.best_hint(kernels, flows, mesh, seed=2)
    assert start is not None and name in ("greedy", "row-major", "snake", "anneal")
    model = cpsat.build(kernels, flows, mesh, keep=start)
    assert set(model.xs) == {"a", "b", "c"} and set(model.pairs) == {("a", "b"), ("b", "c"), ("a", "c")}
    # A kernel with spare PEs puts dead PEs in position tables; b may cover one dead PE anywhere: no table.
    assert set(model.tables) == {"a", "c"}
    cpsat.hint(model, start)
    solver, status, stage_one = cpsat.solve_in_stages(model, seed=2, workers=1, time_limit=1.0)
    by_hand = cpsat.read(model, solver, status, start, flows, 1.0, stage_one)
    strategy = place(kernels, flows, mesh, "cpsat", seed=2, time_limit=1.0)
    assert (by_hand.rects, by_hand.status, by_hand.objective, by_hand.best_bound) == \
        (strategy.rects, strategy.status, strategy.objective, strategy.best_bound)
    assert by_hand == cpsat.place_cpsat(PlaceRequest(kernels, flows, mesh, seed=2, time_limit=1.0))


def test_a_registered_placer_and_router_are_compile_options_and_compile_end_to_end(plugins) -> None:
    import wsc

    model, inputs = tiny_gpt(layers=1, seq=8)
    compiled = wsc.compile(model, inputs, "mesh-16x16", strategy="columns-fixture", router="yx-fixture",
                           time_limit=0.3)
    assert compiled.report["placement"]["strategy"] == "columns-fixture"
    assert compiled.report["placement"]["router"] == "yx-fixture"
    assert compiled.report["verification"]["status"] == "pass"
    with pytest.raises(WscError, match="unknown placement strategy 'columns'"):
        wsc.CompileOptions(strategy="columns")
