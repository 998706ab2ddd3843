"""The same model, target, options and seed give byte-identical placement.json, program.json and its reference, and
report.json identical outside the keys that measure the run (wsc.artifacts.report.MEASURED), in two processes with
different string hashing.

CP-SAT is what could differ: it is run with the compile's seed, one worker and a deterministic time limit (the
solver's own work count), which the second test checks is what it is given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from wsc import api
from wsc.artifacts.report import MEASURED, without_measured
from wsc.passes.placers import cpsat

MODEL = Path(__file__).parent / "models" / "tiny_gpt.py"
ROOT = Path(__file__).resolve().parent.parent


def compile_in(out: Path, hash_seed: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    env.pop("WSC_PROGRESS", None)
    return subprocess.Popen([sys.executable, "-m", "wsc.cli", "compile", str(MODEL), "--target", "mesh-16x16",
                             "--out", str(out), "--time-limit", "0.5", "--seed", "3"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_with_different_hash_seeds_write_the_same_artifacts(tmp_path: Path) -> None:
    outs = [tmp_path / "hash-0", tmp_path / "hash-12345"]
    runs = [compile_in(out, seed) for out, seed in zip(outs, ("0", "12345"), strict=True)]
    for run in runs:
        stdout, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr
    for name in ("placement.json", "program.json", "reference.safetensors"):
        first, second = ((out / name).read_bytes() for out in outs)
        assert first == second, name
    reports = [json.loads((out / "report.json").read_text()) for out in outs]
    assert reports[0]["verification"]["status"] == "pass"
    for report in reports:  # what is left out is there to leave out, so the comparison is not vacuous
        assert all(report[path[0]] is not None for path in MEASURED)
    # Key order included: the files are the same bytes outside the measured keys.
    same = [json.dumps(without_measured(report), indent=2) for report in reports]
    assert same[0] == same[1]
    # origin records the invocation without its --out, so two folders hold the same origin.
    assert reports[0]["origin"] == reports[1]["origin"] and str(outs[0]) not in json.dumps(reports[0]["origin"])


def test_cpsat_runs_with_the_compile_s_seed_one_worker_and_a_deterministic_limit(monkeypatch) -> None:
    seen = []
    real_solve = cpsat.cp_model.CpSolver.solve

    def solve(self, model, *args, **kwargs):
        p = self.parameters
        seen.append((p.random_seed, p.num_workers, p.max_deterministic_time))
        return real_solve(self, model, *args, **kwargs)

    monkeypatch.setattr(cpsat.cp_model.CpSolver, "solve", solve)
    model, inputs = __import__("conftest").tiny_gpt(layers=1)
    api.compile(model, inputs, "mesh-16x16", verify=False, time_limit=0.4, seed=3)
    assert seen and set(seen) == {(3, 1, 0.2)}  # half the limit for each of the two stages


def test_without_measured_drops_those_keys_and_keeps_every_other_in_order() -> None:
    report = {"schema": 1, "timings": {"total": 1.0}, "placement": {"pes_used": 4, "solver": {"status": "OPTIMAL",
              "seconds": 0.3}}, "memory": {"peak_rss_bytes": 9, "streamed_bytes": 2}, "runtime": {"host_cpu": "x",
              "kernel_cache": {"hits": 1}}, "layers": [{"timings": 1}]}
    assert without_measured(report) == {"schema": 1, "placement": {"pes_used": 4, "solver": {"status": "OPTIMAL"}},
                                        "memory": {"streamed_bytes": 2}, "runtime": {"host_cpu": "x"},
                                        "layers": [{"timings": 1}]}
    assert list(without_measured(report)) == ["schema", "placement", "memory", "runtime", "layers"]
