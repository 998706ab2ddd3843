"""The runtime: weight streaming from the store, execution over the partitioner's tiles, verification."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_PE_TARGET, derived, tiny_gpt

from wsc.core.errors import WscError
from wsc.frontend.capture import to_numpy
from wsc.pipeline import compile_model, run_compiled, verify
from wsc.runtime.weight_store import WeightStore, write_store


@pytest.fixture(scope="module")
def compiled_tiny(small_target):
    model, inputs = tiny_gpt(layers=2)
    return model, inputs, compile_model(model, inputs, small_target, verify_ir=True, time_limit=2.0)


def test_compiled_gpt_matches_eager(compiled_tiny):
    model, inputs, compiled = compiled_tiny
    result = run_compiled(compiled, inputs)
    check = verify(model, inputs, result.outputs, compiled.program)
    assert check["status"] == "pass"
    assert check["max_abs_err"] < 1e-4


def test_store_holds_one_layer_at_a_time(compiled_tiny):
    model, inputs, compiled = compiled_tiny
    graph, layers = compiled.program.graph, compiled.program.layers
    sizes = [sum(graph[w].nbytes for w in layer.weights) for layer in layers]
    store = run_compiled(compiled, inputs, prefetch=False).executor.store
    assert store.peak_resident_layers == 1
    assert store.peak_resident_bytes == max(sizes)
    assert store.resident == {}
    # Every layer streamed its own weights: the tied embedding twice (embedding and LM head).
    assert store.streamed_bytes == sum(sizes)


def test_prefetch_holds_at_most_two_layers(compiled_tiny):
    """With prefetch the next layer streams in while the current one runs: never more than the two."""
    model, inputs, compiled = compiled_tiny
    graph, layers = compiled.program.graph, compiled.program.layers
    sizes = [sum(graph[w].nbytes for w in layer.weights) for layer in layers]
    run = run_compiled(compiled, inputs, prefetch=True)
    assert run.executor.store.peak_resident_layers == 2
    assert run.executor.store.peak_resident_bytes == max(a + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    assert verify(model, inputs, run.outputs, compiled.program)["status"] == "pass"


def test_corrupted_tile_fails_verification(compiled_tiny):
    """The executed numbers come from the partitioner's tiles: move one tile and verification must fail."""
    model, inputs, compiled = compiled_tiny
    head = compiled.program.layers[-1]
    plan = head.kernels[[n for n in head.kernels if compiled.program.graph[n].op == "matmul"][0]]
    corrupted = plan.tiles.copy()
    corrupted[0, 3] = max(corrupted[0, 2], corrupted[0, 3] - 1)  # PE 0 stops one column short
    with derived(plan, tiles=corrupted):
        result = run_compiled(compiled, inputs)
        check = verify(model, inputs, result.outputs, compiled.program)
    assert check["status"] == "fail"
    assert check["max_abs_err"] is None  # the element no PE computed is still NaN


def test_overlapping_tiles_in_wrong_place_fail_too(compiled_tiny):
    model, inputs, compiled = compiled_tiny
    block = compiled.program.layers[1]
    plan = max(block.kernels.values(), key=lambda p: p.pes)
    assert plan.pes > 1
    corrupted = plan.tiles.copy()
    corrupted[-1] = corrupted[0]  # the last PE recomputes the first PE's tile; its own is never computed
    with derived(plan, tiles=corrupted):
        check = verify(model, inputs, run_compiled(compiled, inputs).outputs, compiled.program)
    assert check["status"] == "fail"


def test_store_round_trip_and_memory_map(tmp_path: Path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16)}
    write_store(tmp_path / "w.safetensors", tensors)
    store = WeightStore(tmp_path / "w.safetensors")
    assert sorted(store.keys()) == ["a", "b"]
    assert isinstance(store.shards[0].map, np.memmap)
    got = store.stream_in("layer0", ["a", "b"])
    np.testing.assert_array_equal(got["a"], tensors["a"])
    assert got["b"].dtype == np.float32
    assert store.resident == {"layer0": 6 * 4 + 4 * 4}
    store.release("layer0")
    assert store.resident == {}
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_weight_and_broken_store_are_clear_errors(tmp_path: Path):
    write_store(tmp_path / "w.safetensors", {"a": np.zeros(2, np.float32)})
    with pytest.raises(WscError, match="weight nope is not in the store"):
        WeightStore(tmp_path / "w.safetensors").stream_in("l", ["nope"])
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(WscError, match="cannot read weight store"):
        WeightStore(tmp_path / "bad.safetensors")


def test_batch_two_and_symbolic_trace_model(small_target):
    model, inputs = tiny_gpt(layers=1, batch=2, seq=5)
    compiled = compile_model(model, inputs, small_target, time_limit=1.0)
    check = verify(model, inputs, run_compiled(compiled, inputs).outputs, compiled.program)
    assert check["status"] == "pass"
    assert compiled.program.tokens == 10
    with torch.no_grad():
        assert to_numpy(model(*inputs)).shape == (2, 5, 97)


def test_k_split_reduction_is_executed(tmp_path):
    """A kernel whose K the partitioner split runs as partial sums plus a reduction; slices that overlap
    must break verification."""
    from wsc.targets import load_target

    (tmp_path / "small.yaml").write_text(SMALL_PE_TARGET)
    model, inputs = tiny_gpt(layers=1, d_model=32, d_ffn=1024, seq=8)
    compiled = compile_model(model, inputs, load_target(str(tmp_path / "small.yaml")), time_limit=0.3,
                             verify_ir=True)
    split = [p for layer in compiled.program.layers for p in layer.kernels.values() if p.k_splits > 1]
    assert split, "the small PEs should force a K split"
    assert all(p.sram_bytes_per_pe <= 10240 - 8192 for layer in compiled.program.layers
               for p in layer.kernels.values())
    assert verify(model, inputs, run_compiled(compiled, inputs).outputs, compiled.program)["status"] == "pass"
    plan = split[0]
    bounds = plan.k_bounds.copy()
    # Slice 0 now reaches 3 columns into slice 2 and slice 1 is empty: those columns are summed twice.
    bounds[1] = bounds[2] + 3
    with derived(plan, k_bounds=bounds):
        check = verify(model, inputs, run_compiled(compiled, inputs).outputs, compiled.program)
    assert check["status"] == "fail"


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_thread_pieces_cover_every_element_once_in_balanced_pieces(threads):
    from wsc.runtime.lowering import PIECES_PER_THREAD, thread_pieces

    rng = np.random.default_rng(threads)
    rows, cols = 300, 70
    cuts = np.unique(np.r_[0, rng.integers(0, cols, 5), cols])
    tables = {
        "one tile": [(0, rows, 0, cols)],
        "one row": [(0, 1, 0, cols)],
        "columns": [(0, rows, a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)],
        "single elements": [(r, r + 1, c, c + 1) for r in range(7) for c in range(3)],
    }
    for name, table in tables.items():
        tiles = np.array(table, np.int64)
        split, bounds = thread_pieces(tiles, threads)
        covered = np.zeros((rows, cols), np.int64)
        for r0, r1, c0, c1 in split:
            covered[r0:r1, c0:c1] += 1
        expected = np.zeros_like(covered)
        for r0, r1, c0, c1 in tiles:
            expected[r0:r1, c0:c1] += 1
        np.testing.assert_array_equal(covered, expected, err_msg=name)
        assert bounds[0] == 0 and bounds[-1] == len(split) and (np.diff(bounds) > 0).all(), name
        work = [int(((p[:, 1] - p[:, 0]) * (p[:, 3] - p[:, 2])).sum()) for p in np.split(split, bounds[1:-1])]
        share = expected.sum() / (threads * PIECES_PER_THREAD)
        if name != "single elements":  # a piece of whole elements cannot be smaller than one element
            assert len(work) >= min(threads, cols), name  # one tile still keeps every thread busy
            assert max(work) <= 2 * share + cols, (name, work, share)
