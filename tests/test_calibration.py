"""benchmarks/calibration.py without compiles: the measurements file, the fit on synthetic predictions, leave-one-out,
the target section it prints, and the doc's links."""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("calibration", ROOT / "benchmarks" / "calibration.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cal = _load()


@dataclass(frozen=True)
class Row:
    id: str
    batch: int
    samples_per_second: float
    compute: float  # seconds of a step that scale with 1 / efficiency
    other: float  # seconds of a step that do not


def model(rows, e, c):
    """A step of compute / e + other + c seconds."""
    return [r.batch / (r.compute / e + r.other + c) for r in rows]


def measured_rows(e, c, shapes):
    return [Row(name, batch, model([Row(name, batch, 1.0, a, b)], e, c)[0], a, b)
            for name, batch, a, b in shapes]


SHAPES = [("a", 120, 1.2, 0.9), ("b", 112, 0.05, 0.02), ("c", 1024, 0.08, 0.10)]


def test_the_runs_file_holds_the_measurements_each_with_its_source():
    runs = cal.load_runs()
    expected = {"gptj": (43.7, 120, 2048, 2, "cs2-sim", True), "gpt2": (494.5, 112, 2048, 1, "cs2-sim", True),
                "bert": (4048, 1024, 128, 1, "cs2-sim", True), "cs3": (44.8, 120, 2048, 1, "cs3-sim", False)}
    assert {r.id for r in runs.runs} == set(expected)
    for run in runs.runs:
        rate, batch, seq, systems, target, fitted = expected[run.id]
        assert (run.samples_per_second, run.batch, run.seq, run.systems, run.target, run.fit) == (
            rate, batch, seq, systems, target, fitted)
        assert run.source["repo"] and run.source["path"] and run.source["dated"] and run.source["read"]
        assert run.example and run.args
    assert runs.release == "2.0.3"
    assert all(r.release == "2.0.3" for r in runs.runs if r.fit)
    assert runs.by_id("gptj").args["vocab_size"] == 50257
    assert runs.by_id("gpt2").args["n_positions"] == 2048
    assert runs.reference["samples_per_second"] == 19.8 and runs.reference["source"]["repo"]
    assert [s["samples_per_second"] for s in runs.release_spread["runs"]] == [27.5, 33.9, 43.7]
    per_pass = {m["size"]: (m["batch"], m["systems"], m["per_pass"]) for m in runs.configurations["models"]}
    assert per_pass == {"111M": (120, 1, 120), "1.3B": (528, 4, 132), "13B": (720, 8, 90)}
    assert all(b == s * p for b, s, p in per_pass.values())


@pytest.mark.parametrize("e, c", [(0.6, 0.05), (1.0, 0.0), (0.35, 0.2)])
def test_the_fit_recovers_known_constants(e, c):
    rows = measured_rows(e, c, SHAPES)
    fitted = cal.fit(rows, model)
    assert fitted.efficiency == pytest.approx(e, rel=2e-3)
    assert fitted.step_seconds == pytest.approx(c, abs=1e-3)
    assert fitted.loss < 1e-6
    assert fitted.rows == ("a", "b", "c")


def test_the_fit_stays_in_its_box_and_prefers_the_ideal_machine_when_flat():
    fast = [Row("a", 100, 2 * model([Row("a", 100, 1, 1.0, 0.0)], 1.0, 0.0)[0], 1.0, 0.0)]  # twice as fast as e=1
    fitted = cal.fit(fast, model)
    assert (fitted.efficiency, fitted.step_seconds) == (1.0, 0.0)
    flat = measured_rows(1.0, 0.0, [("x", 64, 0.0, 0.5)])  # no compute: e changes nothing
    assert cal.fit(flat, model).efficiency == 1.0


def test_leave_one_out_fits_on_the_others_and_predicts_the_row_left_out():
    rows = measured_rows(0.6, 0.05, SHAPES)
    calls = []

    def spy(asked, e, c):
        calls.append(tuple(r.id for r in asked))
        return model(asked, e, c)

    out = cal.leave_one_out(rows, spy)
    assert [x.row for x in out] == ["a", "b", "c"]
    # The calls come as each left-out row's fit (only ever asking for the other rows), then its one prediction.
    segments, current = [], []
    for asked in calls:
        if len(asked) == 1:
            segments.append((current, asked[0]))
            current = []
        else:
            current.append(asked)
    assert [row for _, row in segments] == ["a", "b", "c"]
    for (fit_calls, row), x in zip(segments, out, strict=True):
        assert fit_calls and all(asked == tuple(r.id for r in rows if r.id != row) for asked in fit_calls)
        assert x.fit.rows == tuple(r.id for r in rows if r.id != row)
        left_out = next(r for r in rows if r.id == row)
        expected = model([left_out], x.fit.efficiency, x.fit.step_seconds)[0] / left_out.samples_per_second
        assert x.ratio == pytest.approx(expected)
    assert all(x.ratio == pytest.approx(1.0, abs=1e-3) for x in out)  # consistent data: each is predicted


def test_the_verdict_is_the_done_criterion():
    assert cal.verdict([1.0, 1.2, 0.8])[0]
    assert not cal.verdict([1.0, 1.6, 1.0])[0]  # one row beyond 1.5x
    assert not cal.verdict([1.3, 1.3, 1.0])[0]  # the median beyond 1.25x
    assert cal.verdict([0.5])[2] == 2.0 and cal.factor(0.8) == pytest.approx(1.25)


def test_the_printed_section_loads_as_a_target_calibration(tmp_path):
    from wsc.targets import load_target

    text = (ROOT / "targets" / "cs2-sim.yaml").read_text() + "\n" + cal.calibration_yaml(0.4321, 0.0789, "fitted")
    path = tmp_path / "calibrated.yaml"
    path.write_text(text)
    target = load_target(str(path))
    assert (target.compute_efficiency, target.step_overhead_seconds) == (0.4321, 0.0789)


def test_every_link_of_the_doc_names_a_section():
    model_sections = cal.headings(ROOT / "docs" / "performance-model.md")
    hardware_sections = cal.headings(ROOT / "docs" / "hardware.md")
    for _, _, model_anchor, hardware_anchor in cal.TERMS:
        assert model_anchor in model_sections
        assert hardware_anchor in hardware_sections
    assert "cs3-sim" in hardware_sections


def test_log_errors_are_symmetric():
    rows = [Row("a", 1, 10.0, 0, 0)]
    assert cal.log_errors(rows, [20.0])[0] == pytest.approx(-cal.log_errors(rows, [5.0])[0])
    assert cal.log_errors(rows, [0.0])[0] == math.inf


class FakeProgram:
    tokens = 120 * 2048

    def __init__(self, per_pass_boundary: bool):
        self.per_pass_boundary = per_pass_boundary


def test_the_predictor_estimates_once_per_efficiency_when_the_step_cost_adds_once(monkeypatch):
    calls = []

    def estimate_at(program, e, c, clock_hz=None):
        calls.append((e, c))
        step = 1.0 / e + 0.5 + (3 * c if program.per_pass_boundary else c)
        return {"training": {"step_seconds": step}}

    monkeypatch.setattr(cal, "estimate_at", estimate_at)
    for per_pass, expected_step in ((False, 1 / 0.5 + 0.5 + 0.2), (True, 1 / 0.5 + 0.5 + 0.6)):
        calls.clear()
        predictor = cal.Predictor({"gptj": cal.Compiled("gptj", FakeProgram(per_pass), 0.0, 120, 2048)})
        for c in (0.0, 0.1, 0.2):
            samples = predictor([Row("gptj", 120, 43.7, 0, 0)], 0.5, c)[0]
        assert samples == pytest.approx(120 / expected_step)
        if per_pass:  # not additive: every point re-estimated
            assert (0.5, 0.2) in calls
        else:  # the checks, then one estimate at e = 0.5, c = 0 serves every c
            assert all(c in (0.0, 0.25) for _, c in calls) and len(calls) == 4
