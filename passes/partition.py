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

Per-PE SRAM: each op's own rule, in the target's precision (`sram_bytes` in its file of wsc/ops/: a matmul PE
keeps its rows of the left operand over its K slice, fp32 accumulators and a double buffer for the streamed
operand; an elementwise PE its input and output tiles). `reserved_bytes` per PE is held back for code, the stack
and the router's buffers. The cut is recorded once, as a KernelPlan's `cut`; its tiles derive from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from wsc import ops
from wsc.core.errors import DoesNotFit, WscError
from wsc.core.ir import Graph, Node
from wsc.core.mesh import mesh_of
from wsc.core.program import DTYPE_SIZE, Cut, KernelPlan, Layer, Program


def reduction_dim(graph: Graph, node: Node) -> int:
    return ops.kernel(node.op).reduction_dim(graph, node)


def sram_bytes(graph: Graph, node: Node, cut: Cut, size: int, resident: bool = False) -> int:
    """Bytes one PE holds for its tile (the op table's rule); with `resident` (pipelined mode) a weight tile
    stays in SRAM instead of streaming past."""
    return ops.kernel(node.op).sram_bytes(graph, node, cut, size, resident)


def activation_store_bytes(program: Program, layer: Layer) -> int:
    """Bytes of activations held whole for the pass while `layer` has the wafer: its activation store.

    Tokens flow through a layer's kernels a row at a time, so a kernel's PEs hold their weight tile and the
    rows in flight (each op's `sram_bytes`), not the pass. What must stay whole is, in weight streaming, every
    value the layer reads that an earlier layer or the program's inputs made, and every value it makes that a
    later layer reads (the whole pass goes through one layer before the next takes the wafer); in both modes,
    the values a kernel reads again over the pass (`pass_held_inputs`: attention's keys and values). Each
    value once, at the program's dtype (token ids at their own width). The model's outputs are not held:
    they leave the wafer as they are made (or, in training, feed the loss)."""
    graph, size = program.graph, DTYPE_SIZE[program.dtype]
    streaming = program.mode != "pipelined"
    mine = set(layer.nodes)
    held: set[str] = set()
    for name in layer.nodes:
        node = graph[name]
        if streaming:
            held.update(i for i in node.inputs if i not in mine and graph[i].op not in ("param", "const"))
            if any(user not in mine for user in graph.users(name)):
                held.add(name)
        if node.is_kernel:
            held.update(node.inputs[i] for i in ops.kernel(node.op).pass_held_inputs(graph, node))
    return sum(graph[n].nbytes if graph[n].op == "input" else graph[n].numel * size for n in held)


def grid_for_area(rows: int, cols: int, area: int, max_h: int | None = None,
                  max_w: int | None = None) -> tuple[int, int]:
    """Blocks (h, w) with h * w close to `area`, h / w following rows / cols, within the given caps."""
    max_h, max_w = min(rows, max_h or rows), min(cols, max_w or cols)
    h = min(max(1, round(math.sqrt(area * rows / cols))), max_h)
    w = min(max(1, area // h), max_w)
    h = min(max(1, area // w), max_h)
    return h, w


@dataclass(frozen=True)
class Area:
    """Where a layer's kernels may go: `rows` x `cols` of the mesh holding `pes` working PEs."""

    rows: int
    cols: int
    pes: int
    region: tuple[int, int] | None = None  # pipelined mode: the band of mesh rows (first, count) of the layer
    dead_lines: bool = False  # dead rows or columns took some of the mesh's rows or columns from it


def rectangle(cut: Cut, area: Area, fold_strips: bool = False) -> tuple[int, int] | None:
    """The PE rectangle (h, w) for a cut: the block grid itself (K slices stacked in the rows) when it fits
    the area, else its PEs folded row-major into a rectangle as near square as the area allows (a strip as
    tall as the mesh would cut it in two for every other kernel). With `fold_strips`, a grid taller than half
    the area is folded too: many such strips side by side leave no band wide enough for a wide kernel."""
    tall = fold_strips and cut.row_blocks * cut.k_splits > area.rows // 2 and cut.pes > 1
    if cut.row_blocks * cut.k_splits <= area.rows and cut.col_blocks <= area.cols and not tall:
        return cut.row_blocks * cut.k_splits, cut.col_blocks
    h = min(area.rows, max(math.isqrt(cut.pes), math.ceil(cut.pes / area.cols)))
    w = math.ceil(cut.pes / h)
    return (h, w) if w <= area.cols else None


def layer_areas(program: Program, reserved_bytes: int) -> list[Area]:
    """Weight streaming: every layer has the whole mesh in turn. Pipelined: every layer is resident at once,
    each in its own band of rows (the area's `region`, which becomes the layer's), and with it its weights and
    its activation store (`Layer.store_bytes`). Dead PEs and what a dead row or column cuts off (see
    place.mesh_of) are not counted."""
    mesh = mesh_of(program.target)
    dead = mesh.dead_grid
    live_rows = np.flatnonzero(~dead.all(axis=1))
    live_cols = np.flatnonzero(~dead.all(axis=0))
    lost = len(live_rows) < dead.shape[0] or len(live_cols) < dead.shape[1]
    if program.mode == "weight-streaming":
        return [Area(len(live_rows), len(live_cols), int((~dead).sum()), dead_lines=lost)] * len(program.layers)
    if program.mode != "pipelined":
        raise WscError(f"unknown mode {program.mode!r}; use weight-streaming or pipelined")
    graph, target = program.graph, program.target
    weights = sum(p.numel for p in graph.params) * DTYPE_SIZE[program.dtype]
    held = weights + sum(layer.store_bytes for layer in program.layers)
    sram = int((~dead).sum()) * (target.sram_bytes_per_pe - reserved_bytes)
    n = len(program.layers)
    if held > PACKABLE * sram or len(live_rows) < n:
        raise WscError(
            f"pipelined mode keeps every weight on the wafer: {weights / 1e9:.2f} GB of {program.dtype} weights "
            f"and {(held - weights) / 1e9:.2f} GB of keys and values, but {target.name} has {sram / 1e9:.2f} GB "
            f"of SRAM free; use --mode weight-streaming"
        )
    bands = band_rows(program, len(live_rows))
    areas, first = [], 0
    for count in bands:
        rows = live_rows[first : first + count]
        areas.append(Area(count, len(live_cols), int((~dead[rows]).sum()), (int(rows[0]), count), lost))
        first += count
    return areas


def band_rows(program: Program, rows: int) -> list[int]:
    """Rows of the mesh per layer in pipelined mode, in proportion to what each holds resident: its weights
    and the values its kernels produce (an LM head's table needs a band many times a block's). Every layer
    gets at least one row; rounding leftovers go to the largest."""
    graph = program.graph
    held = [sum(graph[n].nbytes for n in layer.weights + layer.nodes if graph[n].op == "param" or graph[n].is_kernel)
            for layer in program.layers]
    total = sum(held) or 1
    spare = rows - len(held)
    bands = [1 + int(spare * h / total) for h in held]
    bands[held.index(max(held))] += rows - sum(bands)
    return bands


# The largest share of a layer's area its kernels' rectangles may take before lanes are given up for room: the
# placers pack rectangles of many sizes well up to about this (a modelling choice, see `partition_layer`).
PACKABLE = 0.85


@dataclass(frozen=True)
class Partition:
    name: ClassVar[str] = "partition"
    fill: float = 0.5
    reserved_bytes: int = 8192
    # The compact try: fold block grids taller than half the mesh (see `rectangle`) and hold each kernel to its
    # share of PEs.
    compact: bool = False

    def __call__(self, program: Program) -> Program:
        mapped: dict[str, dict[str, KernelPlan]] = {}
        program = replace(program, layers=[replace(layer, store_bytes=activation_store_bytes(program, layer))
                                           for layer in program.layers])
        areas = layer_areas(program, self.reserved_bytes)
        layers = []
        for layer in program.layers:
            area = areas[layer.index]
            twin = mapped.get(key := layer.signature(program.graph))
            if twin is not None:  # an identical layer: the same cuts serve both
                kernels = [n for n in layer.nodes if program.graph[n].is_kernel]
                plans = {name: replace(plan, node=name) for name, plan in zip(kernels, twin.values(), strict=True)}
            else:
                try:
                    plans = self.partition_layer(program, layer, area)
                except DoesNotFit as error:
                    if program.mode != "pipelined":
                        raise
                    raise DoesNotFit(f"pipelined mode cannot hold layer {layer.name} in its band of "
                                     f"{area.rows} rows: {str(error).split(';')[0]}; use --mode "
                                     "weight-streaming", error.needed, error.offered) from None
                mapped[key] = plans
            layers.append(replace(layer, kernels=plans, region=area.region))
        return replace(program, layers=layers, fill=self.fill, compact=self.compact)

    def partition_layer(self, program: Program, layer: Layer, area: Area) -> dict[str, KernelPlan]:
        """Each kernel's plan: its cut and its rectangle."""
        graph, target = program.graph, program.target
        size = DTYPE_SIZE[program.dtype]
        resident = program.mode == "pipelined"
        budget = int(area.pes * self.fill)
        kernels = [graph[n] for n in layer.nodes if graph[n].is_kernel]
        if not kernels:
            return {}
        capacity = self.tile_capacity(program, layer, area)
        work = {k.name: max(k.flops, k.numel) for k in kernels}
        least = {k.name: self.smallest_cut(graph, k, size, capacity, area, resident) for k in kernels}
        needed = sum(c.pes for c in least.values())
        if resident and budget < needed <= PACKABLE * area.pes:
            budget = needed  # every weight stays: the kernels take what their tiles need, the placer packs them
        if needed > budget:
            raise DoesNotFit(
                f"layer {layer.name} needs {needed:,} PEs for its tiles, {target.name} offers {budget:,} "
                f"({self.fill:.0%} of {area.pes:,}); use a bigger target or a smaller batch or sequence",
                needed, budget, layer=layer.name, share=self.fill,
            )
        shares = water_fill(work, {n: c.pes for n, c in least.items()}, budget)
        # A kernel raised to `lanes` rows keeps the columns its share (or its least cut) gives it, so lanes cost
        # a column of PEs each: cap them so that every kernel as such a column still fits the budget.
        lanes = min(self.lanes_needed(program, layer, budget), area.rows, budget // len(kernels)) if not resident else 1
        while True:
            plans = self.cut_kernels(program, kernels, least, shares, lanes, capacity, area)
            # Lanes raise wide kernels to many rows: when the rectangles would leave the placer no room to pack
            # them, the layer's kernels get half the lanes (fewer rows each), until they do.
            if lanes == 1 or sum(plan.h * plan.w for plan in plans.values()) <= PACKABLE * area.pes:
                return plans
            lanes //= 2

    def cut_kernels(self, program: Program, kernels: list[Node], least: dict[str, Cut], shares: dict[str, int],
                    lanes: int, capacity: int, area: Area) -> dict[str, KernelPlan]:
        """Each kernel's plan for its share of PEs and `lanes` rows of lanes."""
        graph = program.graph
        size = DTYPE_SIZE[program.dtype]
        resident = program.mode == "pipelined"
        plans: dict[str, KernelPlan] = {}
        for k in kernels:
            rows, cols = ops.output_view(k.shape)
            cut = least[k.name]
            # As many blocks as the kernel's share of PEs allows, and enough rows and columns of PEs to
            # carry the kernel's traffic in parallel lanes; K is split only as far as SRAM demands (a split
            # costs a reduction across PEs), so the fewest splits that fit win.
            for splits in range(1, cut.k_splits + 1):
                h, w = grid_for_area(rows, cols, max(shares[k.name] // splits, 1), area.rows // splits,
                                     area.cols)
                h, w = max(h, min(lanes, rows, area.rows // splits)), max(w, min(lanes, cols, area.cols))
                # Never fewer blocks than the least cut along either side, but stay within the share: a
                # tall least cut and a wide share grid must not multiply into a rectangle of both.
                h = max(h, cut.row_blocks)
                # A wide least cut raised in height for lanes keeps its width, which carries more lanes but may
                # take more than the share. The compact try (the fill search's last) holds it to the share: more
                # row blocks make each tile shorter, so fewer column blocks fit than the least cut needs.
                fewest = cut.col_blocks
                if self.compact:
                    fewest = self.fewest_col_blocks(graph, k, h, splits, size, capacity, resident) or fewest
                w = max(fewest, min(w, shares[k.name] // (h * splits)))
                if ops.kernel(k.op).whole_rows:  # more PEs can only mean more row blocks (folded into the area)
                    h, w = min(rows, max(shares[k.name], cut.row_blocks)), 1
                wider = Cut(h, w, splits)
                if sram_bytes(graph, k, wider, size, resident) <= capacity and rectangle(wider, area, self.compact):
                    cut = wider
                    break
            h, w = rectangle(cut, area, self.compact) or rectangle(least[k.name], area, self.compact)  # type: ignore[misc]
            plans[k.name] = KernelPlan(k.name, rows, cols, cut, h, w, sram_bytes(graph, k, cut, size, resident),
                                       reduction_dim(graph, k))
        return plans

    def tile_capacity(self, program: Program, layer: Layer, area: Area) -> int:
        """Bytes a PE has for its kernel's tile: its SRAM less the reserve for code, stack and router buffers,
        less its share of the layer's activation store (`layer.store_bytes`, spread evenly over every usable PE
        of the area). A store that leaves a PE nothing is refused here; one that leaves too little for some
        kernel's tiles is refused by the cuts (more PEs needed than offered)."""
        target = program.target
        free = target.sram_bytes_per_pe - self.reserved_bytes
        if free <= 0:
            raise DoesNotFit(f"{target.name} does not fit: its {target.sram_bytes_per_pe:,} bytes of SRAM a "
                             f"PE leave nothing beside the {self.reserved_bytes:,} kept for code, stack and router "
                             "buffers; give it more SRAM")
        store = layer.store_bytes
        share = math.ceil(store / max(area.pes, 1))
        if free <= share:
            fits = area.pes * free
            raise DoesNotFit(
                f"layer {layer.name} holds {store / 1e9:.2f} GB of activations for the pass (its inputs and "
                f"outputs, attention's keys and values) but {target.name} has {fits / 1e9:.2f} GB of SRAM "
                "free; use a smaller micro-batch, batch or sequence",
                store, fits,
            )
        return free - share

    def lanes_needed(self, program: Program, layer: Layer, budget: int) -> int:
        """Rows of PEs each kernel should span so the layer's traffic, even if it all shared one bundle of
        lanes, moves within the time the layer takes at best: its weights' stream, or its FLOPs over the
        budget's PEs at the peak rate, whichever is longer. With fewer, a tiny kernel (a residual add on a
        handful of PEs) would become the fabric's hot spot and the layer's bottleneck."""
        target = program.target
        weight_bytes = layer.streamed_bytes(program.graph, DTYPE_SIZE[program.dtype])
        if weight_bytes == 0:
            return 1
        flops = sum(program.graph[n].flops for n in layer.nodes if program.graph[n].is_kernel)
        seconds = max(weight_bytes / target.io_bytes_per_second,
                      flops / (max(budget, 1) * target.pe_flops(program.dtype)))
        lane_bytes = target.link_bytes_per_cycle * target.clock_hz * seconds
        return max(1, math.ceil(sum(f.bytes for f in layer.flows) / lane_bytes))

    def smallest_cut(self, graph: Graph, node: Node, size: int, capacity: int, area: Area,
                     resident: bool = False) -> Cut:
        """The fewest PEs whose tiles fit in SRAM. For each K split and each count of row blocks, the fewest
        column blocks that fit; the aspect is free, since the cheapest cut can be far from the output's (an
        LM head's PEs each hold one token's row of the left operand and thousands of its columns). A cut
        whose block grid fits the area as a plain rectangle is preferred to a folded one (they pack well)."""
        rows, cols = ops.output_view(node.shape)
        k_dim = reduction_dim(graph, node)
        best: dict[bool, Cut] = {}
        for splits in _split_counts(k_dim, area.pes):
            if best and splits >= min(c.pes for c in best.values()):
                break
            for row_blocks in _geometric(rows):
                col_blocks = self.fewest_col_blocks(graph, node, row_blocks, splits, size, capacity, resident)
                if col_blocks is None:
                    continue
                cut = Cut(row_blocks, col_blocks, splits)
                plain = row_blocks * splits <= area.rows and col_blocks <= area.cols
                if (plain or rectangle(cut, area)) and (plain not in best or cut.pes < best[plain].pes):
                    best[plain] = cut
        if best:
            return best.get(True) or best[False]
        if area.dead_lines:
            raise DoesNotFit(f"kernel {node.name} ({node.op}) does not fit the {area.rows}x{area.cols} PEs the dead "
                             f"rows and columns leave ({capacity:,} bytes a PE); use fewer dead rows or a smaller "
                             "batch or sequence")
        raise DoesNotFit(f"kernel {node.name} ({node.op}) does not fit: no cut into PE tiles fits the {capacity:,} "
                         "bytes a PE has free; use a target with more SRAM per PE or a smaller batch or sequence")

    @staticmethod
    def fewest_col_blocks(graph: Graph, node: Node, row_blocks: int, splits: int, size: int, capacity: int,
                          resident: bool) -> int | None:
        """The fewest column blocks whose tiles fit beside `row_blocks` x `splits` (a PE's bytes only fall
        as its columns do), or None if even one column each is too much."""
        cols = ops.output_view(node.shape)[1]
        if ops.kernel(node.op).whole_rows:
            cols = 1
        if sram_bytes(graph, node, Cut(row_blocks, cols, splits), size, resident) > capacity:
            return None
        lo, hi = 1, cols
        while lo < hi:
            mid = (lo + hi) // 2
            if sram_bytes(graph, node, Cut(row_blocks, mid, splits), size, resident) <= capacity:
                hi = mid
            else:
                lo = mid + 1
        return lo


def _geometric(n: int) -> list[int]:
    """1 .. n in steps of about a quarter: the counts of blocks worth trying along a side of n."""
    counts, c = [], 1
    while c < n:
        counts.append(c)
        c = max(c + 1, int(c * 1.25))
    return [*counts, n]


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
