"""trace.json: the estimate as Chrome trace events, laid out exactly as passes/estimate.py adds up a step."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from wsc.artifacts.trace import layer_slots

MODELS = Path(__file__).resolve().parent / "models"


@pytest.fixture(scope="module")
def out(tiny_out) -> Path:
    return tiny_out


@pytest.fixture(scope="module")
def trace(out) -> dict:
    return json.loads((out / "trace.json").read_text())


@pytest.fixture(scope="module")
def simulation(out) -> dict:
    return json.loads((out / "report.json").read_text())["simulation"]


def complete(trace: dict) -> list[dict]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X"]


def track(trace: dict, name: str) -> int:
    (tid,) = [e["tid"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"
              and e["args"]["name"] == name]
    return tid


def test_trace_is_trace_event_json(trace):
    assert trace["displayTimeUnit"] == "ns"
    for e in trace["traceEvents"]:
        assert e["ph"] in ("X", "M") and isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] == "X":
            assert e["ts"] >= 0 and e["dur"] >= 0 and isinstance(e["name"], str)
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert {"layers", "weight streaming", "matmul #1"} <= names
    # Identical blocks share their kernels' tracks: no more tracks than the largest layer has kernels, + 3.
    assert len(names) <= 3 + 3 + 9


def test_every_layer_has_complete_events(trace, simulation):
    for entry in simulation["layers"]:
        assert any(e["args"].get("layer") == entry["layer"] for e in complete(trace)), entry["layer"]


def test_layer_slots_add_up_to_the_step(trace, simulation):
    layers = [e for e in complete(trace) if e["tid"] == track(trace, "layers")]
    assert [e["name"] for e in layers] == [entry["layer"] for entry in simulation["layers"]]
    for before, after in zip(layers, layers[1:], strict=False):
        assert after["ts"] == pytest.approx(before["ts"] + before["dur"], abs=1e-9)
    last = max(e["ts"] + e["dur"] for e in complete(trace)) * 1e-6
    assert last == pytest.approx(simulation["step_seconds"], abs=1e-9)


def test_streaming_track_sums_to_stream_time_and_overlaps_the_previous_layer(trace, simulation):
    stream = sorted((e for e in complete(trace) if e["tid"] == track(trace, "weight streaming")),
                    key=lambda e: e["ts"])
    total = sum(entry["stream_seconds"] for entry in simulation["layers"])
    assert sum(e["dur"] for e in stream) * 1e-6 == pytest.approx(total, abs=1e-9)
    first = simulation["layers"][0]["stream_seconds"]
    assert stream[0]["ts"] == 0 and stream[1]["ts"] * 1e-6 == pytest.approx(first, abs=1e-12)


def test_kernel_events_last_their_compute_time(trace, simulation):
    # The slowest kernel of each layer, plus the pipeline's fill, is the layer's compute term.
    layers = {entry["layer"]: entry for entry in simulation["layers"]}
    kernels = [e for e in complete(trace) if e["tid"] >= 10]
    for name, entry in layers.items():
        slowest = max(e["dur"] for e in kernels if e["args"]["layer"] == name) * 1e-6
        assert entry["fill_seconds"] >= 0  # the other kernels' first wave and its hops: it may exceed a tiny kernel
        assert slowest + entry["fill_seconds"] == pytest.approx(entry["compute_seconds"], rel=1e-9)


def test_pipelined_slots_end_at_the_step():
    program = SimpleNamespace(tokens=8, micro_batches=2, estimate={
        "mode": "pipelined", "passes_per_system": 2,
        "layers": [{"layer": "a", "seconds": 4.0}, {"layer": "b", "seconds": 8.0}, {"layer": "c", "seconds": 2.0}]})
    slots = layer_slots(program)
    # The slowest layer (8) paces every layer in each of the 2 passes; the fill is each earlier layer's share
    # of one token (4 tokens per pass).
    assert slots == [(0, "a", 0.0, 17.0), (1, "b", 1.0, 18.0), (2, "c", 3.0, 16.5)]
    assert max(start + dur for _, _, start, dur in slots) == 2 * 8.0 + (4.0 + 8.0 + 2.0) / 4
