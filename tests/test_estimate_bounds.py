"""The estimate never falls below its roofline bound: Cerebras-GPT's smallest, a middle and its largest size (the
estimate's code is the same at every size; 13B is the one pipelined mode refuses), both CS targets, both modes."""

from __future__ import annotations

import pytest

from wsc.core.errors import WscError
from wsc.pipeline import compile_captured
from wsc.targets import load_target

SIZES = ["111M", "1.3B", "13B"]


@pytest.mark.parametrize("size", SIZES)
def test_step_is_never_below_the_bound(size, gpt_captured):
    captured = gpt_captured(size)  # the example's inputs: one sequence of 128 tokens
    checked = 0
    for target_name in ("cs2-sim", "cs3-sim"):
        target = load_target(target_name)
        for mode in ("weight-streaming", "pipelined"):
            try:  # greedy placement: the bound does not depend on the placer, and it is fast
                program = compile_captured(captured, 128, target, strategy="greedy", mode=mode).program
            except WscError as refusal:  # pipelined mode refuses what does not fit, saying what to use instead
                assert mode == "pipelined" and "--mode weight-streaming" in str(refusal)
                continue
            estimate = program.estimate
            assert estimate["step_seconds"] >= estimate["bound_seconds"] > 0, (target_name, mode)
            assert estimate["compute_utilization"] <= 1.0
            training = estimate["training"]
            assert training["step_seconds"] >= training["bound_seconds"] > estimate["bound_seconds"]
            assert training["compute_utilization"] <= 1.0
            assert sum(e["seconds"] for e in estimate["layers"]) >= estimate["bound_seconds"] or mode == "pipelined"
            checked += 1
    assert checked >= 2  # weight streaming always compiles, on both targets
