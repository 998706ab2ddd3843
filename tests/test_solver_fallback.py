"""CP-SAT without a solution: the compile keeps the best baseline placement, says so, and succeeds; a proof that
the rectangles cannot be packed stays a refusal.

The solver is kept from finding anything the deterministic way: it is not given the heuristic answer it
normally starts from (`cpsat.HINT_SOLVER`, a switch for tests) and has a deterministic time limit far too small
to find an arrangement by itself (CP-SAT then returns UNKNOWN).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsc.artifacts.check import check_output
from wsc.cli import main
from wsc.core.errors import DoesNotPlace
from wsc.core.mesh import Flow, KernelRect, Mesh, Placement, Rect
from wsc.passes.place import check_placement
from wsc.passes.placers import PlaceRequest, cpsat
from wsc.passes.placers.common import charged_cycles, wirelength

MODEL = Path(__file__).parent / "models" / "tiny_gpt.py"
TINY = 1e-3  # deterministic seconds: without the hint, CP-SAT finds no arrangement of these layers in it

# Six kernels of a chain on a 40 x 40 mesh: every heuristic packs them, CP-SAT alone needs more than TINY.
KERNELS = [KernelRect(f"k{i}", w, h) for i, (w, h) in enumerate([(9, 7), (12, 5), (6, 11), (10, 10), (4, 14),
                                                                   (13, 6)])]
FLOWS = [Flow(f"k{i}", f"k{i + 1}", 1000 * (i + 1)) for i in range(5)] + [Flow("k0", "k3", 700)]
MESH = Mesh(40, 40)
BASELINES = {"greedy", "row-major", "snake", "anneal", "random"}  # what cpsat.heuristic_answers runs


@pytest.fixture
def unhinted(monkeypatch):
    monkeypatch.setattr(cpsat, "HINT_SOLVER", False)


def test_no_solution_in_time_keeps_the_best_baseline(unhinted) -> None:
    answers = cpsat.heuristic_answers(KERNELS, FLOWS, MESH, 0)
    best, name = cpsat.best_hint(KERNELS, FLOWS, MESH, 0, found=answers)
    p = cpsat.place_cpsat(PlaceRequest(KERNELS, FLOWS, MESH, time_limit=TINY))
    assert (p.strategy, p.fallback, p.fallback_status) == ("cpsat", name, "UNKNOWN")
    assert p.status == f"UNKNOWN (no solution: {name}'s kept)"
    assert p.rects == best and p.wirelength == wirelength(best, FLOWS)
    assert (p.best_bound, p.gap) == (0.0, 1.0)  # nothing proved
    assert check_placement(p, KERNELS, MESH) == []


def test_with_the_hint_or_time_to_search_cpsat_answers_itself(unhinted) -> None:
    searched = cpsat.place_cpsat(PlaceRequest(KERNELS, FLOWS, MESH, time_limit=2.0))
    assert searched.fallback == "" and searched.status in ("OPTIMAL", "FEASIBLE")
    cpsat.HINT_SOLVER = True  # the monkeypatch puts it back
    hinted = cpsat.place_cpsat(PlaceRequest(KERNELS, FLOWS, MESH, time_limit=0.05))
    assert hinted.fallback == "" and hinted.status in ("OPTIMAL", "FEASIBLE", "FEASIBLE (kept hint)")


def test_the_baseline_kept_is_the_one_that_routes_best() -> None:
    kernels = [KernelRect("a", 2, 2), KernelRect("b", 2, 2)]
    flows = [Flow("a", "b", 4000)]
    far = {"a": Rect("a", 0, 0, 2, 2), "b": Rect("b", 30, 30, 2, 2)}
    near = {"a": Rect("a", 0, 0, 2, 2), "b": Rect("b", 2, 0, 2, 2)}
    kept = Placement(far, "cpsat", cpsat.fallen_back("UNKNOWN", "row-major"), 0.0, 0.0, 1.0, 0, 0.0,
                     fallback="row-major", fallback_status="UNKNOWN")
    request = PlaceRequest(kernels, flows, MESH, router="xy")
    p = cpsat.routed_choice(kept, {"row-major": far, "greedy": near}, request)
    assert (p.rects, p.fallback, p.fallback_status) == (near, "greedy", "UNKNOWN")
    assert p.status == "UNKNOWN (no solution: greedy's kept)" and p.wirelength == wirelength(near, flows)
    assert p.objective == charged_cycles(near, flows, request.link_bytes_per_cycle, request.hop_latency_cycles)


def test_the_second_stage_finding_nothing_keeps_the_first_stage_s_answer(monkeypatch) -> None:
    """Half the limit goes to each stage: the wirelength stage finding nothing is no fallback to a baseline."""
    real_solve, calls = cpsat.solve, []

    def second_finds_nothing(m, *, seed, workers, time_limit):
        calls.append(time_limit)
        return real_solve(m, seed=seed, workers=workers, time_limit=time_limit if len(calls) == 1 else 1e-9)

    monkeypatch.setattr(cpsat, "solve", second_finds_nothing)
    p = cpsat.place_cpsat(PlaceRequest(KERNELS, FLOWS, MESH, time_limit=1.0))
    assert len(calls) == 2 and p.fallback == "" and not p.status.startswith("UNKNOWN")
    assert check_placement(p, KERNELS, MESH) == []


def test_a_proof_that_nothing_fits_stays_a_refusal(unhinted) -> None:
    # 9 + 4 of 16 PEs, but a 3 x 3 and a 2 x 2 rectangle never share a 4 x 4 mesh: no heuristic places them,
    # and CP-SAT proves it.
    kernels = [KernelRect("a", 3, 3), KernelRect("b", 2, 2)]
    assert cpsat.heuristic_answers(kernels, [], Mesh(4, 4), 0) == {}
    with pytest.raises(DoesNotPlace, match="CP-SAT proved that no non-overlapping arrangement exists"):
        cpsat.place_cpsat(PlaceRequest(kernels, [], Mesh(4, 4), time_limit=1.0))


def test_no_solution_and_no_baseline_is_a_refusal_that_says_so(unhinted, monkeypatch) -> None:
    monkeypatch.setattr(cpsat, "heuristic_answers", lambda *args: {})
    with pytest.raises(DoesNotPlace, match="neither CP-SAT in 0.001 s nor a heuristic found an arrangement"):
        cpsat.place_cpsat(PlaceRequest(KERNELS, FLOWS, MESH, time_limit=TINY))


def test_a_compile_without_a_solution_falls_back_says_so_and_verifies(unhinted, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["compile", str(MODEL), "--target", "mesh-16x16", "--out", str(out), "--time-limit", str(TINY)])
    summary = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    solver = report["placement"]["solver"]
    assert solver["fallback"] in BASELINES and solver["fallback_status"] == "UNKNOWN"
    assert solver["fallback_layers"] and set(solver["fallback_layers"]) <= {
        layer["name"] for layer in json.loads((out / "placement.json").read_text())["layers"]}
    assert report["placement"]["strategy"] == "cpsat" and solver["status"].startswith("UNKNOWN (no solution")
    placement_line = next(line for line in summary.splitlines() if line.strip().startswith("placement"))
    assert f"cpsat fell back to {solver['fallback']} (CP-SAT returned UNKNOWN, no solution" in placement_line
    assert check_output(out) == []
    assert main(["check", str(out)]) == 0
    assert report["verification"]["status"] == "pass"


def test_a_compile_with_a_solution_reports_no_fallback(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["compile", str(MODEL), "--target", "mesh-16x16", "--out", str(out), "--time-limit", "0.5",
                 "--no-verify"]) == 0
    summary = capsys.readouterr().out
    solver = json.loads((out / "report.json").read_text())["placement"]["solver"]
    assert (solver["fallback"], solver["fallback_status"], solver["fallback_layers"]) == (None, None, [])
    assert "fell back" not in summary
