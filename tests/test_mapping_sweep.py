"""benchmarks/mapping_strategies.py: the same rows through the process pool and Ray, a sweep stopped by Ctrl-C
and resumed runs every cell exactly once, and the table and relative columns from a hand-made cells.csv."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "benchmarks"))  # the pool's workers inherit it, to import mapping_sweep

import mapping_strategies  # noqa: E402
from mapping_sweep import cells  # noqa: E402

# The tiny GPT (12 tokens) on the 16 x 16 mesh: about a second a cell.
TINY = ["--models", "tiny-gpt@12", "--targets", "mesh-16x16", "--time-limit", "0.3"]


def rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "cells.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def without_timings(table: list[dict[str, str]]) -> list[dict[str, str]]:
    kept = [{k: v for k, v in row.items() if k not in cells.TIMING_COLUMNS} for row in table]
    return sorted(kept, key=lambda row: [row[k] for k in cells.KEY])


def test_the_process_pool_and_ray_give_the_same_rows(tmp_path, monkeypatch):
    import ray  # a dev dependency, so that this runs wherever the tests do
    sweep = [*TINY, "--modes", "inference", "--strategies", "greedy,cpsat"]
    assert mapping_strategies.main([*sweep, "--jobs", "2", "--out", str(tmp_path / "pool")]) == 0
    fetched, get = [], ray.get
    monkeypatch.setattr(ray, "get", lambda ref: fetched.append(ref) or get(ref))
    # A local Ray of one CPU, without its dashboard, started and shut down by the sweep.
    assert mapping_strategies.main([*sweep, "--ray", "--jobs", "1", "--out", str(tmp_path / "ray")]) == 0
    assert len(fetched) == 2 and not ray.is_initialized()
    in_pool, on_ray = rows(tmp_path / "pool"), rows(tmp_path / "ray")
    assert [row["status"] for row in in_pool] == ["ok", "ok"]
    assert {row["strategy"] for row in in_pool} == {"greedy", "cpsat"}
    assert without_timings(in_pool) == without_timings(on_ray)


def test_an_interrupted_sweep_keeps_its_finished_rows_and_resumes_the_rest(tmp_path, monkeypatch, capsys):
    sweep = [*TINY, "--modes", "inference,pipelined", "--strategies", "greedy,row-major", "--jobs", "1",
             "--out", str(tmp_path)]
    evaluate, calls = cells.evaluate, []

    def interrupted_after_one(cell):
        if calls:
            raise KeyboardInterrupt
        calls.append(cell.key())
        return evaluate(cell)

    monkeypatch.setattr(cells, "evaluate", interrupted_after_one)
    assert mapping_strategies.main(sweep) == 130
    assert "interrupted: 1 of 4 cells done" in capsys.readouterr().err
    assert [tuple(row[k] for k in cells.KEY) for row in rows(tmp_path)] == calls
    # A process killed while writing a row leaves its start without a newline: resuming ignores it.
    with (tmp_path / "cells.csv").open("a") as file:
        file.write("row-major,tiny-gpt@12,mesh-16x16,weight-stre")

    resumed = []
    monkeypatch.setattr(cells, "evaluate", lambda cell: resumed.append(cell.key()) or evaluate(cell))
    assert mapping_strategies.main(sweep) == 0
    assert "1 of 4 cells already" in capsys.readouterr().err
    keys = [tuple(row[k] for k in cells.KEY) for row in rows(tmp_path)]
    assert len(keys) == len(set(keys)) == 4
    assert calls[0] not in resumed and len(resumed) == 3
    assert all(row["status"] == "ok" for row in rows(tmp_path))


def hand_made(strategy: str, model: str, step: float | None, bottleneck: str = "fabric", status: str = "ok",
              share: float = 0.0) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(cells.COLUMNS, "")
    row.update(strategy=strategy, model=model, target="cs2-sim", mode="weight-streaming", batch=120, micro_batch=15,
               seed=0, status=status, params=1e8 if model == "small" else 1e9)
    if status != "ok":
        row["reason"] = "the layer's kernels do not fit"
        return row
    row.update(step_seconds=step, training_step_seconds=3 * step, bottleneck=bottleneck, training_bottleneck=bottleneck,
               fabric_slack_share=share, fabric_slack_layer="blocks.3", solve_seconds=0.5)
    return row


def test_the_table_and_relative_columns_from_a_hand_made_csv(tmp_path):
    made = [hand_made("cpsat", "small", 2.0), hand_made("greedy", "small", 3.0),
            hand_made("random", "small", None, status="does not fit"),
            hand_made("cpsat", "large", 10.0, "stream", share=0.25), hand_made("greedy", "large", 10.05, "stream",
                                                                                share=0.5)]
    with (tmp_path / "cells.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, cells.COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(made)
    assert mapping_strategies.main(["--outputs-only", "--out", str(tmp_path)]) == 0

    relative = {(row["model"], row["strategy"]): row["step_vs_best"] for row in rows(tmp_path)}
    assert relative == {("small", "cpsat"): "1.0", ("small", "greedy"): "1.5", ("small", "random"): "",
                        ("large", "cpsat"): "1.0", ("large", "greedy"): repr(10.05 / 10.0)}
    assert {row["training_vs_best"] for row in rows(tmp_path) if row["strategy"] == "greedy"} == {"1.5",
                                                                                                  repr(10.05 / 10.0)}
    table = (tmp_path / "table.md").read_text()
    # Columns in order of model size; strategies in the placers' order.
    assert "| strategy | small, cs2-sim, streaming b120/15 | large, cs2-sim, streaming b120/15 |" in table
    assert "| cpsat | 1.000 (fabric) | 1.000 (stream) |" in table
    assert "| greedy | 1.500 (fabric) | 1.005 (stream) |" in table
    assert "| random | no fit |  |" in table
    assert "| *fastest step* | 2 s (cpsat) | 10 s (cpsat) |" in table
    assert "- small, cs2-sim, streaming b120/15: placement matters: greedy takes 1.500x the step of cpsat" in table
    assert ("- large, cs2-sim, streaming b120/15: every strategy within 1% (worst greedy, 1.005): stream binds, with "
            "the fabric 25.0% below it at the tightest layer (blocks.3, cpsat), so placement cannot change the step "
            "until that layer's traffic grows 1.33x.") in table
    assert (tmp_path / "step_vs_size.png").stat().st_size > 0
    assert (tmp_path / "solve_time_vs_quality.png").stat().st_size > 0


def test_fabric_slack_is_the_tightest_layer_and_negative_where_the_fabric_binds():
    layers = [{"layer": "embed", "compute_seconds": 1.0, "stream_seconds": 4.0, "fabric_seconds": 1.0},
              {"layer": "blocks.0", "compute_seconds": 3.0, "stream_seconds": 1.0, "fabric_seconds": 2.0},
              {"layer": "head", "compute_seconds": 1.0, "stream_seconds": 2.0, "fabric_seconds": 2.5}]
    assert cells.fabric_slack(layers) == (-0.5, -0.5 / 2.5, "head")
    assert cells.fabric_slack(layers[:2]) == (1.0, 1.0 / 3.0, "blocks.0")
    # The estimate's own slack, where the report has it, is the one taken.
    layers[1]["fabric_slack_seconds"] = -1.5
    assert cells.fabric_slack(layers) == (-1.5, -1.5 / 3.0, "blocks.0")
