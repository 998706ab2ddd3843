"""Micro-batching and data parallelism: a batch too big for the wafer runs as passes of one smaller graph, on one
system or split over several, computes what eager PyTorch does, and is costed pass by pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import MODELS, tiny_gpt
from wsc.cli import main
from wsc.core.errors import WscError
from wsc.passes import schedule
from wsc.pipeline import compile_model, run_compiled, verify
from wsc.targets import load_target

TARGETS = Path(__file__).resolve().parent.parent / "targets"


@pytest.fixture(scope="module")
def tight_target(tmp_path_factory):
    """The 16x16 test mesh with 10 KB per PE: the tiny GPT's activation store fits 4 sequences of 32 tokens per
    pass, not 8."""
    text = (TARGETS / "mesh-16x16.yaml").read_text().replace("sram_bytes: 49152", "sram_bytes: 10240")
    path = tmp_path_factory.mktemp("target") / "tight.yaml"
    path.write_text(text.replace("name: mesh-16x16", "name: mesh-16x16-tight"))
    return load_target(str(path))


def compiled_for(target, batch: int, **options):
    model, inputs = tiny_gpt(batch=batch, seq=32)
    return model, inputs, compile_model(model, inputs, target, strategy="greedy", **options)


def test_a_batch_too_big_for_one_pass_runs_in_micro_batches_and_matches_eager(tight_target):
    model, inputs, compiled = compiled_for(tight_target, batch=8)
    program = compiled.program
    assert program.micro_batches == 2 and program.graph.inputs[0].shape == (4, 32)
    assert program.tokens == 8 * 32 and program.estimate["micro_batch_tokens"] == 4 * 32
    run = run_compiled(compiled, inputs)
    assert run.outputs[0].shape == (8, 32, 97)
    result = verify(model, inputs, run.outputs, compiled.program)
    assert result["status"] == "pass" and result["max_abs_err"] < 1e-4
    # Each pass streams every layer's weights again, as the performance model charges.
    one_pass = sum(layer.streamed_bytes(program.graph, 4) for layer in program.layers)
    assert run.executor.store.streamed_bytes == 2 * one_pass


def test_more_passes_cost_more_streaming_and_the_step_adds_up(tight_target):
    _, _, two = compiled_for(tight_target, batch=8)
    _, _, four = compiled_for(tight_target, batch=8, micro_batch=2)
    e2, e4 = two.program.estimate, four.program.estimate
    assert (e2["micro_batches"], e4["micro_batches"]) == (2, 4)
    assert e4["bounds"]["stream"] == pytest.approx(2 * e2["bounds"]["stream"])
    for estimate in (e2, e4):
        assert sum(layer["seconds"] for layer in estimate["layers"]) == pytest.approx(estimate["step_seconds"])
        assert estimate["step_seconds"] >= estimate["bound_seconds"]
        assert estimate["training"]["step_seconds"] >= estimate["training"]["bound_seconds"]


def test_the_compiled_model_takes_the_whole_batch(tight_target):
    import wsc

    model, inputs = tiny_gpt(batch=8, seq=32)
    compiled = wsc.compile(model, inputs, tight_target, strategy="greedy", verify=False)
    with torch.no_grad():
        expected = model(*inputs)
    assert compiled.program.micro_batches == 2
    assert torch.allclose(compiled(*inputs), expected, atol=1e-4)
    with pytest.raises(WscError, match=r"compiled for int64\[8, 32\]"):
        compiled(inputs[0][:4])


def test_systems_split_the_batch_and_report_scaling(tight_target):
    _, _, one = compiled_for(tight_target, batch=8)
    _, _, two = compiled_for(tight_target, batch=8, systems=2)
    e1, e2 = one.program.estimate, two.program.estimate
    assert (e2["systems"], e2["passes_per_system"], e2["micro_batches"]) == (2, 1, 2)
    # Half the passes each: the forward step halves; training also pays the SwarmX reduction's tail.
    assert e2["step_seconds"] == pytest.approx(e1["step_seconds"] / 2, rel=0.05)
    t1, t2 = e1["training"], e2["training"]
    assert t2["single_system_step_seconds"] == pytest.approx(t1["step_seconds"])
    assert t2["swarmx_seconds"] > 0 and t1["swarmx_seconds"] == 0
    assert t2["scaling_efficiency"] == pytest.approx(t1["step_seconds"] / (2 * t2["step_seconds"]))
    assert 0.5 < t2["scaling_efficiency"] < 1.0


def test_micro_batch_and_systems_must_divide_the_batch(tight_target):
    with pytest.raises(WscError, match="--micro-batch 3 does not divide the 8 sequences"):
        compiled_for(tight_target, batch=8, micro_batch=3)
    with pytest.raises(WscError, match="--systems 3 does not divide the batch of 8"):
        compiled_for(tight_target, batch=8, systems=3)


def test_outputs_without_a_batch_dimension_cannot_be_split(tight_target):
    class Total(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids):
            return self.inner(ids).transpose(0, 1)  # the batch is no longer first: passes cannot be stacked

    model, inputs = tiny_gpt(batch=8, seq=32)
    with pytest.raises(WscError, match="has no batch dimension"):
        compile_model(Total(model), inputs, tight_target, strategy="greedy", micro_batch=4)


def test_cli_refuses_a_micro_batch_that_does_not_divide(tmp_path, capsys):
    code = main(["compile", str(MODELS / "tiny_gpt.py"), "--target", "mesh-16x16", "--model-arg", "batch=4",
                 "--micro-batch", "3", "--out", str(tmp_path / "out"), "--no-verify"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--micro-batch 3" in err
    assert not (tmp_path / "out").exists()


def test_schedule_overlaps_streams_with_the_phase_before():
    layers = [{"compute_seconds": 2.0, "fabric_seconds": 1.0, "stream_seconds": 3.0,
               "backward_compute_seconds": 4.0},
              {"compute_seconds": 5.0, "fabric_seconds": 0.0, "stream_seconds": 1.0,
               "backward_compute_seconds": 10.0}]
    # Forward, two passes: stream(0) exposed, then max(2, 1, s1=1) = 2, max(5, s0=3) = 5, 2, then 5 (last).
    step, slots, by_term = schedule.run(schedule.forward_phases(layers, 2))
    assert step == 3 + 2 + 5 + 2 + 5 and [s.bound for s in slots] == ["compute"] * 4
    assert by_term == {"stream": 3.0, "compute": 14.0}
    # Training, one pass: 3 | fwd0 max(2, in 1) | fwd1 max(5, in 1) | bwd1 max(10, in 3) | bwd0 max(4, out 1)
    # | layer 0's gradients stream out last (3).
    step, slots, _ = schedule.run(schedule.training_phases(layers, 1))
    assert [(s.phase.layer, s.phase.backward) for s in slots] == [(0, False), (1, False), (1, True), (0, True)]
    assert step == 3 + 2 + 5 + 10 + 4 + 3


def test_choose_finds_the_largest_that_fits_then_the_fastest_divisor():
    from wsc.core.errors import DoesNotFit
    from wsc.micro_batch import choose

    tried = []

    def attempt(size: int) -> int:
        tried.append(size)
        if size > 30:  # the activation store grows with the micro-batch: 120 needs 4x the room there is
            raise DoesNotFit("too big", needed=size * 100, offered=3000)
        return size

    step = {30: 5.0, 24: 6.0, 20: 5.5, 15: 4.0, 12: 4.4, 10: 4.2, 8: 4.1, 6: 4.5, 5: 3.5, 4: 3.6, 3: 3.0, 2: 3.2,
            1: 9.0}  # not monotonic: every divisor is looked at
    log = []
    assert choose(120, None, attempt, step.__getitem__, log=log) == 3
    # 120 * 3000 / 12000 = 30 fits; then every smaller divisor of 120.
    assert tried == [120, 30, 24, 20, 15, 12, 10, 8, 6, 5, 4, 3, 2, 1]
    assert [(t.sequences, t.outcome) for t in log][:3] == [(120, "does not fit"), (30, "fits"), (24, "ranked")]
    assert [t.sequences for t in log if t.outcome == "chosen"] == [3]
    assert choose(120, 24, attempt, step.get) == 24


def recording_attempt():
    """An attempt that compiles every size (as itself) and the list of the sizes it was asked for."""
    tried: list[int] = []

    def attempt(size: int) -> int:
        tried.append(size)
        return size

    return tried, attempt


def test_choose_skips_what_its_floor_rules_out_and_compiles_only_the_ranked_winner():
    from wsc.micro_batch import choose

    tried, attempt = recording_attempt()

    steps = {12: 10.0, 6: 8.0, 4: 9.0, 3: 11.0, 2: 12.0, 1: 20.0}
    floors = {6: 2.0, 4: 3.0, 3: 10.0, 2: 10.5, 1: 15.0}  # 3, 2 and 1 cannot beat the 10 s of 12 per pass
    ranks = {6: 7.5, 4: 9.5}
    log = []
    chosen = choose(12, None, attempt, steps.__getitem__, rank=lambda largest, size: ranks[size],
                    floor=lambda largest, size: floors[size], log=log)
    assert chosen == 6 and tried == [12, 6]  # the largest, then only the size ranked fastest
    outcomes = {t.sequences: (t.outcome, t.step_seconds, t.floor_seconds) for t in log}
    assert outcomes == {12: ("fits", 10.0, None), 6: ("chosen", 8.0, 2.0), 4: ("ranked", 9.5, 3.0),
                        3: ("cannot win", None, 10.0), 2: ("cannot win", None, 10.5), 1: ("cannot win", None, 15.0)}
    # A ranked winner that compiles slower than the largest is not kept.
    tried.clear()
    steps[6] = 10.5
    assert choose(12, None, attempt, steps.__getitem__, rank=lambda largest, size: ranks[size],
                  floor=lambda largest, size: floors[size]) == 12 and tried == [12, 6]


def counting_captures(monkeypatch) -> list[tuple[int, ...]]:
    import wsc.pipeline

    shapes: list[tuple[int, ...]] = []
    original = wsc.pipeline.capture

    def capture(model, inputs):
        shapes.append(tuple(inputs[0].shape))
        return original(model, inputs)

    monkeypatch.setattr(wsc.pipeline, "capture", capture)
    return shapes


def test_the_search_captures_and_groups_each_size_once(tight_target, monkeypatch):
    shapes = counting_captures(monkeypatch)
    runs: list[str] = []
    _, _, compiled = compiled_for(tight_target, batch=8, on_pass=lambda name, seconds: runs.append(name))
    # 8 sequences do not fit; 4 do; 2 and 1 are ranked from 4's terms, not captured: none ranks faster.
    assert shapes == [(8, 32), (4, 32)]
    assert runs.count("legalize") == runs.count("group-layers") == len(shapes)
    assert compiled.program.micro_batches == 2
    search = compiled.program.estimate["micro_batch_search"]
    assert [(t["sequences"], t["outcome"]) for t in search][:2] == [(8, "does not fit"), (4, "chosen")]
    assert {t["sequences"] for t in search} == {8, 4, 2, 1}
    assert all(t["step_seconds"] > search[1]["step_seconds"] for t in search[2:] if t["outcome"] == "ranked")


def test_a_size_tried_again_reuses_its_capture_and_grouped_program(tight_target, monkeypatch):
    import wsc.micro_batch

    shapes = counting_captures(monkeypatch)
    runs: list[str] = []

    def twice(per_system, requested, attempt, seconds, **search):  # a search that comes back to a size
        first = attempt(4)
        return min(first, attempt(4), attempt(2), key=seconds)

    monkeypatch.setattr(wsc.micro_batch, "choose", twice)
    _, _, compiled = compiled_for(tight_target, batch=8, on_pass=lambda name, seconds: runs.append(name))
    assert shapes == [(4, 32), (2, 32)]
    assert runs.count("legalize") == runs.count("group-layers") == 2 and runs.count("estimate") == 3
    assert compiled.program.micro_batches in (2, 4) and compiled.program.estimate["step_seconds"] > 0


def test_a_cramped_largest_has_its_half_compiled_though_the_ranking_prefers_it():
    from wsc.micro_batch import choose

    tried, attempt = recording_attempt()

    steps = {12: 10.0, 6: 9.0, 4: 12.0, 3: 12.5, 2: 13.0, 1: 14.0}
    ranked = {6: 10.5, 4: 11.0, 3: 11.5, 2: 12.0, 1: 13.0}  # at the largest's cuts, nothing smaller wins
    rank = lambda largest, size: ranked[size]  # noqa: E731
    assert choose(12, None, attempt, steps.__getitem__, rank=rank) == 12 and tried == [12]
    tried.clear()
    log = []
    assert choose(12, None, attempt, steps.__getitem__, rank=rank, cramped=lambda largest: True, log=log) == 6
    assert tried == [12, 6]
    assert [(t.sequences, t.outcome) for t in log][:2] == [(12, "fits"), (6, "chosen")]
