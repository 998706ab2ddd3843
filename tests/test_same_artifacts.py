"""benchmarks/same_artifacts.py: two compiles are the same outside the keys that measure the run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load():
    spec = importlib.util.spec_from_file_location("same_artifacts", ROOT / "benchmarks" / "same_artifacts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measured_keys_are_ignored_and_everything_else_is_compared(tmp_path: Path) -> None:
    same = load()
    report = {"timings": {"total": 1.0}, "memory": {"peak_rss_bytes": 5, "streamed_bytes": 10},
              "placement": {"solver": {"seconds": 0.1, "status": "OPTIMAL"}, "pes_used": 40},
              "runtime": {"kernel_cache": {"hits": 0}}, "verification": {"max_abs_err": 2e-6}}
    rerun = json.loads(json.dumps(report))
    rerun["timings"]["total"] = 9.0
    rerun["memory"]["peak_rss_bytes"] = 6
    rerun["placement"]["solver"]["seconds"] = 3.0
    rerun["runtime"]["kernel_cache"]["hits"] = 4
    assert same.differences(report, rerun) == []
    changed = json.loads(json.dumps(rerun))
    changed["placement"]["pes_used"] = 41
    changed["verification"]["max_abs_err"] = 3e-6
    changed["memory"]["streamed_bytes"] = 11
    changed["placement"]["solver"]["status"] = "FEASIBLE"
    assert sorted(same.differences(report, changed)) == [
        "memory.streamed_bytes: 10 before, 11 after",
        "placement.pes_used: 40 before, 41 after",
        "placement.solver.status: 'OPTIMAL' before, 'FEASIBLE' after",
        "verification.max_abs_err: 2e-06 before, 3e-06 after",
    ]
    for folder, doc in (("a", report), ("b", changed)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "report.json").write_text(json.dumps(doc))
        (tmp_path / folder / "placement.json").write_text(json.dumps({"layers": [{"x": 1}]}))
    assert same.main([str(tmp_path / "a"), str(tmp_path / "a")]) == 0
    assert same.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1


def test_where_the_model_file_lay_is_ignored_and_the_rest_of_origin_compared() -> None:
    same = load()
    before = {"origin": {"model_file": "/tmp/before/examples/cerebras_gpt.py", "argv": ["compile", "m.py"]}}
    after = {"origin": {"model_file": "/work/examples/cerebras_gpt.py", "argv": ["compile", "m.py"]}}
    assert same.differences(before, after) == []
    after["origin"]["argv"] = ["compile", "m.py", "--seed", "1"]
    assert same.differences(before, after) == ["origin.argv: 2 items before, 4 after"]
