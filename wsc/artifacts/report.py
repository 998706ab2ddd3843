"""The two artifacts of a compile: report.json (what happened) and placement.json (where things went).

Both schemas are documented in the README; keys are only ever added, never renamed. Files are written to a
temporary name and renamed, so a failed compile never leaves half-written output.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from wsc import ops
from wsc.artifacts.routes_json import route_json
from wsc.core.mesh import Rect, mesh_of
from wsc.core.program import Program

SCHEMA_VERSION = 1
TILE_RULE = "row-major over the working PEs"  # placement.json's tile_pes.rule: how slots map to PEs

# The keys of report.json that measure the run itself, as paths from the document's root (a prefix matches
# everything under it): how long it took, how much memory it used, how many kernels the on-disk kernel cache
# already held. Everything else is decided by the model, target, options and seed: two compiles of the same
# write byte-identical placement.json, and report.json identical outside these keys, in any process and under
# any PYTHONHASHSEED (tests/test_reproducible.py). benchmarks/same_artifacts.py compares two folders outside them.
#
# `origin` is not among them: it records the invocation, the model file and the command line without its
# --out (the folder the file itself lies in), so one command writes the same origin into any folder.
MEASURED: tuple[tuple[str, ...], ...] = (
    ("timings",),
    ("placement", "solver", "seconds"),
    ("memory", "peak_rss_bytes"),
    ("runtime", "kernel_cache"),
)
# Where the model file lay: the same model compiled from two checkouts (the commit before a change in a worktree,
# and the change) differs here and nowhere else; benchmarks/same_artifacts.py leaves it out of its comparison too.
LOCATION: tuple[tuple[str, ...], ...] = (("origin", "model_file"),)


def is_under(path: tuple[str, ...], prefixes: tuple[tuple[str, ...], ...] = MEASURED) -> bool:
    """Whether the key at `path` (from report.json's root) is one of `prefixes` or lies under one."""
    return any(path[: len(prefix)] == prefix for prefix in prefixes)


def without_measured(doc: Any, prefixes: tuple[tuple[str, ...], ...] = MEASURED,
                     path: tuple[str, ...] = ()) -> Any:
    """`doc` (a report.json, parsed) without the keys under `prefixes`, every other key in its order."""
    if isinstance(doc, dict):
        return {key: without_measured(value, prefixes, (*path, key)) for key, value in doc.items()
                if not is_under((*path, key), prefixes)}
    if isinstance(doc, list):
        return [without_measured(value, prefixes, (*path, str(i))) for i, value in enumerate(doc)]
    return doc


def tile_pes_json(rect: Rect, pes: np.ndarray) -> dict[str, Any]:
    """A kernel's slot -> PE map (`pes`, (x, y) per slot, as `wsc.core.mesh.tile_pes` gives it) as the rule
    plus the slots it moves off the clean-mesh PE (rect.x + p % w, rect.y + p // w). A dead PE moves every
    later slot one PE along, so the moved slots are listed as runs [slot, x, y, n]: slots slot .. slot+n-1
    sit on the n PEs that follow one another row-major in the rectangle from (x, y) on. A run ends at each
    dead PE, so a kernel lists about as many runs as it covers dead PEs, and none on a clean mesh."""
    offsets = (pes[:, 1] - rect.y) * rect.w + (pes[:, 0] - rect.x)
    moved = np.flatnonzero(offsets != np.arange(len(offsets)))
    runs: list[list[int]] = []
    if moved.size:
        first = int(moved[0])  # every later slot is moved too: offsets only grow faster than slots
        tail = offsets[first:]
        starts = first + np.flatnonzero(np.diff(tail, prepend=tail[0] - 2) != 1)
        ends = np.append(starts[1:], len(offsets))
        runs = [[int(a), int(pes[a, 0]), int(pes[a, 1]), int(b - a)] for a, b in zip(starts, ends, strict=True)]
    return {"rule": TILE_RULE, "moved": runs}


def placement_json(program: Program) -> dict[str, Any]:
    target = program.target
    layers = []
    for layer in program.layers:
        rects = layer.placement.rects if layer.placement is not None else {}
        kernels = []
        for name, plan in layer.kernels.items():
            rect = rects[name]
            kernels.append({"name": name, "op": program.graph[name].op, "x": rect.x, "y": rect.y,
                            "w": rect.w, "h": rect.h, "pes": plan.pes, "sram_bytes_per_pe": plan.sram_bytes_per_pe,
                            "grid": [plan.row_blocks, plan.col_blocks, plan.k_splits],
                            "tile_pes": tile_pes_json(rect, program.tile_pes(layer, name))})
        edges = []
        for i, f in enumerate(layer.flows):
            edge: dict[str, Any] = {"src": f.src, "dst": f.dst, "bytes": f.bytes}
            if layer.routes is not None:
                edge["route"] = route_json(layer.routes, i)
            edges.append(edge)
        layers.append({"index": layer.index, "name": layer.name, "kernels": kernels, "edges": edges})
    return {
        "schema": SCHEMA_VERSION,
        "target": target.name,
        "mesh": {"rows": target.rows, "cols": target.cols, "dead_pes": sorted([r, c] for r, c in target.dead_pes),
                 "sram_bytes_per_pe": target.sram_bytes_per_pe, "routable_colors": target.routable_colors},
        "layers": layers,
    }


def placement_summary(program: Program) -> dict[str, Any]:
    placements = [layer.placement for layer in program.layers if layer.placement is not None]
    per_layer = [sum(p.pes for p in layer.kernels.values()) for layer in program.layers]
    # One layer is on the wafer at a time when streaming weights; all of them at once when pipelined.
    pes_used = sum(per_layer) if program.mode == "pipelined" else max(per_layer, default=0)
    worst = max(placements, key=lambda p: p.gap, default=None)
    # Layers whose solver returned no arrangement, each placed as the best baseline heuristic answered it.
    fell_back = [(layer.name, layer.placement) for layer in program.layers
                 if layer.placement is not None and layer.placement.fallback]
    routers = {layer.routes.router for layer in program.layers if layer.routes is not None}
    return {
        "strategy": ",".join(sorted({p.strategy for p in placements})),
        "router": ",".join(sorted(routers)),
        "mode": program.mode,
        "fill": program.fill,
        "compact": program.compact,
        "pes_used": pes_used,
        "utilization": pes_used / program.target.usable_pes,
        "wirelength": sum(p.wirelength for p in placements),
        "max_link_load": max((layer.routes.max_link_load for layer in program.layers if layer.routes), default=0),
        "longest_route_hops": max((layer.routes.longest_route_hops for layer in program.layers if layer.routes),
                                  default=0),
        # Pipelined mode: the activations handed between the resident layers, all routed at once.
        "handoff_max_link_load": program.handoff_routes.max_link_load if program.handoff_routes else 0,
        "handoff_longest_route_hops": program.handoff_routes.longest_route_hops if program.handoff_routes else 0,
        "solver": None if worst is None else {
            "status": worst.status, "objective": worst.objective, "best_bound": worst.best_bound,
            "gap": worst.gap, "seconds": sum(p.seconds for p in placements),
            "fallback": ",".join(sorted({p.fallback for _, p in fell_back})) or None,
            "fallback_status": ",".join(sorted({p.fallback_status for _, p in fell_back})) or None,
            "fallback_layers": [name for name, _ in fell_back],
        },
    }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, default=_plain) + "\n"



def _plain(value: Any) -> Any:
    """numpy scalars and other simple objects as JSON numbers and strings."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def defects_summary(program: Program, perfect: Program | None) -> dict[str, Any] | None:
    """report.json's `simulation.defects`: the target's dead PEs, those a dead row or column cuts off from the
    mesh's largest region (unused too), their share of the mesh, and the step against `perfect`, the same
    compile on the target without its defects. None on a wafer without defects."""
    target = program.target
    if not target.dead_pes or perfect is None:
        return None
    step, clean = program.estimate["step_seconds"], perfect.estimate["step_seconds"]
    dead = len(target.dead_pes)
    return {"dead_pes": dead, "cut_off_pes": len(mesh_of(target).dead) - dead,
            "dead_share": dead / (target.rows * target.cols), "perfect_step_seconds": clean,
            "slowdown": step / clean if clean > 0 else None}


def build_report(compiled, *, verification: dict[str, Any], memory: dict[str, Any], run_seconds: float,
                 total_seconds: float, model_info: dict[str, Any], perfect: Program | None = None) -> dict[str, Any]:
    """report.json: what was compiled, where it went, how fast the target would run it, and whether the
    compiled program computed what PyTorch does. `perfect` is the same compile on the target without its
    defects, for `simulation.defects` (left out: null)."""
    program = compiled.program
    graph, target = program.graph, program.target
    # The graph is one pass (one micro-batch); a step runs micro_batches of them.
    forward = program.micro_batches * sum(n.flops for n in graph if n.is_kernel)
    backward = program.micro_batches * sum(ops.kernel(n.op).backward_flops(n) for n in graph if n.is_kernel)
    tokens = max(program.tokens, 1)
    layer_weights = [sum(graph[w].nbytes for w in layer.weights) for layer in program.layers]
    return {
        "schema": SCHEMA_VERSION,
        "model": {
            "name": program.model_name,
            **model_info,
            "capture": compiled.captured.how,
            "params": sum(p.numel for p in graph.params),
            "layers": len(program.layers),
            "flops_per_step": forward,
            "tokens_per_step": program.tokens,
            "flops_per_token": forward / tokens,
            "train_flops_per_token": (forward + backward) / tokens,
        },
        "target": {"name": target.name, "rows": target.rows, "cols": target.cols,
                   "usable_pes": target.usable_pes, "clock_hz": target.clock_hz},
        "placement": placement_summary(program),
        "simulation": {**program.estimate, "defects": defects_summary(program, perfect)},
        "verification": verification,
        "memory": {**memory, "max_layer_weights_bytes": max(layer_weights, default=0)},
        "runtime": runtime_info(),
        "timings": {**{f"pass.{k}": v for k, v in compiled.pass_seconds.items()},
                    "run": run_seconds, "total": total_seconds},
    }


def runtime_info() -> dict[str, Any]:
    """The host the kernels were compiled for, and how much compiled code was reused: within this run
    (identical kernels of identical layers) and from the on-disk kernel cache of earlier runs."""
    from wsc.runtime import jit
    from wsc.runtime.lowering import cache_stats

    cpu, _ = jit.host_cpu()
    return {"host_cpu": cpu, "vector_bits": jit.vector_width_bits(), "kernel_cache": cache_stats()}
