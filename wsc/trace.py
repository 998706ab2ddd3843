"""trace.json: the estimated step as a Chrome trace-event timeline, to open in Perfetto or chrome://tracing.

Users already have a trace viewer; drawing the estimate there lets them zoom from the whole step down to one
kernel. The events are laid out exactly as passes/estimate.py adds the step up, so the last one ends at
`step_seconds`:
- weight streaming: layer 0 streams first (exposed); layer i+1 streams while layer i computes
  (double-buffered), so layer i's slot lasts max(compute(i), fabric(i), stream(i+1));
- pipelined: every layer is resident and tokens flow through them; layer i starts when the first token
  reaches it (the fill: the earlier layers' time for one token) and runs for the slowest layer's time plus
  its own share of one token.
Tracks: one per layer slot (with the bound in its args), one for fabric transfers, one for weight streaming,
and one per kernel position. Kernels of identical layers (every block of a GPT) share tracks by position
("matmul #2"), so a 40-block model still shows a handful of tracks.
"""

from __future__ import annotations

from typing import Any

from wsc.passes.estimate import kernel_seconds
from wsc.program import Program

PID = 1
LAYER_TID, FABRIC_TID, STREAM_TID = 1, 2, 3
FIRST_KERNEL_TID = 10

US = 1e6  # trace-event timestamps are microseconds


def layer_slots(estimate: dict[str, Any], tokens: int) -> list[tuple[float, float, float]]:
    """(start of the layer's slot, start of its compute, slot duration) per layer, in seconds."""
    layers = estimate.get("layers", [])
    slots = []
    if estimate.get("mode") == "pipelined":
        slowest = max((e["seconds"] for e in layers), default=0.0)
        offset = 0.0
        for entry in layers:
            share = entry["seconds"] / max(tokens, 1)
            slots.append((offset, offset, slowest + share))
            offset += share
        return slots
    t = 0.0
    for i, entry in enumerate(layers):
        exposed = entry["stream_seconds"] if i == 0 else 0.0  # the first layer's stream is not overlapped
        slots.append((t, t + exposed, entry["seconds"]))
        t += entry["seconds"]
    return slots


def kernel_track_names(program: Program) -> list[list[str]]:
    """Per layer, its kernels' track names: the op and its position among the layer's kernels of that op."""
    names = []
    for layer in program.layers:
        seen: dict[str, int] = {}
        row = []
        for node in layer.kernels:
            op = program.graph[node].op
            seen[op] = seen.get(op, 0) + 1
            row.append(f"{op} #{seen[op]}")
        names.append(row)
    return names


def trace_events(program: Program) -> dict[str, Any]:
    """The trace-event JSON of the program's estimate (an empty timeline if it was never estimated)."""
    target, estimate = program.target, program.estimate
    rate = target.flops_per_cycle_per_pe[program.dtype] * target.clock_hz
    entries = estimate.get("layers", [])
    slots = layer_slots(estimate, program.tokens)
    events: list[dict[str, Any]] = []

    def complete(tid: int, name: str, start: float, dur: float, args: dict[str, Any]) -> None:
        events.append({"name": name, "ph": "X", "pid": PID, "tid": tid, "ts": start * US, "dur": dur * US,
                       "args": args})

    tids: dict[str, int] = {}
    for layer, entry, (start, compute_start, slot), tracks in zip(
            program.layers, entries, slots, kernel_track_names(program), strict=False):
        complete(LAYER_TID, layer.name, start, slot,
                 {"layer": layer.name, "bound": entry["bound"], "compute_seconds": entry["compute_seconds"],
                  "fabric_seconds": entry["fabric_seconds"], "stream_seconds": entry["stream_seconds"]})
        if entry["fabric_seconds"] > 0:
            complete(FABRIC_TID, f"{layer.name} fabric", compute_start, entry["fabric_seconds"],
                     {"layer": layer.name})
        for (node, plan), track in zip(layer.kernels.items(), tracks, strict=True):
            tid = tids.setdefault(track, FIRST_KERNEL_TID + len(tids))
            flops = program.graph[node].flops
            complete(tid, node, compute_start, kernel_seconds(flops, plan, rate, target),
                     {"layer": layer.name, "kernel": node, "op": program.graph[node].op, "flops": flops,
                      "pes": plan.pes, "grid": [plan.row_blocks, plan.col_blocks, plan.k_splits]})
    if estimate.get("mode") != "pipelined":
        for i, entry in enumerate(entries):
            # Layer i's weights stream during layer i-1's compute; layer 0's before anything runs.
            begin = 0.0 if i == 0 else slots[i - 1][1]
            if entry["stream_seconds"] > 0:
                complete(STREAM_TID, f"{entry['layer']} weights", begin, entry["stream_seconds"],
                         {"layer": entry["layer"], "weight_bytes": entry["weight_bytes"]})

    meta = [{"name": "process_name", "ph": "M", "pid": PID, "tid": 0,
             "args": {"name": f"{target.name} ({estimate.get('mode', program.mode)})"}}]
    named = {LAYER_TID: "layers", FABRIC_TID: "fabric", STREAM_TID: "weight streaming",
             **{tid: track for track, tid in tids.items()}}
    for tid, name in sorted(named.items()):
        meta.append({"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": name}})
        meta.append({"name": "thread_sort_index", "ph": "M", "pid": PID, "tid": tid, "args": {"sort_index": tid}})
    return {"traceEvents": meta + events, "displayTimeUnit": "ns",
            "otherData": {"model": program.model_name, "target": target.name,
                          "step_seconds": estimate.get("step_seconds", 0.0)}}
