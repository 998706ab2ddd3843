"""The pass pipeline: verified after every pass, errors that name the pass, an estimate above its bound."""

from __future__ import annotations

import pytest
from conftest import tiny_gpt

from wsc.capture import capture
from wsc.passes.estimate import Estimate
from wsc.passes.group_layers import GroupLayers, block_of
from wsc.passes.legalize import Legalize
from wsc.passmanager import PassError, PassManager
from wsc.pipeline import compile_model
from wsc.program import Program


def test_block_of_module_paths():
    assert block_of("blocks.3.attn.qkv") == "blocks.3"
    assert block_of("transformer.h.11.mlp") == "transformer.h.11"
    assert block_of("lm_head") is None


def test_pass_error_names_the_failing_pass_and_those_before(small_target):
    model, inputs = tiny_gpt(layers=1)
    program = Program(capture(model, inputs).graph, small_target)
    manager = PassManager([Legalize(), GroupLayers(), Estimate()], verify=True)
    program.target = None  # a broken program: estimate cannot read the target, a compiler bug
    with pytest.raises(PassError, match=r"pass estimate failed \(passes run before it: legalize, group-layers\)"):
        manager.run(program)


def test_estimate_never_below_bound_and_names_bottleneck(small_target):
    model, inputs = tiny_gpt(layers=2)
    compiled = compile_model(model, inputs, small_target, verify_ir=True, time_limit=1.0)
    estimate = compiled.program.estimate
    assert estimate["step_seconds"] >= estimate["bound_seconds"] > 0
    assert estimate["bottleneck"] in ("compute", "fabric", "stream")
    assert len(estimate["layers"]) == 4
    assert sum(layer["seconds"] for layer in estimate["layers"]) == pytest.approx(estimate["step_seconds"])


def test_single_sequence_inference_on_cs2_is_stream_bound():
    """The primer's crossover: a 128-token step is far below the ~50k tokens where compute catches up, so a
    111M-shaped model (one block) spends its step streaming weights."""
    from wsc.targets import load_target

    model, inputs = tiny_gpt(layers=1, d_model=768, heads=12, d_ffn=3072, vocab=50257, seq=128)
    compiled = compile_model(model, inputs, load_target("cs2-sim"), time_limit=0.5)
    estimate = compiled.program.estimate
    assert estimate["bottleneck"] == "stream"
    assert estimate["bounds"]["stream"] > 100 * estimate["bounds"]["compute"]
