"""Faulty wafers at every defect rate: random dead PEs at 0.1%, 1% and 5%, and a dead row and column, on a small
mesh (mesh-64x64 without its own defect map), and the worst of them (5% with the dead row and column) on cs2-sim.
Every compile keeps its tiles off dead PEs (`wsc check` proves placement.json legal), routes every lane around
them, verifies against eager PyTorch, and reports its step against the same compile on the wafer without defects
(report.json's `simulation.defects`). A wafer whose defects leave too few PEs is one line saying how many are
needed, left and missing."""

from __future__ import annotations

import dataclasses
import re
from importlib import resources
from pathlib import Path

import pytest
from conftest import MODELS, tiny_gpt

import wsc
from wsc.artifacts.check import check_output
from wsc.cli import main
from wsc.core.mesh import mesh_of
from wsc.targets import Target, load_target

RATES = (0.001, 0.01, 0.05)
LINES = "dead_rows: [9], dead_cols: [40]"  # a dead row and column: they cut a strip of the mesh off


def faulty(tmp: Path, base: str, defects: str) -> Target:
    """A copy of the packaged target `base` with `defects` in place of its own defect map."""
    text = resources.files("wsc.targets").joinpath(f"{base}.yaml").read_text(encoding="utf-8")
    text = re.sub(r"(?ms)^defects:.*?(?=^\S|\Z)", "", text)
    path = tmp / f"{base}-{len(list(tmp.iterdir()))}.yaml"
    path.write_text(f"{text}\ndefects: {{{defects}}}\n", encoding="utf-8")
    return load_target(str(path))


def compiles(tmp: Path, base: str, cases: dict[str, str]) -> dict[str, tuple[Target, wsc.CompiledModel]]:
    """Each case compiled (and verified) on `base` with its defects, and `clean`: the first case's target without
    its defects, compiled apart, to hold the report's perfect-wafer step to."""
    model, inputs = tiny_gpt(layers=1)
    out = {}
    for name, defects in cases.items():
        target = faulty(tmp, base, defects)
        out[name] = target, wsc.compile(model, inputs, target=target, time_limit=0.1)
    clean = dataclasses.replace(out[next(iter(cases))][0], dead_pes=frozenset())
    out["clean"] = clean, wsc.compile(model, inputs, target=clean, time_limit=0.1, verify=False)
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cases = {f"rate {r}": f"rate: {r}, seed: 0" for r in RATES} | {"row and column": LINES}
    return compiles(tmp_path_factory.mktemp("small"), "mesh-64x64", cases)


@pytest.fixture(scope="module")
def wafer(tmp_path_factory):
    # cs2-sim compiles take seconds each (twice: the faulty wafer and the perfect one it is weighed against), so
    # the wafer gets the worst case only: the 5% rate carrying the dead row and column too. The lower rates run
    # the same code (placement around dead PEs, rerouting, the defects summary) on the small mesh above.
    cases = {"rate 0.05, row and column": f"rate: 0.05, seed: 0, {LINES}"}
    return compiles(tmp_path_factory.mktemp("wafer"), "cs2-sim", cases)


def faulty_cases(compiled):
    return [(name, target, c) for name, (target, c) in compiled.items() if name != "clean"]


def lanes_on_dead(program) -> int:
    """Lanes of any routed flow with a leg over a dead (or cut-off) PE, counted by plain slices."""
    dead = mesh_of(program.target).dead_grid
    bad = 0
    for layer in program.layers:
        for paths in layer.routes.paths.values():
            for path in paths:
                legs = zip(path[:-1].tolist(), path[1:].tolist(), strict=True)
                bad += any(dead[min(ra, rb): max(ra, rb) + 1, min(ca, cb): max(ca, cb) + 1].any()
                           for (ra, ca), (rb, cb) in legs)
    return bad


@pytest.mark.parametrize("mesh", ["small", "wafer"])
def test_tiles_avoid_dead_pes_and_routes_go_around_them(mesh, request, tmp_path) -> None:
    rerouted = 0
    for name, target, compiled in faulty_cases(request.getfixturevalue(mesh)):
        program = compiled.program
        dead = mesh_of(target).dead_grid
        assert target.dead_pes and dead.sum() >= len(target.dead_pes), name
        for layer in program.layers:
            for kernel in layer.kernels:
                pes = program.tile_pes(layer, kernel)
                assert not dead[pes[:, 1], pes[:, 0]].any(), (name, layer.name, kernel)
        assert lanes_on_dead(program) == 0, name
        rerouted += sum(e["rerouted"] for layer in program.layers for e in layer.routes.edges)
        folder = tmp_path / name.replace(" ", "_")
        compiled.save(folder)
        assert check_output(folder) == [], name
    assert rerouted > 0  # dead PEs stood in the way of some lanes, which went around them


@pytest.mark.parametrize("mesh", ["small", "wafer"])
def test_verification_passes(mesh, request) -> None:
    for name, _, compiled in faulty_cases(request.getfixturevalue(mesh)):
        assert compiled.report["verification"]["status"] == "pass", name


@pytest.mark.parametrize("mesh", ["small", "wafer"])
def test_the_report_weighs_the_step_against_the_perfect_wafer(mesh, request) -> None:
    compiled = request.getfixturevalue(mesh)
    perfect = compiled["clean"][1].report
    assert perfect["simulation"]["defects"] is None  # nothing to weigh on a wafer without defects
    for name, target, c in faulty_cases(compiled):
        sim = c.report["simulation"]
        d = sim["defects"]
        assert d["dead_pes"] == len(target.dead_pes) and d["dead_share"] == len(target.dead_pes) / (
            target.rows * target.cols), name
        assert d["cut_off_pes"] == len(mesh_of(target).dead) - len(target.dead_pes), name
        assert (d["cut_off_pes"] > 0) == ("row" in name), name
        assert d["perfect_step_seconds"] == perfect["simulation"]["step_seconds"], name
        assert d["slowdown"] == pytest.approx(sim["step_seconds"] / d["perfect_step_seconds"]), name


def test_the_summary_prints_the_slowdown(tmp_path, capsys) -> None:
    target = tmp_path / "faulty.yaml"
    text = resources.files("wsc.targets").joinpath("mesh-16x16.yaml").read_text(encoding="utf-8")
    target.write_text(text + "defects: {rate: 0.05, seed: 0, dead_cols: [12]}\n", encoding="utf-8")
    assert main(["compile", str(MODELS / "tiny_gpt.py"), "--target", str(target), "--out", str(tmp_path / "out"),
                 "--time-limit", "0.1", "--no-verify"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  defects ")]
    assert len(lines) == 1 and re.fullmatch(r"  defects       \d+\.\d% of PEs dead \(\d+, \d+ more cut off\): step "
                                            r"\d+\.\d\dx the perfect wafer's", lines[0]), lines


def test_too_few_pes_left_is_one_line_with_the_count(tmp_path, capsys) -> None:
    target = tmp_path / "ruined.yaml"
    text = resources.files("wsc.targets").joinpath("mesh-64x64.yaml").read_text(encoding="utf-8")
    target.write_text(re.sub(r"(?ms)^defects:.*", "defects: {rate: 0.8, seed: 0}\n", text), encoding="utf-8")
    assert main(["compile", str(MODELS / "tiny_gpt.py"), "--target", str(target), "--out", str(tmp_path / "out"),
                 "--time-limit", "0.1", "--no-verify"]) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and len(err[0]) < 160, err
    needed, left, missing = (int(n) for n in re.fullmatch(
        r"error: too few PEs left on mesh-64x64: layer \S+ needs (\d+) \(its \d+ tiles at a 65% share\), (\d+) are "
        r"left, (\d+) missing; use fewer defects or a smaller model", err[0]).groups())
    assert needed - left == missing > 0
    assert left == 64 * 64 - len(mesh_of(load_target(str(target))).dead)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("rate", "fill"), [(0.01, 0.65), (0.05, 0.5)])
def test_spare_rows_give_way_when_they_take_the_room(rate, fill, tmp_path) -> None:
    """On mesh-16x16 a few dead PEs gave the embedding's three 10 x 4 kernels two spare rows each, and three
    10 x 6 rectangles do not fit 16 rows: fewer spare rows (down to none, clear of dead PEs) place them."""
    model, inputs = tiny_gpt()
    target = faulty(tmp_path, "mesh-16x16", f"rate: {rate}, seed: 0")
    compiled = wsc.compile(model, inputs, target=target, time_limit=0.1, verify=False)
    compiled.save(tmp_path / "out")
    assert check_output(tmp_path / "out") == []
    assert compiled.report["placement"]["fill"] == fill  # both refused every share before
