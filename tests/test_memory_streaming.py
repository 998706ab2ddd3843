"""benchmarks/memory.py's path for models bigger than memory, on Cerebras-GPT 111M: the wsc run's peak RSS (its
own process, from wait4) is held to what streaming allows, and the layer-by-layer check against PyTorch's
modules passes, and fails at the one layer whose streamed tensor was corrupted."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import wsc
from wsc.artifacts import program_json
from wsc.frontend.meta import empty_weights

ROOT = Path(__file__).resolve().parent.parent
SIZE, SEQ = "111M", 32
# What the run holds beyond the interpreter, its weights and its activations: the program and its compiled
# kernels (40 MB at 111M), the threads, and what the allocator keeps of the arrays freed by earlier layers (about
# 75 MB at the head of a 111M run). Holding every layer's weights to the end adds 400 MB more than the bound.
SLACK_BYTES = 256 << 20


def _benchmark():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("wsc_memory_benchmark", ROOT / "benchmarks" / "memory.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


memory = _benchmark()


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    """111M compiled without weights, its fp16 store written, and the program run on it in its own process
    (beside a process that only imports what the run imports, for the interpreter's baseline)."""
    work = tmp_path_factory.mktemp("memory")
    folder, store = work / "out", work / "weights.safetensors"
    with ThreadPoolExecutor(max_workers=1) as pool:
        base = pool.submit(memory.measured, memory.worker("baseline"))  # its peak is its own, whatever runs beside
        gpt = memory._example()
        with empty_weights():
            model = gpt.build_model(size=SIZE, seq=SEQ)
        # Placement does not change what the program computes: the quick strategy and router serve.
        options = wsc.CompileOptions(verify=False, strategy="greedy", router="xy")
        wsc.compile(model, gpt.example_inputs(size=SIZE, seq=SEQ), "cs2-sim", options).save(folder)
        memory.write_weights(folder, store, 0)
        memory.write_inputs(folder, SIZE, SEQ, work / "inputs.safetensors")
        run = memory.measured(memory.worker("run_layers", folder, store, work / "inputs.safetensors",
                                            work / "record.safetensors"))
        return work, base.result(), run


def rss_bound(program, baseline: int) -> tuple[int, int, str]:
    """The most a streaming run may hold: the interpreter, the two layers resident at once (the one running and
    the one prefetched), one more copy of the largest weight (a kernel packs its operand), the largest layer's
    activations, and SLACK_BYTES. And what a run holding every layer's weights to the end would need."""
    graph = program.graph
    layers = [sum(graph[w].nbytes for w in layer.weights) for layer in program.layers]
    pair = max(a + b for a, b in zip(layers, layers[1:], strict=False))
    largest = max(graph[w].nbytes for layer in program.layers for w in layer.weights)
    activations = max(memory.activation_bytes(program))
    bound = baseline + pair + largest + activations + SLACK_BYTES
    terms = (f"baseline {baseline / 1e6:.0f} MB + two layers {pair / 1e6:.0f} MB + largest weight "
             f"{largest / 1e6:.0f} MB + activations {activations / 1e6:.0f} MB + slack {SLACK_BYTES / 1e6:.0f} MB")
    return bound, baseline + sum(layers) + largest + activations, terms


def test_the_run_holds_two_layers_not_the_model_and_every_layer_matches_pytorch(streamed, capsys):
    work, base, run = streamed
    assert base.returncode == 0 and run.returncode == 0
    program = program_json.load(work / "out").program
    bound, holding_every_layer, terms = rss_bound(program, base.peak_rss_bytes)
    assert run.peak_rss_bytes <= bound, f"peak RSS {run.peak_rss_bytes / 1e6:.0f} MB > {bound / 1e6:.0f} MB: {terms}"
    # And the measure is the run's own: it shows at least the largest layer above the baseline (a peak carried
    # over from a larger parent would hide both).
    largest_layer = max(sum(program.graph[w].nbytes for w in layer.weights) for layer in program.layers)
    assert run.peak_rss_bytes >= base.peak_rss_bytes + largest_layer
    assert holding_every_layer > bound  # else the bound could not tell streaming from holding the model

    code = memory.check_layers(work / "out", work / "weights.safetensors", work / "inputs.safetensors",
                               work / "record.safetensors", SIZE, SEQ, work / "check.json")
    verdict = json.loads((work / "check.json").read_text())
    assert code == 0 and verdict["status"] == "pass"
    assert [row["layer"] for row in verdict["layers"]] == ["embed", *(f"blocks.{i}" for i in range(10)), "head"]
    assert all(0 <= row["error_ratio"] <= 1 for row in verdict["layers"])
    assert any(row["max_abs_err"] > 0 for row in verdict["layers"])  # compared for real: fp32 sums differ
    assert "layer-by-layer check: pass, 12 of 12 layers" in capsys.readouterr().out


def flip_sign_of_largest(store: Path, key: str) -> None:
    """Flip the sign bit of the largest fp16 element of the first row of tensor `key`, in place, as a bit error
    in the stored file would."""
    with open(store, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        entry = json.loads(f.read(length))[key]
    assert entry["dtype"] == "F16"
    begin, _ = entry["data_offsets"]
    row = math.prod(entry["shape"][1:])
    values = np.memmap(store, dtype=np.uint16, mode="r+", offset=8 + length + begin, shape=(row,))
    largest = int(np.argmax(np.abs(values.view(np.float16).astype(np.float32))))
    values[largest] ^= 0x8000
    values.flush()
    del values


def test_a_corrupted_streamed_tensor_fails_the_check_at_its_layer_alone(streamed, capsys):
    work, _, _ = streamed
    corrupted = work / "corrupted.safetensors"
    shutil.copyfile(work / "weights.safetensors", corrupted)
    flip_sign_of_largest(corrupted, "blocks.3.fc.weight")
    # wsc streams the corrupted tensor; PyTorch's modules are given the store as it was written.
    assert memory.run_layers(work / "out", corrupted, work / "inputs.safetensors", work / "bad.safetensors") == 0
    code = memory.check_layers(work / "out", work / "weights.safetensors", work / "inputs.safetensors",
                               work / "bad.safetensors", SIZE, SEQ, work / "bad.json")
    verdict = json.loads((work / "bad.json").read_text())
    assert code == 1 and verdict["status"] == "fail"
    # Each layer is fed wsc's own input to it, so the error stays in the layer that made it.
    assert [row["layer"] for row in verdict["layers"] if row["status"] == "fail"] == ["blocks.3"]
    out = capsys.readouterr().out
    assert "layer-by-layer check: FAIL, 11 of 12 layers" in out and "blocks.3 FAILS" in out


def test_a_process_peak_is_its_own_not_its_parents():
    """Linux carries a process's peak RSS across exec: a child started straight from a large parent reports at
    least the parent's size. The measure forks from a small launcher instead."""
    ballast = np.ones(64 << 20)  # 512 MB, every page written
    measure = memory.measured([sys.executable, "-c", "pass"])
    assert measure.returncode == 0
    assert measure.peak_rss_bytes < 100e6 < ballast.nbytes
