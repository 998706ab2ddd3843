"""Row reductions: an input viewed as [rows, n] reduced over its last dim into a [rows, 1] output.

    sum    out = sum_j x[r, j] / divisor          (divisor 1 unless attrs say)
    mean   out = sum_j x[r, j] / divisor          (divisor n)
    var    out = sum_j (x[r, j] - c[r])^2 / divisor  (divisor max(n - correction, 0); c the row's mean)
    std    sqrt of var
    amax, amin: the row's largest and smallest element; NaN when the row holds one, as torch gives it.

The sum family takes `root` (the square root of the result, how a split std finishes) and `divisor` in its
attrs; a sum with attrs["row_divisor"] divides each row by its own divisor, a second input [rows, 1] (a mean
over the targets a loss does not ignore, a count known only at run time). Var takes `correction` (1:
unbiased), and with attrs["center"] a second input [rows, 1] holds c rather than the kernel computing the
mean in a first pass. Var is two passes over the row (the mean, then the squared deviations from it), never
sum / sum-of-squares, which cancels badly when |mean| >> std.

Legalize brings any reduction to this form: the reduced dims moved last (a permute), the input reshaped to
[rows, n], the output reshaped back. A row too long for one PE's SRAM is split like a matmul's K
(`reduction_dim` is n): each K slice reduces on its own PEs, the partials are combined across PEs as a
binary tree (each level one [rows, 2] reduction), and the last level applies the divisor and root.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from llvmlite import ir

from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.ops.base import ACCUMULATOR_BYTES, KernelFactory, KernelOp, Shape, output_view, register, rows_in_flight
from wsc.ops.codegen import FAST, KernelBuilder, KernelIR, KernelSpec, f32, for_range, i64, load_at, loop, store_at

# reduce_row(kb, x_row, r): the IR computing row r's result from a pointer to its n elements.
RowBody = Callable[[KernelBuilder, ir.Value, ir.Value], ir.Value]


def lower_row_reduction(spec: KernelSpec, reduce_row: RowBody, extra_inputs: int = 0) -> KernelIR:
    """A kernel writing out[r, 0] = reduce_row(row r of x) for the rows of its tiles. A tile with no column
    (c0 == c1) writes nothing."""
    if len(spec.out_shape) != 2 or spec.out_shape[1] != 1 or len(spec.in_shapes) != 1 + extra_inputs:
        raise ValueError(f"{spec.op}: expected out [R, 1] and {1 + extra_inputs} input(s); got {spec}")
    rows = spec.out_shape[0]
    x_shape = spec.in_shapes[0]
    if len(x_shape) != 2 or x_shape[0] != rows:
        raise ValueError(f"{spec.op}: input has shape {x_shape}, expected [{rows}, N]")
    n = x_shape[1]
    kb = KernelBuilder(spec, ["f32"] * len(spec.in_shapes))
    b = kb.b
    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "r") as r:
            with for_range(b, c0, c1, "c"):
                x_row = b.gep(kb.inputs[0], [b.mul(r, i64(n))], inbounds=True)
                store_at(b, reduce_row(kb, x_row, r), kb.out, r)
    return kb.finish()


def row_sum(kb: KernelBuilder, x_row: ir.Value, n: int, term: Callable[[ir.Value], ir.Value] | None = None
            ) -> ir.Value:
    """sum_j term(x[j]) over a row of n, reassociated so LLVM splits it into vector lanes."""
    b = kb.b

    def add(j: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
        x = load_at(b, x_row, j)
        return [b.fadd(acc[0], term(x) if term else x, flags=FAST)]

    (total,) = loop(b, i64(0), i64(n), [f32(0.0)], add, name="sum")
    return total


def finish(kb: KernelBuilder, value: ir.Value, divisor: float | ir.Value, root: bool) -> ir.Value:
    """value / divisor (a number, or a value of the row), then its square root when asked. A divisor of 1 is
    left out (exact either way)."""
    b = kb.b
    if isinstance(divisor, ir.Value):
        value = b.fdiv(value, divisor)
    elif divisor != 1.0:
        value = b.fdiv(value, f32(divisor))
    return b.call(kb.intrinsic("llvm.sqrt"), [value]) if root else value


class RowReduction(KernelOp):
    """[rows, n] -> [rows, 1]. `flops_per_element` counts per input element; `passes` is how often the kernel
    reads its row. The output has one column, so a PE always holds whole output rows; the input's row is the
    reduction the partitioner may split across PEs (`reduction_dim`).

    SRAM per PE: its rows of the input over its K slice (tr * k), an fp32 result per row, and when the row is
    split a second fp32 per row for the partial arriving from the neighbouring slice. Traffic: each pass reads
    the slice (tr * k), the result is written once (tr)."""

    flops_per_element = 1
    passes: ClassVar[int] = 1
    # The op combining two partial results of a split row, and the attrs its last level finishes with.
    combine_op: ClassVar[str]

    def flops(self, out_shape: Shape, in_shapes: Sequence[Shape], attrs: Mapping[str, Any]) -> int:
        return self.flops_per_element * math.prod(in_shapes[0])

    def reduction_dim(self, graph: Graph, node: Node) -> int:
        return self.row_length(graph, node)

    @staticmethod
    def row_length(graph: Graph, node: Node) -> int:
        rows = output_view(node.shape)[0]
        return graph[node.inputs[0]].numel // rows if rows else 0

    def sram_bytes(self, graph: Graph, node: Node, cut: Cut, size: int, resident: bool = False) -> int:
        tr = rows_in_flight(math.ceil(output_view(node.shape)[0] / cut.row_blocks))
        k = math.ceil(self.row_length(graph, node) / cut.k_splits)
        per_row = ACCUMULATOR_BYTES * (1 + (cut.k_splits > 1) + (len(node.inputs) > 1))  # result, partial, center
        return tr * k * size + tr * per_row

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, _ = plan.largest_tile
        return self.passes * tr * plan.k_slice * size, tr * size

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        rows = output_view(node.shape)[0]
        ins: list[Shape] = [(rows, self.row_length(graph, node))]
        return (rows, 1), ins + [(rows, 1) for _ in node.inputs[1:]]

    def finish_attrs(self, node: Node, n: int) -> dict[str, Any]:
        """The attrs of the last combining level of a split row (the divisor and root of the sum family)."""
        return {}

    def finish_inputs(self, node: Node, args: list[np.ndarray]) -> list[np.ndarray]:
        """The inputs besides the partials that the last combining level reads (a per-row divisor)."""
        return []

    def slices(self, node: Node, plan: KernelPlan, args: list[np.ndarray], run: Runner) -> list[np.ndarray]:
        """Each K slice's partial result ([rows, 1]), as the PEs of one slice compute it."""
        return [run(self.name, [np.ascontiguousarray(args[0][:, k0:k1])], {})
                for k0, k1 in zip(plan.k_bounds[:-1], plan.k_bounds[1:], strict=True)]

    def run_k_split(self, node: Node, plan: KernelPlan, args: list[np.ndarray], out_shape: Shape,
                    tiles: np.ndarray, kernel_for: KernelFactory, threads: int) -> np.ndarray:
        """The slices' partials, then their combination across PEs as a binary tree of [rows, 2] reductions,
        the last level finishing (divisor, root); every step a JIT kernel over the same tiles."""

        def run(op: str, inputs: list[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
            out = np.full(out_shape, np.nan, dtype=np.float32)
            kernel_for(op, out_shape, [x.shape for x in inputs], attrs)(out, inputs, tiles, threads=threads)
            return out

        partials = self.slices(node, plan, args, run)
        return combine_tree(run, self.combine_op, partials, self.finish_attrs(node, plan.k_dim),
                            self.finish_inputs(node, args))

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        x = inputs[0].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.reduce_reference(x, inputs[1:], attrs).reshape(-1, 1)

    def reduce_reference(self, x: np.ndarray, extra: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        raise NotImplementedError


Runner = Callable[[str, list[np.ndarray], Mapping[str, Any]], np.ndarray]


def combine_tree(run: Runner, op: str, partials: list[np.ndarray], last: Mapping[str, Any],
                 last_inputs: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Partials ([rows, 1] each) combined two at a time, as a binary tree across PEs; the root level takes
    the attrs `last` and reads `last_inputs` besides (a single partial is only finished)."""
    while len(partials) > 2:
        pairs = [run(op, [np.concatenate(partials[i : i + 2], axis=1)], {}) for i in range(0, len(partials) - 1, 2)]
        partials = pairs + partials[len(pairs) * 2 :]
    return run(op, [np.ascontiguousarray(np.concatenate(partials, axis=1)), *last_inputs], last)


@register
class Sum(RowReduction):
    """sum_j x[r, j] / divisor (or / d[r], the second input, with `row_divisor`), square-rooted with `root`;
    1 FLOP an element."""

    name = "sum"
    combine_op = "sum"

    def divisor(self, attrs: Mapping[str, Any], n: int) -> float:
        return float(attrs.get("divisor", 1.0))

    def finish_attrs(self, node: Node, n: int) -> dict[str, Any]:
        attrs = {"divisor": self.divisor(node.attrs, n), "root": bool(node.attrs.get("root", False))}
        return {**attrs, "row_divisor": True} if node.attrs.get("row_divisor") else attrs

    def finish_inputs(self, node: Node, args: list[np.ndarray]) -> list[np.ndarray]:
        return args[1:] if node.attrs.get("row_divisor") else []

    def slices(self, node: Node, plan: KernelPlan, args: list[np.ndarray], run: Runner) -> list[np.ndarray]:
        return [run("sum", [np.ascontiguousarray(args[0][:, k0:k1])], {})
                for k0, k1 in zip(plan.k_bounds[:-1], plan.k_bounds[1:], strict=True)]

    def lower(self, spec: KernelSpec) -> KernelIR:
        n = spec.in_shapes[0][-1] if spec.in_shapes and spec.in_shapes[0] else 0
        divisor, root = self.divisor(spec.attrs, n), bool(spec.attrs.get("root", False))
        per_row = bool(spec.attrs.get("row_divisor", False))
        if per_row and spec.in_shapes[1:] != ((spec.out_shape[0], 1),):
            raise ValueError(f"{spec.op}: row divisor has shape {spec.in_shapes[1:]}, "
                             f"expected [{spec.out_shape[0]}, 1]")

        def body(kb: KernelBuilder, x_row: ir.Value, r: ir.Value) -> ir.Value:
            by = load_at(kb.b, kb.inputs[1], r) if per_row else divisor
            return finish(kb, row_sum(kb, x_row, n), by, root)

        return lower_row_reduction(spec, body, extra_inputs=int(per_row))

    def reduce_reference(self, x: np.ndarray, extra: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        by = extra[0].astype(np.float64)[:, 0] if attrs.get("row_divisor") else self.divisor(attrs, x.shape[-1])
        out = x.sum(axis=-1) / by
        return np.sqrt(out) if attrs.get("root", False) else out


@register
class Mean(Sum):
    """sum_j x[r, j] / n; 1 FLOP an element."""

    name = "mean"

    def divisor(self, attrs: Mapping[str, Any], n: int) -> float:
        return float(attrs.get("divisor", n))


@register
class Var(Sum):
    """sum_j (x[r, j] - mean_r)^2 / max(n - correction, 0), in two passes: 4 FLOPs an element (the mean's
    add, then subtract, square, add). With attrs["center"] the mean is the second input (a split row's
    slices, the mean computed across their PEs first). A split row: the mean as a split sum, each slice's
    squared deviations from it, then their sum over the divisor."""

    name = "var"
    flops_per_element = 4
    passes = 2
    root = False

    def divisor(self, attrs: Mapping[str, Any], n: int) -> float:
        if "divisor" in attrs:
            return float(attrs["divisor"])
        return max(n - float(attrs.get("correction", 1.0)), 0.0)

    def finish_attrs(self, node: Node, n: int) -> dict[str, Any]:
        return {"divisor": self.divisor(node.attrs, n), "root": self.root}

    def slices(self, node: Node, plan: KernelPlan, args: list[np.ndarray], run: Runner) -> list[np.ndarray]:
        x = args[0]
        parts = [np.ascontiguousarray(x[:, k0:k1]) for k0, k1 in zip(plan.k_bounds[:-1], plan.k_bounds[1:],
                                                                     strict=True)]
        center = combine_tree(run, "sum", [run("sum", [p], {}) for p in parts], {"divisor": float(plan.k_dim)})
        return [run("var", [p, center], {"center": True, "divisor": 1.0}) for p in parts]

    def lower(self, spec: KernelSpec) -> KernelIR:
        n = spec.in_shapes[0][-1] if spec.in_shapes and spec.in_shapes[0] else 0
        divisor, root = self.divisor(spec.attrs, n), bool(spec.attrs.get("root", self.root))
        centered = bool(spec.attrs.get("center", False))
        if centered and spec.in_shapes[1:] != ((spec.out_shape[0], 1),):
            raise ValueError(f"{spec.op}: center has shape {spec.in_shapes[1:]}, expected [{spec.out_shape[0]}, 1]")

        def body(kb: KernelBuilder, x_row: ir.Value, r: ir.Value) -> ir.Value:
            b = kb.b
            if centered:
                center = load_at(b, kb.inputs[1], r)
            else:
                center = b.fmul(row_sum(kb, x_row, n), f32(1.0 / n if n else math.nan))

            def square(x: ir.Value) -> ir.Value:
                dev = b.fsub(x, center)
                return b.fmul(dev, dev, flags=FAST)

            return finish(kb, row_sum(kb, x_row, n, square), divisor, root)

        return lower_row_reduction(spec, body, extra_inputs=int(centered))

    def reduce_reference(self, x: np.ndarray, extra: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        center = extra[0].astype(np.float64) if attrs.get("center") else x.mean(axis=-1, keepdims=True)
        out = ((x - center) ** 2).sum(axis=-1) / self.divisor(attrs, x.shape[-1])
        return np.sqrt(out) if attrs.get("root", self.root) else out


@register
class Std(Var):
    """The square root of var; 4 FLOPs an element (the root is one per row)."""

    name = "std"
    root = True


class Extremum(RowReduction):
    """The row's largest (amax) or smallest (amin) element, NaN if the row holds one (llvm.maximum and
    llvm.minimum propagate NaN, as torch does); 1 FLOP an element. A split row combines its slices' extrema
    with the same op."""

    intrinsic: ClassVar[str]
    start: ClassVar[float]

    def lower(self, spec: KernelSpec) -> KernelIR:
        n = spec.in_shapes[0][-1] if spec.in_shapes and spec.in_shapes[0] else 0

        def body(kb: KernelBuilder, x_row: ir.Value, r: ir.Value) -> ir.Value:
            b, pick = kb.b, kb.intrinsic(self.intrinsic, 2)

            def step(j: ir.Value, acc: list[ir.Value]) -> list[ir.Value]:
                return [b.call(pick, [acc[0], load_at(b, x_row, j)], fastmath=FAST)]

            return loop(b, i64(0), i64(n), [f32(self.start)], step, name="ext")[0]

        return lower_row_reduction(spec, body)


@register
class Amax(Extremum):
    name = "amax"
    combine_op = "amax"
    intrinsic = "llvm.maximum"
    start = -math.inf

    def reduce_reference(self, x: np.ndarray, extra: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        return x.max(axis=-1, initial=-np.inf)


@register
class Amin(Extremum):
    name = "amin"
    combine_op = "amin"
    intrinsic = "llvm.minimum"
    start = math.inf

    def reduce_reference(self, x: np.ndarray, extra: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        return x.min(axis=-1, initial=np.inf)
