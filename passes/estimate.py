"""estimate: an analytical time per step on the target, layer by layer, the roofline bound under it, and the
same for a training step on one or more systems. Every term is documented in docs/performance-model.md.

Per kernel: its FLOPs over its computing PEs at the dtype's rate, or its SRAM traffic over the PE's SRAM ports
if that is slower (passes/sram_traffic.py), plus the reduction of a split K's partial sums.
Per layer and pass (one micro-batch), the terms:
- compute: the slowest kernel (a layer's kernels run as a dataflow pipeline over the tokens, so it sets the
  pace) plus the pipeline's fill: the other kernels' time for the first wave of tokens (one token row per row
  block) to reach it;
- fabric: the most loaded link's bytes over the link bandwidth, plus the hop latency of the longest route;
- stream: the layer's weight bytes over the target's I/O rate.
The step runs each system's passes back to back, layer after layer, streaming the next layer's weights while
one computes (passes/schedule.py). Pipelined mode (every layer resident in its own band): no streaming; the
slowest layer sets the pace of every pass, and the pipeline fills once per step.
The bound is the largest of: all FLOPs over every usable PE at peak, and (weight streaming) all streamed bytes
over the I/O rate. Each term of the step is at least its share of the matching bound, so step >= bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from wsc import ops
from wsc.core.ir import Node
from wsc.core.program import DTYPE_SIZE, KernelPlan, Layer, Program
from wsc.passes import schedule
from wsc.passes.sram_traffic import sram_seconds
from wsc.targets import Target


def imbalance(plan: KernelPlan) -> float:
    """The busiest PE's share of the work over the average PE's: tiles differ by up to one row or column,
    and the kernel is done when its largest tile is."""
    tr, tc = plan.largest_tile
    return tr * tc * plan.row_blocks * plan.col_blocks / max(plan.rows * plan.cols, 1)


def kernel_seconds(flops: int, plan: KernelPlan, rate: float, target: Target, sram: float = 0.0) -> float:
    """The slower of the busiest PE's arithmetic and its SRAM traffic (`sram` seconds), then the K-split
    reduction: a binary tree over the slices, each level moving one fp32 block over a link and adding it."""
    seconds = max(flops * imbalance(plan) / (plan.active_pes * rate), sram)
    if plan.k_splits > 1:
        tr, tc = plan.largest_tile
        block = tr * tc
        levels = math.ceil(math.log2(plan.k_splits))
        cycles = block * 4 / target.link_bytes_per_cycle + target.hop_latency_cycles  # send one fp32 block
        seconds += levels * (cycles / target.clock_hz + block / rate)  # ... then add it
    return seconds


def backward_flops(node: Node) -> int:
    """FLOPs of a kernel's backward pass (the op table's rule: about twice the forward; an embedding
    scatter-adds its output gradient into the table)."""
    return ops.kernel(node.op).backward_flops(node)


def swarmx_seconds(systems: int, gradient_bytes: int, io_bytes_per_second: float) -> float:
    """SwarmX reduces gradients in a tree as they stream out of the systems, at the systems' I/O rate, so the
    reduction hides behind the streaming except at the end: the last gradients out are stored and forwarded
    once per level of the tree (a modelling choice: SwarmX's internals are not public)."""
    return math.ceil(math.log2(systems)) * gradient_bytes / io_bytes_per_second if systems > 1 else 0.0


@dataclass(frozen=True)
class Estimate:
    name: ClassVar[str] = "estimate"

    def __call__(self, program: Program) -> Program:
        target = program.target
        rate = target.pe_flops(program.dtype)
        layers = [self.layer_terms(program, layer, rate) for layer in program.layers]
        passes = program.passes_per_system
        pass_flops = sum(e["flops"] for e in layers)
        pass_bytes = sum(e["weight_bytes"] for e in layers)
        streaming = program.mode != "pipelined"
        peak = target.peak_flops(program.dtype)
        timeline: list[schedule.Slot] = []
        if streaming:
            step, timeline, by_term = schedule.run(schedule.forward_phases(layers, passes))
            summarize(layers, timeline, layers[0]["stream_seconds"] if layers else 0.0)
        else:
            step, by_term = self.pipelined(layers, passes, program.tokens / program.micro_batches)
        bounds = {"compute": passes * pass_flops / peak,
                  "stream": passes * pass_bytes / target.io_bytes_per_second if streaming else 0.0}
        estimate = {
            "mode": program.mode,
            "dtype": program.dtype,
            "step_seconds": step,
            "bound_seconds": max(bounds.values()),
            "bounds": bounds,
            "bottleneck": max(by_term, key=by_term.__getitem__) if by_term else "compute",
            "tokens_per_second": program.tokens / step if step > 0 else 0.0,
            "compute_utilization": passes * pass_flops / (step * peak) if step > 0 else 0.0,
            "micro_batches": program.micro_batches,
            "micro_batch_tokens": program.tokens // program.micro_batches,
            "systems": program.systems,
            "passes_per_system": passes,
            "training": self.training(program, layers, rate),
            "layers": layers,
        }
        return replace(program, estimate=estimate, timeline=timeline)

    @staticmethod
    def layer_terms(program: Program, layer: Layer, rate: float) -> dict[str, Any]:
        """One pass's terms for a layer, forward and backward."""
        graph, target = program.graph, program.target
        size = DTYPE_SIZE[program.dtype]
        forward, backward, waves = [], [], []
        for name, plan in layer.kernels.items():
            node = graph[name]
            sram = sram_seconds(graph, node, plan, target, size)
            forward.append(kernel_seconds(node.flops, plan, rate, target, sram))
            backward.append(kernel_seconds(backward_flops(node), plan, rate, target, 2 * sram))
            waves.append(plan.row_blocks / max(plan.rows, 1))  # one token row per row block: a wave's share
        layer_kernel_seconds = dict(zip(layer.kernels, forward, strict=True))
        # The slowest kernel sets the pace once every other kernel has passed it the first wave.
        slowest = forward.index(max(forward)) if forward else 0
        fill = sum(t * w for i, (t, w) in enumerate(zip(forward, waves, strict=True)) if i != slowest)
        fabric = 0.0
        if layer.routes is not None:
            fabric = (layer.routes.max_link_load / (target.link_bytes_per_cycle * target.clock_hz)
                      + layer.routes.longest_route_hops * target.hop_latency_cycles / target.clock_hz)
        weight_bytes = layer.streamed_bytes(graph, size)
        return {
            "layer": layer.name,
            "compute_seconds": max(forward, default=0.0) + fill,
            "fill_seconds": fill,
            "fabric_seconds": fabric,
            "stream_seconds": weight_bytes / target.io_bytes_per_second,
            "backward_compute_seconds": max(backward, default=0.0) + 2 * fill,
            "flops": sum(graph[n].flops for n in layer.kernels),
            "backward_flops": sum(backward_flops(graph[n]) for n in layer.kernels),
            "weight_bytes": weight_bytes,
            "pes": sum(plan.pes for plan in layer.kernels.values()),
            "kernel_seconds": layer_kernel_seconds,
        }

    @staticmethod
    def pipelined(layers: list[dict], passes: int, pass_tokens: float) -> tuple[float, dict[str, float]]:
        """Every layer resident, tokens flowing through them one after another: the slowest layer sets the
        pace of every pass, and the pipeline fills once per step (the other layers' share of one token)."""
        for entry in layers:
            entry["stream_seconds"] = 0.0  # weights were loaded once, before the first step
            terms = {"compute": entry["compute_seconds"], "fabric": entry["fabric_seconds"]}
            entry["bound"] = max(terms, key=terms.__getitem__)
            entry["seconds"] = terms[entry["bound"]]
        if not layers:
            return 0.0, {}
        slowest = max(layers, key=lambda e: e["seconds"])
        step, _ = schedule.pipelined([e["seconds"] for e in layers], passes, pass_tokens)
        return step, {slowest["bound"]: step}

    def training(self, program: Program, layers: list[dict], rate: float) -> dict[str, Any]:
        """A training step (forward, backward, gradients out) on `systems` wafers, each running its share of
        the micro-batches, and how well that scales against one wafer running them all."""
        target, systems = program.target, program.systems
        io = target.io_bytes_per_second
        peak = target.peak_flops(program.dtype)
        flops = sum(e["flops"] + e["backward_flops"] for e in layers)
        total_bytes = sum(e["weight_bytes"] for e in layers)

        def step_on(passes: int, n_systems: int) -> tuple[float, str, float]:
            """The step, its bottleneck, and the SwarmX reduction's exposed tail within it."""
            if program.mode == "pipelined":  # weights and optimizer on the wafer; gradients leave only to reduce
                terms = [{"compute": e["compute_seconds"] + e["backward_compute_seconds"],
                          "fabric": 2 * e["fabric_seconds"]} for e in layers]
                times = [max(t.values()) for t in terms]
                slowest = terms[times.index(max(times))]
                tail = (total_bytes / io + swarmx_seconds(n_systems, max(e["weight_bytes"] for e in layers), io)
                        if n_systems > 1 else 0.0)
                step = schedule.pipelined(times, passes, program.tokens / program.micro_batches)[0] + tail
                bottleneck = "stream" if tail > passes * max(times) else max(slowest, key=slowest.__getitem__)
                return step, bottleneck, 0.0  # reported as 0: the whole gradient exchange is in `tail` above
            step, _, by_term = schedule.run(schedule.training_phases(layers, passes))
            tail = swarmx_seconds(n_systems, layers[0]["weight_bytes"], io)
            return step + tail, max(by_term, key=by_term.__getitem__), tail

        if not layers:
            return {}
        passes = program.passes_per_system
        step, bottleneck, swarmx = step_on(passes, systems)
        single = step_on(program.micro_batches, 1)[0] if systems > 1 else step
        bounds = {"compute": passes * flops / peak,
                  "stream": passes * 2 * total_bytes / io if program.mode != "pipelined" else 0.0}
        return {
            "step_seconds": step,
            "bound_seconds": max(bounds.values()),
            "bounds": bounds,
            "bottleneck": bottleneck,
            "tokens_per_second": program.tokens / step if step > 0 else 0.0,
            "compute_utilization": passes * flops / (step * peak) if step > 0 else 0.0,
            "swarmx_seconds": swarmx,
            "single_system_step_seconds": single,
            "scaling_efficiency": single / (systems * step) if step > 0 else 0.0,
        }


def summarize(layers: list[dict], slots: list[schedule.Slot], first_stream: float) -> None:
    """Each layer's share of the step (its slots over every pass; layer 0 also owns the exposed first
    stream), so the layers' seconds add up to the step, and the term that bounds most of it."""
    time_by_term: list[dict[str, float]] = [{} for _ in layers]
    for slot in slots:
        terms = time_by_term[slot.phase.layer]
        terms[slot.bound] = terms.get(slot.bound, 0.0) + slot.seconds
    if layers:
        time_by_term[0]["stream"] = time_by_term[0].get("stream", 0.0) + first_stream
    for entry, terms in zip(layers, time_by_term, strict=True):
        entry["seconds"] = sum(terms.values())
        entry["bound"] = max(terms, key=terms.__getitem__) if terms else "compute"
