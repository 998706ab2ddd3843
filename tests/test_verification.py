"""The verification rule: path counts worked by hand, the elementwise bound, the inputs it runs, and the report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_gpt

from wsc import pipeline, verification
from wsc.targets import load_target


@pytest.fixture(scope="module")
def compiled():
    model, inputs = tiny_gpt()  # d_model 32, 4 heads, d_ffn 128, seq 12, 2 blocks, vocab 97
    return pipeline.compile_model(model, inputs, load_target("mesh-16x16"), time_limit=0.3)


def test_the_logits_path_counts_every_sum_on_it(compiled):
    """terms: the embeddings (1 each, then their add: 1); per block ln 32, qkv 32, attention 8 + 12 keys,
    proj 32, ln 32, fc 32, fc_proj 128 = 308; ln_f 32; lm_head 32: 2 + 2 x 308 + 64 = 682. weighted: one
    embedding, 6 weighted kernels a block, ln_f and lm_head: 1 + 12 + 2 = 15."""
    counts = verification.path_counts(compiled.program.graph)
    logits = counts[compiled.program.graph.outputs[0]]
    assert (logits.terms, logits.weighted) == (682, 15)


def test_the_bound_is_the_rules_formula():
    # 16 x 2^-23 x sqrt(100) = 1.9073e-5; fp16 adds 16 x 2^-11 x sqrt(4) = 0.015625
    assert verification.relative_bound(100, 4, "fp32", 1.0) == pytest.approx(16 * 2**-23 * 10, rel=1e-12)
    assert verification.relative_bound(100, 4, "fp16", 1.0) == pytest.approx(16 * 2**-23 * 10 + 16 * 2**-11 * 2)
    assert verification.relative_bound(100, 4, "fp32", 3.0) == pytest.approx(3 * 16 * 2**-23 * 10)


def test_an_element_near_zero_is_allowed_the_error_of_its_neighbours():
    """allowed = rtol x (|expected| + rms): rms here is sqrt((9 + 16 + 0) / 3) = 2.8868."""
    want = np.array([3.0, -4.0, 0.0], np.float32)
    rtol = 1e-3
    near_zero_ok = want + np.array([0, 0, 2.8e-3], np.float32)
    near_zero_bad = want + np.array([0, 0, 3.0e-3], np.float32)
    assert verification.compare(near_zero_ok, want, rtol)["status"] == "pass"
    bad = verification.compare(near_zero_bad, want, rtol)
    assert bad["status"] == "fail" and bad["worst_index"] == [2]
    assert bad["allowed_abs_err"] == pytest.approx(rtol * np.sqrt(25 / 3), rel=1e-6)
    big_ok = want + np.array([5.8e-3, 0, 0], np.float32)  # 1e-3 x (3 + 2.8868) = 5.887e-3
    assert verification.compare(big_ok, want, rtol)["status"] == "pass"


def test_integers_and_bools_must_be_equal_and_nan_must_be_where_eager_has_it():
    assert verification.compare(np.array([1, 2]), np.array([1, 3]), 1.0)["status"] == "fail"
    assert verification.compare(np.array([True]), np.array([True]), 0.0)["status"] == "pass"
    want = np.array([np.nan, 1.0], np.float32)
    assert verification.compare(np.array([np.nan, 1.0], np.float32), want, 1e-6)["status"] == "pass"
    assert verification.compare(np.array([0.0, 1.0], np.float32), want, 1e-6)["status"] == "fail"
    assert verification.compare(np.array([np.nan, np.nan], np.float32), want, 1e-6)["status"] == "fail"


def test_the_second_input_is_a_seeded_shuffle_of_the_first():
    ids = torch.arange(40).reshape(2, 20)
    (once,), (again,) = verification.shuffled((ids,), seed=1), verification.shuffled((ids,), seed=1)
    assert torch.equal(once, again) and not torch.equal(once, ids)
    assert sorted(once.reshape(-1).tolist()) == list(range(40)) and once.dtype == ids.dtype


def test_wsc_compile_verifies_both_inputs_and_reports_each_output(small_target):
    import wsc

    model, inputs = tiny_gpt(layers=1)
    compiled = wsc.compile(model, inputs, small_target, strategy="greedy")
    v = compiled.report["verification"]
    program = compiled.program  # the memory section counts one step's streaming, not one per input verified
    one_step = sum(layer.streamed_bytes(program.graph, 4) for layer in program.layers)
    assert compiled.report["memory"]["streamed_bytes"] == one_step
    assert [i["name"] for i in v["inputs"]] == ["capture", "shuffled (seed 1)"]
    assert [(o["input"], o["name"]) for o in v["outputs"]] == [("capture", "linear_4"), ("shuffled (seed 1)",
                                                                                       "linear_4")]
    first = v["outputs"][0]
    assert first["shape"] == [1, 12, 97] and len(first["worst_index"]) == 3
    # The worst element (by its share of its bound) has an error of at most the largest one.
    assert 0 < first["error_ratio"] < 1
    assert first["error_ratio"] * first["allowed_abs_err"] <= first["max_abs_err"] * (1 + 1e-9)
    assert "layers" not in v and "located" not in v  # the diff runs on a failure or when asked
