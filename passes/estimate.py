"""estimate: an analytical time per step on the target, layer by layer, the roofline bound under it, and the
same for a training step on one or more systems. Every term is documented in docs/performance-model.md.

Per kernel: its FLOPs over its computing PEs at the dtype's rate, or its SRAM traffic over the PE's SRAM ports
if that is slower (passes/sram_traffic.py), plus the reduction of a split K's partial sums.
Per layer and pass (one micro-batch), the terms:
- compute: the slowest kernel (a layer's kernels run as a dataflow pipeline over the tokens, so it sets the
  pace) plus the pipeline's fill: the other kernels' time for the first wave of tokens (one token row per row
  block) to reach it;
- fabric: the most loaded link's bytes over the link bandwidth, plus the hop latency of the longest route;
- stream: the layer's weight bytes over the target's I/O rate, or, if slower, their delivery across the
  wafer from its west edge to the kernels that read them (`weight_delivery`: placement decides it);
- fill also waits for the first wave to cross the layer's longest chain of flows, hop by hop.
The step runs each system's passes back to back, layer after layer, streaming the next layer's weights while
one computes (passes/schedule.py). Pipelined mode (every layer resident in its own band): no streaming; the
slowest layer sets the pace of every pass, and the pipeline fills once per step.
The bound is the largest of: all FLOPs over every usable PE at peak, and (weight streaming) all streamed bytes
over the I/O rate. Each term of the step is at least its share of the matching bound, so step >= bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from wsc import ops
from wsc.core.ir import Node
from wsc.core.program import DTYPE_SIZE, KernelPlan, Layer, Program
from wsc.passes import schedule
from wsc.passes.sram_traffic import sram_seconds
from wsc.targets import Target

if TYPE_CHECKING:
    from wsc.passes.routers.common import Routes


def imbalance(plan: KernelPlan) -> float:
    """The busiest PE's share of the work over the average PE's: tiles differ by up to one row or column,
    and the kernel is done when its largest tile is."""
    tr, tc = plan.largest_tile
    return tr * tc * plan.row_blocks * plan.col_blocks / max(plan.rows * plan.cols, 1)


def sustained_rate(target: Target, dtype: str) -> float:
    """FLOP/s one PE's kernels sustain: its peak rate times the target's fitted `compute_efficiency` (1 for
    an uncalibrated target; docs/calibration.md). The bound keeps the peak, so the step stays above it."""
    return target.pe_flops(dtype) * target.compute_efficiency


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


def weight_delivery(layer: Layer, weight_bytes: dict[str, int], target: Target) -> tuple[float, int, int]:
    """Streamed weights entering the wafer at its west edge and crossing it to the kernels that read them:
    (seconds, busiest link's bytes, hops of the farthest lane).

    A modelling choice (where the wafer's I/O meets its fabric is not public; weights "stream in from the
    wafer edge", docs/hardware.md): each kernel's weights arrive on one lane per row of its rectangle that
    holds its tiles, split evenly over those rows, and travel east along the row to the rectangle, then across
    it. A kernel at column 0 takes them straight from the edge. Kernels that share rows share those rows'
    links, so the busiest link of a row carries the lanes of every kernel east of the edge in it."""
    if layer.placement is None or not weight_bytes:
        return 0.0, 0, 0
    row_load: dict[int, float] = {}
    hops = 0
    for name, nbytes in weight_bytes.items():
        rect = layer.placement.rects[name]
        hops = max(hops, rect.x + rect.w - 1)
        if rect.x == 0 and rect.w == 1:
            continue  # on the edge itself: no link carries its weights
        # The rows that hold its tiles (row-major from the top): a rectangle's spare rows, kept to step around
        # dead PEs, take no lane.
        plan = layer.kernels.get(name)
        rows = rect.h if plan is None else max(1, min(rect.h, math.ceil(plan.cut.pes / max(rect.w, 1))))
        for row in range(rect.y, rect.y + rows):
            row_load[row] = row_load.get(row, 0.0) + nbytes / rows
    busiest = max(row_load.values(), default=0.0)
    seconds = (busiest / target.link_bytes_per_cycle + hops * target.hop_latency_cycles) / target.clock_hz
    return seconds, math.ceil(busiest), hops


def routes_seconds(routes: Routes, target: Target) -> float:
    """The fabric's time for routed flows: the busiest link's bytes over the link bandwidth, plus the hops of
    the longest lane at the hop latency."""
    return (routes.max_link_load / (target.link_bytes_per_cycle * target.clock_hz)
            + routes.longest_route_hops * target.hop_latency_cycles / target.clock_hz)


def handoff_seconds(program: Program) -> float:
    """One pass of the activations between pipelined layers over the fabric (0 when not pipelined, or for one
    layer)."""
    return 0.0 if program.handoff_routes is None else routes_seconds(program.handoff_routes, program.target)


def chain_hops(layer: Layer) -> int:
    """Hops of the layer's longest chain of flows (kernel to kernel, each flow's longest lane): what the first
    wave of tokens crosses before the last kernel of the chain starts."""
    if layer.routes is None:
        return 0
    hops = {(e["src"], e["dst"]): int(e["hops"]) for e in layer.routes.edges}
    reach: dict[str, int] = {}
    for name in layer.kernels:  # the layer's kernels are in execution order, so producers come first
        reach[name] = max((reach.get(src, 0) + h for (src, dst), h in hops.items() if dst == name), default=0)
    return max(reach.values(), default=0)


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
        rate = sustained_rate(target, program.dtype)
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
            step, by_term = self.pipelined(layers, passes, program.tokens / program.micro_batches,
                                           handoff_seconds(program))
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
            "handoff_fabric_seconds": handoff_seconds(program),
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
        # The slowest kernel sets the pace once every other kernel has passed it the first wave, and the wave
        # has crossed the fabric between them.
        slowest = forward.index(max(forward)) if forward else 0
        fill = sum(t * w for i, (t, w) in enumerate(zip(forward, waves, strict=True)) if i != slowest)
        fill += chain_hops(layer) * target.hop_latency_cycles / target.clock_hz
        fabric = 0.0 if layer.routes is None else routes_seconds(layer.routes, target)
        weight_bytes = layer.streamed_bytes(graph, size)
        readers = {name: sum(graph[i].numel * size for i in graph[name].inputs if graph[i].op == "param")
                   for name in layer.kernels}
        delivery, delivery_link, delivery_hops = weight_delivery(
            layer, {name: nbytes for name, nbytes in readers.items() if nbytes}, target)
        stream = max(weight_bytes / target.io_bytes_per_second, delivery)
        compute = max(forward, default=0.0) + fill
        return {
            "layer": layer.name,
            "compute_seconds": compute,
            "fill_seconds": fill,
            "fabric_seconds": fabric,
            "stream_seconds": stream,
            "weight_delivery_seconds": delivery,
            "weight_link_load": delivery_link,
            "weight_hops": delivery_hops,
            # How far the fabric term is below the term that binds the layer: a better placement moves the
            # step only where this is small (negative: the fabric binds, by that much).
            "fabric_slack_seconds": max(compute, stream) - fabric,
            "backward_compute_seconds": max(backward, default=0.0) + 2 * fill,
            "flops": sum(graph[n].flops for n in layer.kernels),
            "backward_flops": sum(backward_flops(graph[n]) for n in layer.kernels),
            "weight_bytes": weight_bytes,
            "pes": sum(plan.pes for plan in layer.kernels.values()),
            "store_bytes": layer.store_bytes,
            "kernel_seconds": layer_kernel_seconds,
        }

    @staticmethod
    def pipelined(layers: list[dict], passes: int, pass_tokens: float,
                  handoff: float = 0.0) -> tuple[float, dict[str, float]]:
        """Every layer resident, tokens flowing through them one after another: the slowest layer sets the
        pace of every pass, and the pipeline fills once per step (the other layers' share of one token). The
        activations handed between layers (`handoff` seconds a pass, all such flows sharing the fabric at
        once) are one more stage every pass goes through: when they are the slowest, the fabric binds."""
        for entry in layers:
            entry["stream_seconds"] = 0.0  # weights were loaded once, before the first step
            entry["weight_delivery_seconds"] = 0.0
            entry["fabric_slack_seconds"] = entry["compute_seconds"] - entry["fabric_seconds"]
            terms = {"compute": entry["compute_seconds"], "fabric": entry["fabric_seconds"]}
            entry["bound"] = max(terms, key=terms.__getitem__)
            entry["seconds"] = terms[entry["bound"]]
        if not layers:
            return 0.0, {}
        slowest = max(layers, key=lambda e: e["seconds"])
        stages = [e["seconds"] for e in layers] + ([handoff] if handoff > 0 else [])
        step, _ = schedule.pipelined(stages, passes, pass_tokens)
        return step, {"fabric" if handoff > slowest["seconds"] else slowest["bound"]: step}

    def training(self, program: Program, layers: list[dict], rate: float) -> dict[str, Any]:
        """A training step (forward, backward, gradients out) on `systems` wafers, each running its share of
        the micro-batches, and how well that scales against one wafer running them all."""
        target, systems = program.target, program.systems
        io = target.io_bytes_per_second
        peak = target.peak_flops(program.dtype)
        flops = sum(e["flops"] + e["backward_flops"] for e in layers)
        total_bytes = sum(e["weight_bytes"] for e in layers)
        # The step's boundary: the weights are updated where they live before the next step's first layer
        # can stream, the one wait the vendor says streaming cannot hide; its length is fitted
        # (docs/calibration.md), once per step whatever the systems.
        boundary = target.step_overhead_seconds

        def step_on(passes: int, n_systems: int) -> tuple[float, str, float]:
            """The step, its bottleneck, and the SwarmX reduction's exposed tail within it."""
            if program.mode == "pipelined":  # weights and optimizer on the wafer; gradients leave only to reduce
                terms = [{"compute": e["compute_seconds"] + e["backward_compute_seconds"],
                          "fabric": 2 * e["fabric_seconds"]} for e in layers]
                times = [max(t.values()) for t in terms]
                slowest = terms[times.index(max(times))]
                tail = (total_bytes / io + swarmx_seconds(n_systems, max(e["weight_bytes"] for e in layers), io)
                        if n_systems > 1 else 0.0)
                handoff = 2 * handoff_seconds(program)  # activations down, their gradients back up
                stages = times + ([handoff] if handoff > 0 else [])
                step = schedule.pipelined(stages, passes, program.tokens / program.micro_batches)[0] + tail + boundary
                bottleneck = "stream" if tail > passes * max(stages) else (
                    "fabric" if handoff > max(times) else max(slowest, key=slowest.__getitem__))
                return step, bottleneck, 0.0  # reported as 0: the whole gradient exchange is in `tail` above
            step, by_term, tail = streamed_training_step(layers, passes, n_systems, target)
            return step, max(by_term, key=by_term.__getitem__), tail

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
            "step_boundary_seconds": boundary,
            "single_system_step_seconds": single,
            "scaling_efficiency": single / (systems * step) if step > 0 else 0.0,
        }


def streamed_training_step(layers: list[dict], passes: int, systems: int,
                           target: Target) -> tuple[float, dict[str, float], float]:
    """A weight-streaming training step over per-layer terms: the schedule of its phases, the SwarmX tail on
    `systems` systems and the step boundary; with the time each term bounds (the boundary binds a step it
    takes most of) and the tail."""
    step, _, by_term = schedule.run(schedule.training_phases(layers, passes))
    tail = swarmx_seconds(systems, layers[0]["weight_bytes"], target.io_bytes_per_second) if layers else 0.0
    by_term["boundary"] = target.step_overhead_seconds
    return step + tail + target.step_overhead_seconds, by_term, tail


def training_floor(program: Program, scale: float, passes: int) -> float:
    """A floor under the training step of the same model run as `passes` passes of `scale` times the compiled
    pass's tokens (one system's share; weight streaming), worked from the compiled program's estimate without
    compiling that size: the same phases scheduled with each layer's compute, forward and backward, at its
    FLOPs (linear in the tokens) over the whole wafer at its peak, the fabric free, and each stream at the
    I/O rate. A layer's kernels never hold more than the usable PEs nor compute faster than the peak, and its
    slowest kernel is at least their average, so every slot of the real schedule is at least its slot here.
    Pipelined mode has no floor here (0)."""
    if program.mode == "pipelined" or not program.estimate:
        return 0.0
    target = program.target
    peak, io = target.peak_flops(program.dtype), target.io_bytes_per_second
    layers = [{"compute_seconds": e["flops"] * scale / peak,
               "backward_compute_seconds": e["backward_flops"] * scale / peak,
               "fabric_seconds": 0.0, "stream_seconds": e["weight_bytes"] / io, "weight_bytes": e["weight_bytes"]}
              for e in program.estimate["layers"]]
    return streamed_training_step(layers, passes, program.systems, target)[0]


def scaled_training_step(program: Program, scale: float, passes: int) -> float:
    """The training step predicted for `passes` passes of `scale` times the compiled pass's tokens, at the
    compiled program's cuts and placement: each layer's kernel time and fabric load grow with its tokens,
    its fill (one wave of rows through the kernels) and its weights' stream do not. What the micro-batch
    search ranks sizes by without compiling them; pipelined mode, where a step fills its pipeline once,
    gives the compiled step (a smaller pass streams nothing less and fills no less)."""
    if not program.estimate:
        return 0.0
    if program.mode == "pipelined":
        return float(program.estimate["training"].get("step_seconds", 0.0))
    layers = [{**e, "compute_seconds": e["fill_seconds"] + (e["compute_seconds"] - e["fill_seconds"]) * scale,
               "backward_compute_seconds": 2 * e["fill_seconds"]
               + (e["backward_compute_seconds"] - 2 * e["fill_seconds"]) * scale,
               "fabric_seconds": e["fabric_seconds"] * scale}
              for e in program.estimate["layers"]]
    return streamed_training_step(layers, passes, program.systems, program.target)[0]


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
