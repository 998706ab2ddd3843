"""trace.json: the estimated step as a Chrome trace-event timeline, to open in Perfetto or chrome://tracing.

Users already have a trace viewer; drawing the estimate there lets them zoom from the whole step down to one
kernel. The events are the estimate's own schedule (passes/schedule.py), so they add up to `step_seconds`:
- weight streaming: each layer pass is a slot of max(compute, fabric, next layer's stream); layer 0 streams
  first (exposed), and each later layer streams during the slot before its own. A step of many micro-batches
  draws its first MAX_PASSES passes (the others repeat them; `otherData` says how many there are);
- pipelined: every layer is resident and tokens flow through them; layer i starts when the first token
  reaches it (the fill: the earlier layers' time for one token) and runs for the slowest layer's time per pass
  plus its own share of one token.
Tracks: one per layer slot (with the bound in its args), one for fabric transfers, one for weight streaming,
and one per kernel position. Kernels of identical layers (every block of a GPT) share tracks by position
("matmul #2"), so a 40-block model still shows a handful of tracks.
"""

from __future__ import annotations

from typing import Any

from wsc.core.program import Program
from wsc.passes import schedule

PID = 1
LAYER_TID, FABRIC_TID, STREAM_TID = 1, 2, 3
FIRST_KERNEL_TID = 10
MAX_PASSES = 4

US = 1e6  # trace-event timestamps are microseconds


def layer_slots(program: Program) -> list[tuple[int, str, float, float]]:
    """(layer index, slot name, start, duration) per drawn layer pass, in seconds."""
    estimate = program.estimate
    layers = estimate.get("layers", [])
    if estimate.get("mode") == "pipelined":
        _, spans = schedule.pipelined([e["seconds"] for e in layers], estimate.get("passes_per_system", 1),
                                      program.tokens / max(program.micro_batches, 1))
        return [(i, entry["layer"], start, seconds)
                for i, (entry, (start, seconds)) in enumerate(zip(layers, spans, strict=True))]
    drawn = [s for s in program.timeline if s.phase.pass_index < MAX_PASSES]
    many = estimate.get("passes_per_system", 1) > 1
    return [(s.phase.layer, f"{layers[s.phase.layer]['layer']}" + (f" (pass {s.phase.pass_index})" if many else ""),
             s.start, s.seconds) for s in drawn]


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
    entries = estimate.get("layers", [])
    slots = layer_slots(program)
    tracks = kernel_track_names(program)
    events: list[dict[str, Any]] = []

    def complete(tid: int, name: str, start: float, dur: float, args: dict[str, Any]) -> None:
        events.append({"name": name, "ph": "X", "pid": PID, "tid": tid, "ts": start * US, "dur": dur * US,
                       "args": args})

    tids: dict[str, int] = {}
    for j, (i, name, start, slot) in enumerate(slots):
        layer, entry = program.layers[i], entries[i]
        complete(LAYER_TID, name, start, slot,
                 {"layer": layer.name, "bound": entry["bound"], "compute_seconds": entry["compute_seconds"],
                  "fabric_seconds": entry["fabric_seconds"], "stream_seconds": entry["stream_seconds"]})
        if entry["fabric_seconds"] > 0:
            complete(FABRIC_TID, f"{name} fabric", start, entry["fabric_seconds"], {"layer": layer.name})
        for (node, plan), track in zip(layer.kernels.items(), tracks[i], strict=True):
            tid = tids.setdefault(track, FIRST_KERNEL_TID + len(tids))
            flops = program.graph[node].flops
            complete(tid, node, start, entry["kernel_seconds"][node],
                     {"layer": layer.name, "kernel": node, "op": program.graph[node].op, "flops": flops,
                      "pes": plan.pes, "grid": [plan.row_blocks, plan.col_blocks, plan.k_splits]})
        if estimate.get("mode") != "pipelined" and entry["stream_seconds"] > 0:
            # A layer's weights stream during the slot before its own; layer 0's before anything runs.
            begin = slots[j - 1][2] if j > 0 else 0.0
            complete(STREAM_TID, f"{layer.name} weights", begin, entry["stream_seconds"],
                     {"layer": layer.name, "weight_bytes": entry["weight_bytes"]})

    meta = [{"name": "process_name", "ph": "M", "pid": PID, "tid": 0,
             "args": {"name": f"{target.name} ({estimate.get('mode', program.mode)})"}}]
    named = {LAYER_TID: "layers", FABRIC_TID: "fabric", STREAM_TID: "weight streaming",
             **{tid: track for track, tid in tids.items()}}
    for tid, name in sorted(named.items()):
        meta.append({"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": name}})
        meta.append({"name": "thread_sort_index", "ph": "M", "pid": PID, "tid": tid, "args": {"sort_index": tid}})
    return {"traceEvents": meta + events, "displayTimeUnit": "ns",
            "otherData": {"model": program.model_name, "target": target.name,
                          "step_seconds": estimate.get("step_seconds", 0.0),
                          "passes_per_system": estimate.get("passes_per_system", 1),
                          "passes_drawn": min(estimate.get("passes_per_system", 1), MAX_PASSES)}}
