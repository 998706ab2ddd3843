"""What an op of the table is: the questions every pass, the estimate and the runtime ask of it.

An op is a class with a `name` and the methods below, registered with `@register`. A kernel op does arithmetic
and occupies PEs; a layout op only moves data, which on the wafer is routing. The passes, the estimate and the
executor hold no per-op branches: they ask the op of a node through `wsc.ops.get(node.op)`. Node kinds that
are not ops (input, param, const) are the IR's (`wsc.core.ir.SOURCE_OPS`).

The defaults describe an elementwise kernel over the output viewed as 2-D [rows, cols] (cols = the last
dimension), reading its inputs at the output's shape: an op overrides what differs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from wsc.core import ir
from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan, Program
from wsc.ops.codegen import KernelIR, KernelSpec

Shape = tuple[int, ...]
# compile_kernel(op, out_shape, in_shapes, attrs) -> a callable kernel(out, inputs, tiles, threads=...): what
# the runtime hands an op that runs as several kernels (a matmul whose K is split).
KernelFactory = Callable[[str, Shape, Sequence[Shape], Mapping[str, Any]], Any]

ACCUMULATOR_BYTES = 4  # partial sums and accumulators are fp32 on a PE, whatever the compute dtype
# Token rows a PE holds at once: the one it computes and the next arriving. While a layer has the wafer its
# tokens flow through the kernels a row at a time, so a PE keeps its weight tile and these rows, never the
# whole pass (the pass's activations between layers are the partitioner's activation store).
ROWS_IN_FLIGHT = 2


def rows_in_flight(tile_rows: int) -> int:
    """Rows of a tile of `tile_rows` that a PE holds at once."""
    return min(tile_rows, ROWS_IN_FLIGHT)


def output_view(shape: Shape) -> tuple[int, int]:
    """Every op's output is tiled as 2-D [rows, cols]: cols is the last dim, rows the product of the others."""
    cols = shape[-1] if shape else 1
    return int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1, cols


class Op:
    """An op of the table. `kind` is "kernel" or "layout"."""

    name: ClassVar[str]
    kind: ClassVar[str]

    def flops(self, out_shape: Shape, in_shapes: Sequence[Shape], attrs: Mapping[str, Any]) -> int:
        """Arithmetic of one forward evaluation (a multiply-add counts 2)."""
        return 0

    def bytes_moved(self, in_nodes: Sequence[Node], node: Node) -> int:
        """Bytes read plus bytes written, recorded on the node at legalisation."""
        return sum(n.nbytes for n in in_nodes) + node.nbytes

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        """(bytes read, bytes written) by the SRAM of the busiest PE (the largest tile) in one step, at `size`
        bytes per element of the compute dtype."""
        raise NotImplementedError(f"op {self.name} has no SRAM traffic model")


class LayoutOp(Op):
    """An op that only moves data: no PEs of its own, no arithmetic; on the wafer it is how values route."""

    kind: ClassVar[str] = "layout"
    # True when the output holds the input's elements in the same order (a reshape): a kernel's output block
    # is then still its block when the last dimension is kept, so what reads it may be fused through it.
    keeps_order: ClassVar[bool] = False
    # True when the output is held in the node's own dtype whatever its input's (a cast); otherwise a layout op
    # hands on the dtype its input is held in.
    converts: ClassVar[bool] = False

    def bytes_moved(self, in_nodes: Sequence[Node], node: Node) -> int:
        return node.nbytes

    def move(self, node: Node, *values: np.ndarray) -> np.ndarray:
        """The node's value from its inputs' (one for most; a concatenation takes several), as the host computes
        it."""
        raise NotImplementedError

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, tc = plan.largest_tile
        return tr * tc * size, tr * tc * size  # read once, written once


class KernelOp(Op):
    """An op that computes on PEs: cut into tiles by the partitioner, placed, lowered to LLVM and run."""

    kind: ClassVar[str] = "kernel"
    flops_per_element: ClassVar[int] = 0
    # True when each PE needs whole rows of its inputs to compute any column of its output (attention's scores
    # take every element of a query row): cutting its columns would repeat that work, so it is cut by rows.
    whole_rows: ClassVar[bool] = False

    # ----------------------------------------------------------------------------------------- cost

    def flops(self, out_shape: Shape, in_shapes: Sequence[Shape], attrs: Mapping[str, Any]) -> int:
        return self.flops_per_element * math.prod(out_shape)

    def backward_flops(self, node: Node) -> int:
        """FLOPs of the backward pass, from the forward count: about twice the forward work (the gradient of
        each operand is an op of about the forward's size)."""
        return 2 * node.flops

    def reduction_dim(self, graph: Graph, node: Node) -> int:
        """The extent of a reduction the partitioner may split across PEs (a matmul's K); 1 for none."""
        return 1

    def pass_held_inputs(self, graph: Graph, node: Node) -> tuple[int, ...]:
        """Positions of the inputs the kernel reads again and again over the pass, which must therefore be
        held whole while its layer has the wafer rather than flow through a row at a time (attention's keys
        and values: every later query of a sequence reads them). Default: none."""
        return ()

    def summed_terms(self, graph: Graph, node: Node) -> int:
        """How many terms the longest sum behind one output element adds (a matmul's K, a norm's row; 1 for an
        element-wise op): its rounding error grows with the square root of that count, which is what
        verification allows the kernel (wsc/verification.py)."""
        return max(1, self.reduction_dim(graph, node))

    def sram_bytes(self, graph: Graph, node: Node, cut: Cut, size: int, resident: bool = False) -> int:
        """Bytes one PE holds for its tile of `cut`: what stays for the layer's turn (a weight tile) and the
        token rows in flight (`rows_in_flight`), never the tile's every row. `resident` is pipelined mode,
        where weights stay for every pass: a PE holds the same bytes either way for the ops here.
        Default: each tensor input's rows and the output's (a scalar input sits in a register)."""
        tr, tc = self.tile(node, cut)
        tensors = sum(1 for i in node.inputs if graph[i].numel > 1)
        return (tensors + 1) * rows_in_flight(tr) * tc * size

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        """Default: each input read as the kernels index it (a full tile, one value per row, or a scalar held
        in a register), the output tile written once."""
        tr, tc = plan.largest_tile
        reads = sum(operand_elements(graph[i], tr, tc) for i in node.inputs)
        return reads * size, tr * tc * size

    @staticmethod
    def tile(node: Node, cut: Cut) -> tuple[int, int]:
        """(rows, cols) of the largest output block of `cut`."""
        rows, cols = output_view(node.shape)
        return math.ceil(rows / cut.row_blocks), math.ceil(cols / cut.col_blocks)

    # ------------------------------------------------------------------------------------ execution

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        """The shapes the kernel's ABI takes: the node's tensors folded to 2-D [rows, cols] (or 3-D).
        Default: one input of the output's shape."""
        view = output_view(node.shape)
        return view, [view for _ in node.inputs]

    def lower(self, spec: KernelSpec) -> KernelIR:
        """The LLVM IR of the kernel specialised on `spec` (see wsc.ops.codegen for the ABI)."""
        raise NotImplementedError(f"op {self.name} has no lowering")

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        """What the op means, in plain numpy (float64 where it matters), on the ABI's shapes: tests hold the
        kernel to it. Never on the execution path."""
        raise NotImplementedError(f"op {self.name} has no reference")

    def run_k_split(self, node: Node, plan: KernelPlan, args: list[np.ndarray], out_shape: Shape,
                    tiles: np.ndarray, kernel_for: KernelFactory, threads: int) -> np.ndarray:
        """Run the kernel with its reduction split into plan.k_splits slices (only ops with a reduction_dim)."""
        raise NotImplementedError(f"op {self.name} has no reduction to split")

    # --------------------------------------------------------------------------------------- fusion

    def epilogue(self, graph: Graph, node: Node, position: int) -> tuple[dict[str, Any], str | None] | None:
        """How the kernel producing this op's input `position` may compute this op on its output block: the
        attrs it takes on and the other input it must then read (a residual), or None when it cannot."""
        return None

    def accepts_epilogue(self, node: Node, attrs: Mapping[str, Any]) -> bool:
        """Whether this kernel, as it stands, can take on an epilogue with `attrs` (see `epilogue`)."""
        return False


def verify_plans(program: Program) -> None:
    """What the core cannot check of a plan, since it is the op's: the plan's iteration space is its node's
    output view and the reduction the op's, so the tables derived from the cut cover the node's own work."""
    graph = program.graph
    for layer in program.layers:
        for name, plan in layer.kernels.items():
            node = graph[name]
            space = (*output_view(node.shape), kernel(node.op).reduction_dim(graph, node))
            if (plan.rows, plan.cols, plan.k_dim) != space:
                raise AssertionError(f"kernel {name}: plan over rows, cols, K = {plan.rows}, {plan.cols}, "
                                     f"{plan.k_dim}, but {node.op} {list(node.shape)} has {', '.join(map(str, space))}")


def operand_elements(operand: Node, tr: int, tc: int) -> int:
    """Elements of one elementwise input read for a tr x tc output tile, as the kernels index it."""
    if operand.numel <= 1:
        return 0  # a scalar is loaded once into a register
    if operand.shape[-1] == 1:
        return tr  # one value per row, loaded once per row
    return tr * tc  # a full tile, or a row broadcast over the rows: re-read for every output element


# ------------------------------------------------------------------------------------------------ registry

_TABLE: dict[str, Op] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: add an op to the table under its `name` (and tell the IR its kind)."""
    op = cls()
    if op.name in _TABLE and type(_TABLE[op.name]) is not cls:
        raise ValueError(f"op {op.name!r} is already in the table ({type(_TABLE[op.name]).__module__})")
    if op.name in ir.SOURCE_OPS:
        raise ValueError(f"{op.name!r} is a node kind of the IR, not an op")
    _TABLE[op.name] = op
    (ir.KERNEL_OPS if op.kind == "kernel" else ir.LAYOUT_OPS).add(op.name)
    return cls


def unregister(name: str) -> None:
    """Remove an op (tests that register a throwaway op clean up with this)."""
    _TABLE.pop(name, None)
    ir.KERNEL_OPS.discard(name)
    ir.LAYOUT_OPS.discard(name)


def get(name: str) -> Op:
    try:
        return _TABLE[name]
    except KeyError:
        raise KeyError(f"op {name!r} is not in the op table (wsc/ops/); known: {', '.join(sorted(_TABLE))}") from None


def kernel(name: str) -> KernelOp:
    op = get(name)
    if not isinstance(op, KernelOp):
        raise KeyError(f"op {name!r} is a {op.kind} op, not a kernel")
    return op


def layout_op(name: str) -> LayoutOp:
    op = get(name)
    if not isinstance(op, LayoutOp):
        raise KeyError(f"op {name!r} is a {op.kind} op, not a layout op")
    return op


def is_layout(name: str) -> bool:
    return isinstance(_TABLE.get(name), LayoutOp)


def kernel_names() -> list[str]:
    return sorted(n for n, op in _TABLE.items() if isinstance(op, KernelOp))


def layout_names() -> list[str]:
    return sorted(n for n, op in _TABLE.items() if isinstance(op, LayoutOp))
