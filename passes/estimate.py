"""estimate: an analytical time per step on the target, layer by layer, and the roofline bound under it.

Per layer (weight-streaming mode):
- compute: each kernel's FLOPs over its computing PEs at the target's FLOP rate for the dtype, plus, for a
  matmul whose K is split, the reduction of its partial sums (a binary tree over the K slices: each level
  moves one fp32 block over a link and adds it); the slowest kernel sets the layer's pace, since a layer's
  kernels run as a dataflow pipeline over the tokens;
- fabric: the most loaded link's bytes over the link bandwidth, plus the hop latency of the longest route;
- stream: the layer's weight bytes over the target's I/O rate. Streaming is double-buffered, so layer i's
  compute overlaps layer i+1's stream; the first layer's stream is exposed.
step = stream(0) + sum over layers of max(compute(i), fabric(i), stream(i+1)).
Pipelined mode (every layer resident in its own band of PEs): no streaming; tokens flow through the layers,
so step = the slowest layer's time + the pipeline's fill (every layer's time for one token).
The bound is the largest of: all FLOPs over every usable PE at peak, and (weight streaming) all weight bytes
over the I/O rate.
Each term of the step is at least its share of the matching bound, so step >= bound holds by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from wsc.program import DTYPE_SIZE, KernelPlan, Program
from wsc.targets import Target


def kernel_seconds(flops: int, plan: KernelPlan, rate: float, target: Target) -> float:
    seconds = flops / (plan.active_pes * rate)
    if plan.k_splits > 1:
        block = math.ceil(plan.rows / plan.row_blocks) * math.ceil(plan.cols / plan.col_blocks)
        levels = math.ceil(math.log2(plan.k_splits))
        cycles = block * 4 / target.link_bytes_per_cycle + target.hop_latency_cycles  # send one fp32 block
        seconds += levels * (cycles / target.clock_hz + block / rate)  # ... then add it
    return seconds


@dataclass(frozen=True)
class Estimate:
    name: ClassVar[str] = "estimate"

    def __call__(self, program: Program) -> Program:
        graph, target = program.graph, program.target
        rate = target.flops_per_cycle_per_pe[program.dtype] * target.clock_hz  # FLOP/s of one PE
        size = DTYPE_SIZE[program.dtype]
        layers = []
        for layer in program.layers:
            compute = max(
                (kernel_seconds(graph[n].flops, plan, rate, target) for n, plan in layer.kernels.items()),
                default=0.0,
            )
            fabric = 0.0
            if layer.routes is not None:
                fabric = (layer.routes.max_link_load / (target.link_bytes_per_cycle * target.clock_hz)
                          + layer.routes.longest_route_hops * target.hop_latency_cycles / target.clock_hz)
            weight_bytes = layer.streamed_bytes(graph, size)
            layers.append({
                "layer": layer.name,
                "compute_seconds": compute,
                "fabric_seconds": fabric,
                "stream_seconds": weight_bytes / target.io_bytes_per_second,
                "flops": sum(graph[n].flops for n in layer.kernels),
                "weight_bytes": weight_bytes,
                "pes": sum(plan.pes for plan in layer.kernels.values()),
            })
        if program.mode == "pipelined":
            step = self.pipelined(layers, program.tokens)
        else:
            step = self.streamed(layers)
        total_flops = sum(e["flops"] for e in layers)
        total_bytes = sum(e["weight_bytes"] for e in layers) if program.mode != "pipelined" else 0
        bounds = {
            "compute": total_flops / (target.usable_pes * rate),
            "stream": total_bytes / target.io_bytes_per_second,
        }
        time_by_term = {term: sum(e["seconds"] for e in layers if e["bound"] == term)
                        for term in ("compute", "fabric", "stream")}
        if program.mode == "pipelined" and layers:  # the slowest layer sets the pace alone
            time_by_term = {max(layers, key=lambda e: e["seconds"])["bound"]: step}
        tokens = program.tokens
        program.estimate = {
            "mode": program.mode,
            "dtype": program.dtype,
            "step_seconds": step,
            "bound_seconds": max(bounds.values()),
            "bounds": bounds,
            "bottleneck": max(time_by_term, key=time_by_term.__getitem__),
            "tokens_per_second": tokens / step if step > 0 and tokens else 0.0,
            "compute_utilization": total_flops / (step * target.usable_pes * rate) if step > 0 else 0.0,
            "layers": layers,
        }
        return program

    @staticmethod
    def streamed(layers: list[dict]) -> float:
        """Weight streaming: one layer at a time, the next layer's weights streaming in while it computes."""
        step = layers[0]["stream_seconds"] if layers else 0.0
        for i, entry in enumerate(layers):
            next_stream = layers[i + 1]["stream_seconds"] if i + 1 < len(layers) else 0.0
            terms = {"compute": entry["compute_seconds"], "fabric": entry["fabric_seconds"],
                     "stream": next_stream}
            entry["bound"] = max(terms, key=terms.__getitem__)
            entry["seconds"] = terms[entry["bound"]]
            step += entry["seconds"]
        if layers:  # the exposed first stream is streaming time too
            layers[0]["seconds"] += layers[0]["stream_seconds"]
        return step

    @staticmethod
    def pipelined(layers: list[dict], tokens: int) -> float:
        """Pipelined: every layer resident, tokens flowing through them one after another; the slowest layer
        sets the pace, and the pipeline fills once per step (its other layers' share of one token)."""
        for entry in layers:
            entry["stream_seconds"] = 0.0  # weights were loaded once, before the first step
            terms = {"compute": entry["compute_seconds"], "fabric": entry["fabric_seconds"]}
            entry["bound"] = max(terms, key=terms.__getitem__)
            entry["seconds"] = terms[entry["bound"]]
        slowest = max((e["seconds"] for e in layers), default=0.0)
        fill = sum(e["seconds"] for e in layers) / max(tokens, 1)
        return slowest + fill
