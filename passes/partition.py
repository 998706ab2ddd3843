"""partition: give each kernel of a layer a grid of PE tiles (its rectangle's size) and each PE its tile.

Sizing follows the ISPD 2020 formulation: the slowest kernel sets a layer's throughput, so areas are handed
out in proportion to each kernel's work, over a share (`fill`) of the usable PEs that leaves the placer room
to pack. No kernel gets fewer PEs than its per-PE SRAM needs. The grid's aspect follows the output's, so tiles
stay close to square in elements.

Per-PE SRAM model (weight-streaming dataflow, output-stationary tiles): a matmul PE keeps its rows of the left
operand (tile_rows x K), fp32 accumulators for its output tile, and a double buffer for the column of the
streamed right operand it needs; an elementwise PE keeps its input and output tiles. `reserved_bytes` per PE
is held back for code, the stack and the router's buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from wsc.errors import WscError
from wsc.ir import Graph, Node
from wsc.program import DTYPE_SIZE, KernelPlan, Layer, Program

ACCUMULATOR_BYTES = 4


def output_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """Every kernel's output is tiled as 2-D [rows, cols]: cols is the last dim."""
    cols = shape[-1] if shape else 1
    return int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1, cols


def sram_bytes(graph: Graph, node: Node, h: int, w: int, size: int) -> int:
    rows, cols = output_view(node.shape)
    tr, tc = math.ceil(rows / h), math.ceil(cols / w)
    if node.op == "matmul":
        k = graph[node.inputs[0]].shape[-1]
        bias = tc * size if node.attrs.get("bias") else 0
        return tr * k * size + tr * tc * ACCUMULATOR_BYTES + 2 * tc * size + bias
    if node.op == "embedding":
        return tr * tc * size + tr * 8 + 2 * tc * size
    tensors = sum(1 for i in node.inputs if graph[i].numel > 1)
    params = 2 * tc * size if node.op == "layernorm" else 0
    return (tensors + 1) * tr * tc * size + params


def tile_table(rows: int, cols: int, h: int, w: int) -> np.ndarray:
    """(r0, r1, c0, c1) of PE (i, j) at index i * w + j; splits differ by at most one row or column."""
    r = np.arange(h + 1, dtype=np.int64) * rows // h
    c = np.arange(w + 1, dtype=np.int64) * cols // w
    i = np.repeat(np.arange(h), w)
    j = np.tile(np.arange(w), h)
    return np.stack([r[i], r[i + 1], c[j], c[j + 1]], axis=1)


def grid_for_area(rows: int, cols: int, area: int, max_h: int, max_w: int) -> tuple[int, int]:
    max_h, max_w = min(rows, max_h), min(cols, max_w)
    h = min(max(1, round(math.sqrt(area * rows / cols))), max_h)
    w = min(max(1, area // h), max_w)
    h = min(max(1, area // w), max_h)
    return h, w


@dataclass(frozen=True)
class Partition:
    name: ClassVar[str] = "partition"
    fill: float = 0.5
    reserved_bytes: int = 8192

    def __call__(self, program: Program) -> Program:
        mapped: dict[str, Layer] = {}
        for layer in program.layers:
            twin = mapped.get(key := layer.signature(program.graph))
            if twin is not None:  # an identical layer: same grids, so the same tile tables serve both
                kernels = [n for n in layer.nodes if program.graph[n].is_kernel]
                layer.kernels = {
                    name: KernelPlan(**{**plan.__dict__, "node": name})
                    for name, plan in zip(kernels, twin.kernels.values(), strict=True)
                }
                continue
            self.partition_layer(program, layer)
            mapped[key] = layer
        return program

    def partition_layer(self, program: Program, layer: Layer) -> None:
        graph, target = program.graph, program.target
        size = DTYPE_SIZE[program.dtype]
        budget = int(target.usable_pes * self.fill)
        capacity = target.sram_bytes_per_pe - self.reserved_bytes
        kernels = [graph[n] for n in layer.nodes if graph[n].is_kernel]
        if not kernels:
            return
        work = {k.name: max(k.flops, k.numel) for k in kernels}
        least = {k.name: self.smallest_grid(graph, k, size, capacity, target) for k in kernels}
        needed = sum(h * w for h, w in least.values())
        if needed > budget:
            raise WscError(
                f"layer {layer.name} needs {needed} PEs to hold its kernels' tiles but {program.target.name} "
                f"offers {budget} ({self.fill:.0%} of {target.usable_pes} usable); use a bigger target or a "
                "smaller batch or sequence"
            )
        # Water-fill: areas proportional to work, never below the SRAM minimum, summing to the budget.
        area = {name: h * w for name, (h, w) in least.items()}
        free = dict(work)
        for _ in range(len(kernels)):
            spare = budget - sum(a for n, a in area.items() if n not in free)
            total = sum(free.values())
            pinned = {n for n in free if least[n][0] * least[n][1] >= spare * free[n] / total}
            if not pinned:
                for n in free:
                    area[n] = int(spare * free[n] / total)
                break
            for n in pinned:
                free.pop(n)
            if not free:
                break
        lanes = self.lanes_needed(program, layer)
        for k in kernels:
            rows, cols = output_view(k.shape)
            h, w = grid_for_area(rows, cols, max(area[k.name], 1), target.rows, target.cols)
            # Enough rows and columns of PEs to carry the kernel's traffic in parallel lanes.
            h, w = max(h, min(lanes, rows, target.rows)), max(w, min(lanes, cols, target.cols))
            lh, lw = least[k.name]
            if sram_bytes(graph, k, h, w, size) > capacity:
                h, w = max(h, lh), max(w, lw)
            layer.kernels[k.name] = KernelPlan(
                k.name, rows, cols, h, w, tile_table(rows, cols, h, w), sram_bytes(graph, k, h, w, size),
                work[k.name],
            )

    def lanes_needed(self, program: Program, layer: Layer) -> int:
        """Rows of PEs each kernel should span so the layer's traffic, even if it all shared one bundle of
        lanes, moves within the time the layer's weights take to stream in: with fewer, a tiny kernel (a
        residual add on a handful of PEs) would become the fabric's hot spot and the layer's bottleneck."""
        target = program.target
        weight_bytes = sum(program.graph[w].numel for w in layer.weights) * DTYPE_SIZE[program.dtype]
        if weight_bytes == 0:
            return 1
        stream_seconds = weight_bytes / target.io_bytes_per_second
        lane_bytes = target.link_bytes_per_cycle * target.clock_hz * stream_seconds
        return max(1, math.ceil(sum(f.bytes for f in layer.flows) / lane_bytes))

    def smallest_grid(self, graph: Graph, node: Node, size: int, capacity: int, target) -> tuple[int, int]:
        """The fewest PEs whose tiles fit in SRAM, growing the grid along the output's aspect."""
        rows, cols = output_view(node.shape)
        area = 1
        limit = min(rows, target.rows) * min(cols, target.cols)
        while True:
            h, w = grid_for_area(rows, cols, area, target.rows, target.cols)
            if sram_bytes(graph, node, h, w, size) <= capacity:
                return h, w
            if area >= limit:
                raise WscError(
                    f"kernel {node.name} ({node.op} {node.shape}) needs "
                    f"{sram_bytes(graph, node, h, w, size)} bytes per PE even on a {h}x{w} grid, more than "
                    f"the {capacity} a PE of {target.name} has free; use a target with more SRAM per PE"
                )
            area = min(limit, max(area + 1, int(area * 1.25)))
