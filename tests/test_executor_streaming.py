"""The executor with weights streamed from sharded, fp16 and prefetching stores, on a tiny GPT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_gpt

from wsc.frontend.capture import to_numpy
from wsc.pipeline import compile_model, in_dtype
from wsc.runtime.executor import Executor
from wsc.runtime.weight_store import WeightStore, write_store


@pytest.fixture(scope="module")
def compiled4(small_target):
    model, inputs = tiny_gpt(layers=4)
    compiled = compile_model(model, inputs, small_target, time_limit=1.0)
    weights = {k: to_numpy(v) for k, v in compiled.weights.items()}
    with torch.no_grad():
        expected = to_numpy(model(*inputs))
    return compiled, [to_numpy(x) for x in inputs], weights, expected


def layer_bytes(compiled) -> list[int]:
    graph = compiled.program.graph
    return [sum(graph[w].nbytes for w in layer.weights) for layer in compiled.program.layers]


def run(compiled, inputs, store: WeightStore, prefetch: bool, threads: int = 2) -> list[np.ndarray]:
    return Executor(compiled.program, store, threads=threads, prefetch=prefetch).run(inputs)


def test_prefetch_gives_identical_outputs_and_holds_at_most_two_layers(compiled4, tmp_path: Path):
    compiled, inputs, weights, expected = compiled4
    path = write_store(tmp_path / "w.safetensors", weights)
    plain_store, fetch_store = WeightStore(path), WeightStore(path)
    plain = run(compiled, inputs, plain_store, prefetch=False)
    fetched = run(compiled, inputs, fetch_store, prefetch=True)
    for a, b in zip(plain, fetched, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.max(np.abs(fetched[0] - expected)) < 1e-4
    sizes = layer_bytes(compiled)
    assert len(sizes) == 6  # embedding, four blocks, head
    assert plain_store.peak_resident_layers == 1
    assert fetch_store.peak_resident_layers == 2
    assert fetch_store.prefetched_layers == len(sizes) - 1
    # the counter is honest: a prefetched layer counts with the layer being computed, never a third one
    assert fetch_store.peak_resident_bytes == max(a + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    assert fetch_store.resident == {} and plain_store.resident == {}
    assert fetch_store.streamed_bytes == plain_store.streamed_bytes == sum(sizes)
    fetch_store.close()


def test_store_never_holds_more_than_two_layers_while_running(compiled4, tmp_path: Path, monkeypatch):
    """Sample the resident set at every stream_in, prefetch and release, from whichever thread."""
    compiled, inputs, weights, _ = compiled4
    store = WeightStore(write_store(tmp_path / "w.safetensors", weights))
    seen: list[int] = []
    original_copy = store._copy

    def copy_and_sample(keys, *args, **kwargs):
        seen.append(len(store.resident))
        return original_copy(keys, *args, **kwargs)

    monkeypatch.setattr(store, "_copy", copy_and_sample)
    run(compiled, inputs, store, prefetch=True)
    assert seen and max(seen) <= 2
    assert store.peak_resident_layers <= 2


def test_sharded_fp16_checkpoint_runs(compiled4, tmp_path: Path):
    compiled, inputs, weights, expected = compiled4
    ckpt = write_store(tmp_path / "ckpt", weights, dtype="fp16", shard_bytes=20_000)
    assert len(list(ckpt.glob("model-*.safetensors"))) >= 3
    store = WeightStore(ckpt)
    got = run(compiled, inputs, store, prefetch=True)[0]
    # the same model with its weights rounded to fp16, computed in fp32
    rounded = {k: v.astype(np.float16).astype(np.float32) if v.dtype == np.float32 else v for k, v in weights.items()}
    want = run(compiled, inputs, WeightStore(write_store(tmp_path / "r.safetensors", rounded)), prefetch=False)[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # fp16 weights move eager's logits by ~1e-3 here; a wrong tensor would move them by O(1)
    assert 0 < np.max(np.abs(got - expected)) < 2e-2
    assert store.streamed_bytes == sum(layer_bytes(compiled)) // 2


def test_failed_run_leaves_nothing_resident(compiled4, tmp_path: Path):
    compiled, inputs, weights, _ = compiled4
    head = compiled.program.layers[-1]
    missing = compiled.program.graph[head.weights[-1]].attrs["key"]
    partial = {k: v for k, v in weights.items() if k != missing}
    store = WeightStore(write_store(tmp_path / "w.safetensors", partial))
    with pytest.raises(Exception, match=missing):
        run(compiled, inputs, store, prefetch=True)
    assert store.resident == {}


def test_an_fp16_run_streams_an_fp16_store_as_it_is(tmp_path: Path):
    weights = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "ids": np.arange(3, dtype=np.int64)}
    half = write_store(tmp_path / "half.safetensors", weights, dtype="fp16")
    assert in_dtype(half, "fp16", tmp_path / "work") == half  # no second copy of a store the size of the model
    full = write_store(tmp_path / "full.safetensors", weights)
    converted = in_dtype(full, "fp16", tmp_path)
    assert converted != full and WeightStore(converted).dtype("w") == "F16"
    np.testing.assert_array_equal(WeightStore(converted).read("w"), WeightStore(half).read("w"))
    assert in_dtype(full, "fp32", tmp_path) == full
