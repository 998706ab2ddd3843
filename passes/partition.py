"""partition: cut each kernel into PE tiles and give it the rectangle of PEs that computes them.

Sizing follows the ISPD 2020 formulation: the slowest kernel sets a layer's throughput, so PEs are handed out
in proportion to each kernel's work, over a share (`fill`) of the usable PEs that leaves the placer room to
pack. No kernel gets fewer PEs than its per-PE SRAM needs.

A kernel's iteration space is its output viewed as [rows, cols] (rows = tokens, or tokens x heads) and, for a
matmul, the reduction dimension K. It is cut into row_blocks x col_blocks output blocks, aspect following the
output's so blocks stay near square, and K into k_splits slices when a PE cannot hold a block's rows of the
left operand whole: a K split trades SRAM for a partial-sum reduction across PEs. The rectangle is the block
grid itself when it fits the mesh (PE (i, j) computes block (i, j)), else the blocks fold row-major into a
rectangle as tall as the mesh allows (see KernelPlan for the PE numbering).

Per-PE SRAM model (weight-streaming dataflow, output-stationary blocks), in the target's precision: a matmul
PE keeps its rows of the left operand over its K slice, fp32 accumulators for its block, a double buffer for
the streamed right operand's column, and, when K is split, a buffer for the partial sums it reduces; an
elementwise PE keeps its input and output tiles. `reserved_bytes` per PE is held back for code, the stack and
the router's buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from wsc.errors import WscError
from wsc.ir import Graph, Node
from wsc.program import DTYPE_SIZE, KernelPlan, Layer, Program
from wsc.targets import Target

ACCUMULATOR_BYTES = 4


@dataclass(frozen=True)
class Cut:
    """A kernel's iteration space cut: output blocks and K slices."""

    row_blocks: int
    col_blocks: int
    k_splits: int = 1

    @property
    def pes(self) -> int:
        return self.row_blocks * self.col_blocks * self.k_splits


def output_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """Every kernel's output is tiled as 2-D [rows, cols]: cols is the last dim."""
    cols = shape[-1] if shape else 1
    return int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1, cols


def reduction_dim(graph: Graph, node: Node) -> int:
    return graph[node.inputs[0]].shape[-1] if node.op == "matmul" else 1


def sram_bytes(graph: Graph, node: Node, cut: Cut, size: int) -> int:
    rows, cols = output_view(node.shape)
    tr, tc = math.ceil(rows / cut.row_blocks), math.ceil(cols / cut.col_blocks)
    if node.op == "matmul":
        k = math.ceil(reduction_dim(graph, node) / cut.k_splits)
        bias = tc * size if node.attrs.get("bias") else 0
        partials = tr * tc * ACCUMULATOR_BYTES if cut.k_splits > 1 else 0
        return tr * k * size + tr * tc * ACCUMULATOR_BYTES + 2 * tc * size + bias + partials
    if node.op == "embedding":
        return tr * tc * size + tr * 8 + 2 * tc * size
    tensors = sum(1 for i in node.inputs if graph[i].numel > 1)
    params = 2 * tc * size if node.op == "layernorm" else 0
    return (tensors + 1) * tr * tc * size + params


def tile_table(rows: int, cols: int, row_blocks: int, col_blocks: int) -> np.ndarray:
    """(r0, r1, c0, c1) of block (i, j) at index i * col_blocks + j; blocks differ by at most one row or
    column."""
    r = np.arange(row_blocks + 1, dtype=np.int64) * rows // row_blocks
    c = np.arange(col_blocks + 1, dtype=np.int64) * cols // col_blocks
    i = np.repeat(np.arange(row_blocks), col_blocks)
    j = np.tile(np.arange(col_blocks), row_blocks)
    return np.stack([r[i], r[i + 1], c[j], c[j + 1]], axis=1)


def grid_for_area(rows: int, cols: int, area: int, max_h: int | None = None,
                  max_w: int | None = None) -> tuple[int, int]:
    """Blocks (h, w) with h * w close to `area`, h / w following rows / cols, within the given caps."""
    max_h, max_w = min(rows, max_h or rows), min(cols, max_w or cols)
    h = min(max(1, round(math.sqrt(area * rows / cols))), max_h)
    w = min(max(1, area // h), max_w)
    h = min(max(1, area // w), max_h)
    return h, w


def rectangle(cut: Cut, target: Target) -> tuple[int, int] | None:
    """The PE rectangle (h, w) for a cut: the block grid itself (K slices stacked in the rows) when it fits
    the mesh, else its PEs folded row-major into the tallest rectangle the mesh allows."""
    if cut.row_blocks * cut.k_splits <= target.rows and cut.col_blocks <= target.cols:
        return cut.row_blocks * cut.k_splits, cut.col_blocks
    h = min(target.rows, cut.pes)
    w = math.ceil(cut.pes / h)
    return (h, w) if w <= target.cols else None


@dataclass(frozen=True)
class Partition:
    name: ClassVar[str] = "partition"
    fill: float = 0.5
    reserved_bytes: int = 8192

    def __call__(self, program: Program) -> Program:
        mapped: dict[str, Layer] = {}
        for layer in program.layers:
            twin = mapped.get(key := layer.signature(program.graph))
            if twin is not None:  # an identical layer: same cuts, so the same tile tables serve both
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
        least = {k.name: self.smallest_cut(graph, k, size, capacity, target) for k in kernels}
        needed = sum(c.pes for c in least.values())
        if needed > budget:
            raise WscError(
                f"layer {layer.name} needs {needed} PEs to hold its kernels' tiles but {target.name} "
                f"offers {budget} ({self.fill:.0%} of {target.usable_pes} usable); use a bigger target or a "
                "smaller batch or sequence"
            )
        area = water_fill(work, {n: c.pes for n, c in least.items()}, budget)
        # Lanes square to area: cap them so that every kernel at the floor still fits the budget.
        lanes = min(self.lanes_needed(program, layer), math.isqrt(budget // len(kernels)))
        for k in kernels:
            rows, cols = output_view(k.shape)
            cut = least[k.name]
            # As many blocks as the kernel's share of PEs allows, and enough rows and columns of PEs to
            # carry the kernel's traffic in parallel lanes; K is split only as far as SRAM demands.
            for splits in range(cut.k_splits, 0, -1):
                h, w = grid_for_area(rows, cols, max(area[k.name] // splits, 1), target.rows // splits,
                                     target.cols)
                h, w = max(h, min(lanes, rows, target.rows // splits)), max(w, min(lanes, cols, target.cols))
                wider = Cut(max(h, cut.row_blocks), max(w, cut.col_blocks), splits)
                if sram_bytes(graph, k, wider, size) <= capacity and rectangle(wider, target):
                    cut = wider
                    break
            h, w = rectangle(cut, target) or rectangle(least[k.name], target)  # type: ignore[misc]
            k_dim = reduction_dim(graph, k)
            layer.kernels[k.name] = KernelPlan(
                k.name, rows, cols, h, w, tile_table(rows, cols, cut.row_blocks, cut.col_blocks),
                sram_bytes(graph, k, cut, size), work[k.name], cut.row_blocks, cut.col_blocks, cut.k_splits,
                np.arange(cut.k_splits + 1, dtype=np.int64) * k_dim // cut.k_splits,
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

    def smallest_cut(self, graph: Graph, node: Node, size: int, capacity: int, target: Target) -> Cut:
        """The fewest PEs whose tiles fit in SRAM: grow the block grid along the output's aspect, and split
        K (matmuls) when even one row of the left operand is too big for a PE."""
        rows, cols = output_view(node.shape)
        k_dim = reduction_dim(graph, node)
        area, limit = 1, rows * cols * k_dim
        while area <= limit:
            for splits in _split_counts(k_dim, area):
                # Blocks that fit the mesh as a grid first (simple rectangles pack well), folded ones after.
                for caps in ((target.rows // splits, target.cols), (None, None)):
                    h, w = grid_for_area(rows, cols, area // splits, *caps)
                    cut = Cut(h, w, splits)
                    if sram_bytes(graph, node, cut, size) <= capacity and rectangle(cut, target):
                        return cut
            area = max(area + 1, int(area * 1.25))
        raise WscError(
            f"kernel {node.name} ({node.op} {node.shape}) does not fit {target.name}: no cut of it into PE "
            f"tiles fits the {capacity} bytes a PE has free within a {target.rows}x{target.cols} mesh; use a "
            "target with more SRAM per PE or a smaller batch or sequence"
        )


def _split_counts(k_dim: int, area: int) -> list[int]:
    """K splits worth trying for `area` PEs, fewest first: powers of two up to K."""
    counts, s = [1], 2
    while s <= min(k_dim, area):
        counts.append(s)
        s *= 2
    return counts


def water_fill(work: dict[str, int], least: dict[str, int], budget: int) -> dict[str, int]:
    """PEs per kernel proportional to work, never below each kernel's SRAM minimum, summing to the budget."""
    area = dict(least)
    free = dict(work)
    while free:
        spare = budget - sum(a for n, a in area.items() if n not in free)
        total = sum(free.values())
        pinned = {n for n in free if least[n] >= spare * free[n] / total}
        if not pinned:
            for n in free:
                area[n] = max(least[n], int(spare * free[n] / total))
            break
        for n in pinned:
            free.pop(n)
    return area
