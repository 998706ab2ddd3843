"""The program the passes build up: the legal graph, cut into streaming layers, each mapped onto the mesh.

The graph stays the single source of shapes; a Layer only names its nodes and adds the mapping decisions
(tile grids, rectangles, routes) that the later passes make. A pass returns a new Program (and new Layers for
what it decides) rather than editing the one it was given, so a program can be mapped again from any stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from wsc.core.dtypes import SHORT_BYTES
from wsc.core.errors import WscError
from wsc.core.ir import Graph
from wsc.core.mesh import mesh_of, tile_pes
from wsc.targets import DTYPES, Target

if TYPE_CHECKING:  # the passes' own types; the program only holds them
    from wsc.core.mesh import Flow, Placement
    from wsc.passes.routers.common import Routes
    from wsc.passes.schedule import Slot

DTYPE_SIZE = {d: SHORT_BYTES[d] for d in DTYPES}  # bytes per element of each precision a target computes in


@dataclass(frozen=True)
class Cut:
    """A kernel's iteration space cut: row_blocks x col_blocks output blocks, and K in k_splits slices."""

    row_blocks: int
    col_blocks: int
    k_splits: int = 1

    @property
    def pes(self) -> int:
        return self.row_blocks * self.col_blocks * self.k_splits


@dataclass(frozen=True)
class KernelPlan:
    """How one kernel is cut into PE tiles, and the h x w rectangle of PEs that computes them.

    The kernel's output, viewed as [rows, cols], is cut into `cut.row_blocks` x `cut.col_blocks` blocks, and a
    matmul's reduction dimension K (`k_dim`) into `cut.k_splits` slices: each block is then computed as
    k_splits partial sums on different PEs and reduced across them. The cut is the one source of truth: the
    tile table (`tiles[b]` = (r0, r1, c0, c1) of block b) and the K slice bounds are derived from it, so what
    the executor runs and what the estimate charges cannot disagree. Slot p = block * k_splits + k_slice
    (block p // k_splits over K slice p % k_splits) goes to the p-th working PE of the placed rectangle in
    row-major order from its top-left corner: PE (x0 + p % w, y0 + p // w) on a clean mesh
    (`wsc.core.mesh.tile_pes`; `Program.tile_pe` names the PE of one block and K slice); PEs past
    cut.pes idle. The iteration space (rows, cols, k_dim) is the node's, carried so that the tables derive
    without the graph; `wsc.ops.verify_plans` holds it to the node when programs are verified.
    """

    node: str
    rows: int
    cols: int
    cut: Cut
    h: int
    w: int
    sram_bytes_per_pe: int
    k_dim: int = 1

    @cached_property
    def tiles(self) -> np.ndarray:
        """(r0, r1, c0, c1) of block (i, j) at index i * col_blocks + j; blocks differ by at most one row or
        column. Read-only: a plan is changed by cutting it again, never by editing its tiles."""
        table = tile_table(self.rows, self.cols, self.cut.row_blocks, self.cut.col_blocks)
        table.flags.writeable = False
        return table

    @cached_property
    def k_bounds(self) -> np.ndarray:
        """K slice s is k_bounds[s] .. k_bounds[s + 1]; slices differ by at most one."""
        bounds = np.arange(self.cut.k_splits + 1, dtype=np.int64) * self.k_dim // self.cut.k_splits
        bounds.flags.writeable = False
        return bounds

    @property
    def row_blocks(self) -> int:
        return self.cut.row_blocks

    @property
    def col_blocks(self) -> int:
        return self.cut.col_blocks

    @property
    def k_splits(self) -> int:
        return self.cut.k_splits

    @property
    def pes(self) -> int:
        """PEs the rectangle occupies."""
        return self.h * self.w

    @property
    def largest_tile(self) -> tuple[int, int]:
        """(rows, cols) of the largest output block: blocks differ by at most one row or column."""
        return -(-self.rows // self.row_blocks), -(-self.cols // self.col_blocks)

    @property
    def k_slice(self) -> int:
        """K elements of the largest slice."""
        return -(-self.k_dim // self.k_splits)

    @property
    def active_pes(self) -> int:
        """PEs that compute: one per block and K slice."""
        return self.cut.pes


def tile_table(rows: int, cols: int, row_blocks: int, col_blocks: int) -> np.ndarray:
    """(r0, r1, c0, c1) of block (i, j) at index i * col_blocks + j; blocks differ by at most one row or
    column."""
    r = np.arange(row_blocks + 1, dtype=np.int64) * rows // row_blocks
    c = np.arange(col_blocks + 1, dtype=np.int64) * cols // col_blocks
    i = np.repeat(np.arange(row_blocks), col_blocks)
    j = np.tile(np.arange(col_blocks), row_blocks)
    return np.stack([r[i], r[i + 1], c[j], c[j + 1]], axis=1)


@dataclass
class Layer:
    """A streaming layer: its weights are on the wafer together, and only while it runs."""

    index: int
    name: str
    nodes: list[str]
    weights: list[str]  # param nodes this layer reads, streamed in before it runs
    kernels: dict[str, KernelPlan] = field(default_factory=dict)  # partition's
    flows: list[Flow] = field(default_factory=list)  # group-layers': the traffic between this layer's kernels
    region: tuple[int, int] | None = None  # partition's, pipelined mode: the band of mesh rows (first, count)
    placement: Placement | None = None  # place's
    routes: Routes | None = None  # route's
    # partition's: bytes of activations held for the whole pass while the layer has the wafer (its activation
    # store, spread over every usable PE): see passes/partition.py, `activation_store_bytes`.
    store_bytes: int = 0

    def streamed_bytes(self, graph: Graph, element_bytes: int) -> int:
        """Bytes of this layer's weights streamed in at `element_bytes` per element."""
        return sum(graph[w].numel for w in self.weights) * element_bytes

    def signature(self, graph: Graph) -> str:
        """Equal for layers that map identically (every block of a GPT): their mapping is computed once."""
        parts: list[str] = []
        position: dict[str, int] = {}
        for name in self.nodes:
            node = graph[name]
            if node.is_kernel:
                position[name] = len(position)
                attrs = sorted((k, v) for k, v in node.attrs.items() if k != "value")
                parts.append(f"{node.op}{node.shape}{[graph[i].shape for i in node.inputs]}{attrs}")
        parts += [f"{position[f.src]}>{position[f.dst]}:{f.bytes}" for f in self.flows]
        return "|".join(parts)


@dataclass
class Program:
    graph: Graph
    target: Target
    model_name: str = "model"
    layers: list[Layer] = field(default_factory=list)
    dtype: str = "fp16"  # the precision the target computes and streams in (Cerebras trains in fp16)
    mode: str = "weight-streaming"  # or "pipelined": every layer resident on the wafer at once
    tokens: int = 0  # tokens per step, over every micro-batch and system: what tokens per second divides
    # A step's batch is run as `micro_batches` passes of the graph, each over one micro-batch (the graph's
    # shapes are one micro-batch's), split evenly over `systems` wafers working data parallel. The inputs
    # named in `batched_inputs` carry the batch in their first dimension; the others are the same each pass.
    micro_batches: int = 1
    systems: int = 1
    batched_inputs: tuple[str, ...] = ()
    weights: Mapping[str, Any] | None = None  # store key -> tensor, when a pass must read a weight's values
    estimate: dict[str, Any] = field(default_factory=dict)
    fill: float = 0.0  # partition's record: the share of the usable PEs it handed to each layer's kernels
    compact: bool = False  # partition's record: the compact try (tall grids folded, kernels held to their share)
    timeline: list[Slot] = field(default_factory=list)  # weight streaming: the estimate's slot per layer pass
    handoff_routes: Routes | None = None  # route's, pipelined mode: the activations between resident layers

    @property
    def passes_per_system(self) -> int:
        return self.micro_batches // self.systems

    def step_input_shape(self, node_name: str) -> tuple[int, ...]:
        """An input's shape for a whole step: a batched input holds every micro-batch."""
        shape = self.graph[node_name].shape
        if node_name in self.batched_inputs:
            return (shape[0] * self.micro_batches, *shape[1:])
        return shape

    def tile_pes(self, layer: Layer | int, kernel: str) -> np.ndarray:
        """(x, y) of the PE holding each slot (block * k_splits + k_slice) of a placed kernel, shape
        (active_pes, 2): row-major over the working PEs of its rectangle (`wsc.core.mesh.tile_pes`)."""
        layer, plan = self._placed_kernel(layer, kernel)
        assert layer.placement is not None  # checked by _placed_kernel
        return tile_pes(layer.placement.rects[kernel], plan.active_pes, mesh_of(self.target))

    def tile_pe(self, layer: Layer | int, kernel: str, block: int, k_slice: int = 0) -> tuple[int, int]:
        """(x, y) mesh coordinates (x the column, y the row) of the PE that computes block `block` (an index
        of the plan's `tiles`) over K slice `k_slice` of `kernel` in `layer` (a Layer of this program or its
        index). Raises WscError naming the choices when the layer is not placed or the kernel, block or
        slice is not one of it."""
        layer, plan = self._placed_kernel(layer, kernel)
        blocks = plan.row_blocks * plan.col_blocks
        if not 0 <= block < blocks:
            raise WscError(f"block {block} is not a block of kernel {kernel} in layer {layer.index} "
                           f"({layer.name}); give one of 0..{blocks - 1}")
        if not 0 <= k_slice < plan.k_splits:
            raise WscError(f"K slice {k_slice} is not a slice of kernel {kernel} in layer {layer.index} "
                           f"({layer.name}); give one of 0..{plan.k_splits - 1}")
        slot = block * plan.k_splits + k_slice
        assert layer.placement is not None  # checked by _placed_kernel
        x, y = tile_pes(layer.placement.rects[kernel], slot + 1, mesh_of(self.target))[slot]
        return int(x), int(y)

    def _placed_kernel(self, layer: Layer | int, kernel: str) -> tuple[Layer, KernelPlan]:
        if isinstance(layer, int):
            if not 0 <= layer < len(self.layers):
                raise WscError(f"layer {layer} is not a layer of this program; give one of 0..{len(self.layers) - 1}")
            layer = self.layers[layer]
        if kernel not in layer.kernels:
            names = list(layer.kernels)
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise WscError(f"layer {layer.index} ({layer.name}) has no kernel {kernel!r}; its {len(names)} "
                           f"kernels are {shown or 'none'}")
        if layer.placement is None or kernel not in layer.placement.rects:
            raise WscError(f"kernel {kernel} of layer {layer.index} ({layer.name}) is not placed yet; "
                           "ask after the place pass")
        return layer, layer.kernels[kernel]

    def verify(self) -> None:
        """The invariants after any pass: a valid graph, and every layer naming real nodes of it."""
        self.graph.verify()
        for layer in self.layers:
            for name in layer.nodes + layer.weights:
                if name not in self.graph:
                    raise AssertionError(f"layer {layer.name} names missing node {name}")
            for name, plan in layer.kernels.items():
                if plan.rows * plan.cols != self.graph[name].numel:
                    raise AssertionError(f"kernel {name}: plan of {plan.rows} x {plan.cols} for "
                                         f"{self.graph[name].numel} outputs")
                tiles = plan.tiles
                covered = int(((tiles[:, 1] - tiles[:, 0]) * (tiles[:, 3] - tiles[:, 2])).sum())
                if covered != plan.rows * plan.cols:
                    raise AssertionError(f"kernel {name}: tiles cover {covered} of {plan.rows * plan.cols}")
                bounds = plan.k_bounds
                if len(bounds) != plan.k_splits + 1 or bounds[0] != 0 or bounds[-1] != plan.k_dim \
                        or (np.diff(bounds) < 0).any():
                    raise AssertionError(f"kernel {name}: K slices {bounds} do not cover K = {plan.k_dim}")
