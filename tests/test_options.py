"""Compile options: one frozen CompileOptions, every value checked in one place (names and ranges), one rule for
the tolerance that depends on the weights' dtype, and one rule for whether the weights fit in memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_gpt

import wsc
from wsc import api, backend, options
from wsc.core.errors import WscError
from wsc.frontend.meta import empty_weights
from wsc.options import DEFAULT_TOLERANCE, MODES, CompileOptions
from wsc.passes.placers import STRATEGIES
from wsc.passes.routers import ROUTERS
from wsc.runtime.weight_store import STORE_DTYPES

BAD = [
    ("tolerance", -1.0, "--tolerance -1.0 is not a factor of the derived error bound; give a number of 0 or more"),
    ("tolerance", float("nan"), "--tolerance nan"),
    ("tolerance", float("inf"), "--tolerance inf"),
    ("time_limit", 0.0, "--time-limit 0.0 is not a time; give"),
    ("time_limit", -2, "--time-limit -2"),
    ("micro_batch", 0, "--micro-batch 0 is not a number of sequences; give 1 or more"),
    ("micro_batch", 2.5, "--micro-batch 2.5"),
    ("systems", 0, "--systems 0 is not a number of wafers; give 1 or more"),
    ("seed", -1, "--seed -1 is out of range; give a whole number from 0 to 2147483647"),
    ("seed", 2**31, "--seed 2147483648"),
    ("fill", 0.0, "fill 0.0 is not a share of the mesh"),
    ("fill", 1.5, "fill 1.5"),
    ("strategy", "best", "unknown placement strategy 'best'; use one of cpsat, greedy, row-major"),
    ("router", "manhattan", "unknown router 'manhattan'; use one of congestion, xy"),
    ("mode", "streaming", "unknown mode 'streaming'; use one of weight-streaming, pipelined"),
    ("weights_dtype", "bf16", "unknown weights dtype 'bf16'; use one of fp32, fp16"),
    ("verify", "yes", "verify='yes' is not a bool"),
    ("verify_layers", 1, "verify_layers=1 is not a bool"),
    ("fused_attention", 1, "fused_attention=1 is not a bool"),
    ("weights", "/nonexistent/w.safetensors", "--weights /nonexistent/w.safetensors does not exist; give"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_a_bad_option_is_refused_in_one_line_naming_it(name, value, message):
    with pytest.raises(WscError) as refused:
        CompileOptions(**{name: value})
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_every_named_choice_and_the_range_ends_are_accepted():
    # The names are the registries' and the store's own, not copies of them.
    assert options.STORE_DTYPES is STORE_DTYPES
    for strategy in STRATEGIES:
        CompileOptions(strategy=strategy)
    for router in ROUTERS:
        CompileOptions(router=router)
    for mode in MODES:
        CompileOptions(mode=mode)
    for dtype in STORE_DTYPES:
        CompileOptions(weights_dtype=dtype)
    CompileOptions(tolerance=0, time_limit=1e-3, micro_batch=1, systems=1, seed=0, fill=1.0)
    CompileOptions(seed=options.MAX_SEED)


def test_options_are_frozen_and_changed_through_of_which_checks_again():
    base = CompileOptions(strategy="greedy")
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.seed = 3  # type: ignore[misc]
    assert CompileOptions.of(base) is base
    changed = CompileOptions.of(base, seed=3)
    assert (changed.strategy, changed.seed, base.seed) == ("greedy", 3, 0)
    with pytest.raises(WscError, match="--seed -1"):
        CompileOptions.of(base, seed=-1)
    with pytest.raises(TypeError, match="unknown compile option 'stratgy'"):
        CompileOptions.of(stratgy="greedy")


def test_the_tolerance_scales_the_derived_bound():
    assert CompileOptions().verify_tolerance == DEFAULT_TOLERANCE == 1.0
    assert CompileOptions(weights_dtype="fp16").verify_tolerance == 1.0  # fp16's rounding is in the rule
    assert CompileOptions(weights_dtype="fp16", tolerance=0.5).verify_tolerance == 0.5  # a given one wins
    assert CompileOptions(tolerance=0).verify_tolerance == 0


def test_wsc_compile_with_fp16_weights_is_held_to_the_fp16_bound(small_target):
    """The API, like the CLI, allows fp16 weights their rounding: the rule's weight term is fp16's unit
    roundoff, and the same run held to the fp32 rule (no weight term) fails."""
    from wsc import pipeline, verification

    model, inputs = tiny_gpt(layers=1)
    compiled = wsc.compile(model, inputs, small_target, strategy="greedy", weights_dtype="fp16")
    v = compiled.report["verification"]
    assert (v["status"], v["tolerance"], v["weights_dtype"]) == ("pass", 1.0, "fp16")
    assert v["rule"]["weight_eps"] == 2.0**-11
    run = pipeline.run_compiled(compiled.compiled, inputs, weights_dtype="fp16")
    first = v["outputs"][0]
    fp32_rule = verification.relative_bound(first["terms"], first["weighted"], "fp32", 1.0)
    assert verification.compare(run.outputs[0], model(*inputs).detach().numpy(), fp32_rule)["status"] == "fail"
    skipped = wsc.compile(model, inputs, small_target, strategy="greedy", weights_dtype="fp16", verify=False)
    assert skipped.report["verification"]["tolerance"] == 1.0


def test_the_weights_fit_when_twice_their_bytes_are_within_the_share_of_memory(monkeypatch):
    layer = torch.nn.Linear(10, 10)  # 110 fp32 parameters: 440 bytes, 880 to verify
    with empty_weights():
        weightless = torch.nn.Linear(10, 10)
    memory = 880 / api.VERIFY_MEMORY_SHARE
    monkeypatch.setattr(api, "physical_memory_bytes", lambda: memory)
    assert api.weights_fit(layer) and api.weights_fit(weightless)  # a meta build counts the same bytes
    monkeypatch.setattr(api, "physical_memory_bytes", lambda: memory * 0.999)
    assert not api.weights_fit(layer) and not api.weights_fit(weightless)


def test_wsc_compile_skips_verifying_weights_that_do_not_fit(small_target, monkeypatch):
    monkeypatch.setattr(api, "weights_fit", lambda module: False)
    model, inputs = tiny_gpt(layers=1)
    v = wsc.compile(model, inputs, small_target, strategy="greedy").report["verification"]
    assert v["status"] == "skipped" and "too many to verify" in v["note"]


def test_the_backend_checks_its_options_once_when_made():
    with pytest.raises(WscError, match="--time-limit 0"):
        backend.make_backend("mesh-16x16", time_limit=0)
    with pytest.raises(TypeError, match="unknown compile option 'speed'"):
        backend.make_backend("mesh-16x16", speed=1)
