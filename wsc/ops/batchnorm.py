"""batchnorm: batch norm in eval mode, y = (x - mean) * rsqrt(var + eps) * weight + bias, per channel.

The channel is dim 1 of x [N, C, *rest]. Inputs: x, then those of the channel vectors mean, var, weight, bias
[C] that attrs["operands"] names, in that order; one left out is its value at initialisation (mean 0, var 1,
weight 1, bias 0). attrs: eps, channels (C) and inner (the elements of one channel of one sample,
prod(rest)). Over the output's 2-D view [rows, cols] a channel is constant along a row when x has dims after C
(inner is then a multiple of cols), and is the column when x is [N, C].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from llvmlite import ir

from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.ops.base import KernelOp, Shape, output_view, register, rows_in_flight
from wsc.ops.codegen import CONTRACT, KernelBuilder, KernelIR, KernelSpec, f32, for_range, i64, load_at, store_at

OPERANDS = ("mean", "var", "weight", "bias")
INITIAL = {"mean": 0.0, "var": 1.0, "weight": 1.0, "bias": 0.0}


def _operands(attrs: Mapping[str, Any]) -> tuple[str, ...]:
    operands = tuple(attrs.get("operands", ()))
    if any(o not in OPERANDS for o in operands) or list(operands) != [o for o in OPERANDS if o in operands]:
        raise ValueError(f"batchnorm: operands must be some of {', '.join(OPERANDS)} in that order, got {operands}")
    return operands


def _rows_per_channel(channels: int, inner: int, cols: int) -> int | None:
    """Rows of the 2-D view one channel spans when it is constant along rows, None when it is the column."""
    if inner % cols == 0:
        return inner // cols
    if inner == 1 and cols == channels:
        return None
    raise ValueError(f"batchnorm: {inner} elements per channel do not tile rows of {cols}")


def lower_batchnorm(spec: KernelSpec) -> KernelIR:
    operands = _operands(spec.attrs)
    channels, inner, eps = int(spec.attrs["channels"]), int(spec.attrs["inner"]), float(spec.attrs["eps"])
    if len(spec.out_shape) != 2 or spec.in_shapes != (spec.out_shape, *[(channels,)] * len(operands)):
        raise ValueError(f"batchnorm: expected out [R, C] and inputs x [R, C], then {', '.join(operands) or 'no'} "
                         f"[{channels}]; got {spec}")
    rows, cols = spec.out_shape
    per_row = _rows_per_channel(channels, inner, cols)
    kb = KernelBuilder(spec, ["f32"] * len(spec.in_shapes))
    b = kb.b
    x_ptr = kb.inputs[0]
    pointers = dict(zip(operands, kb.inputs[1:], strict=True))
    sqrt = kb.intrinsic("llvm.sqrt")

    def coefficients(channel: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
        """(mean, scale = weight / sqrt(var + eps), bias) of one channel."""
        value = {name: load_at(b, pointers[name], channel) if name in pointers else f32(INITIAL[name])
                 for name in OPERANDS}
        scale = b.fdiv(value["weight"], b.call(sqrt, [b.fadd(value["var"], f32(eps))]))
        return value["mean"], scale, value["bias"]

    def normalise(x: ir.Value, mean: ir.Value, scale: ir.Value, bias: ir.Value) -> ir.Value:
        return b.fadd(b.fmul(b.fsub(x, mean), scale, flags=CONTRACT), bias, flags=CONTRACT)

    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "r") as r:
            base = b.mul(r, i64(cols))
            row_coefficients = None
            if per_row is not None:
                row_coefficients = coefficients(b.urem(b.udiv(r, i64(per_row)), i64(channels)))
            with for_range(b, c0, c1, "c") as c:
                idx = b.add(base, c)
                mean, scale, bias = coefficients(c) if row_coefficients is None else row_coefficients
                store_at(b, normalise(load_at(b, x_ptr, idx), mean, scale, bias), kb.out, idx)
    return kb.finish()


@register
class BatchNorm(KernelOp):
    """Eval-mode batch norm, 3 FLOPs an element (subtract, scale, shift; the per-channel scale is C-sized).
    SRAM per PE: the input and output tiles and the tile's channels of each channel vector. Traffic: the input
    tile read once and the channel vectors once a row (or once an element when the channel is the column), the
    output tile written once."""

    name = "batchnorm"
    flops_per_element = 3

    @staticmethod
    def _channels_in_tile(node: Node, tr: int, tc: int) -> int:
        channels, inner = int(node.attrs["channels"]), int(node.attrs["inner"])
        per_row = _rows_per_channel(channels, inner, output_view(node.shape)[1])
        return tc if per_row is None else min(channels, math.ceil(tr / per_row) + 1)

    def sram_bytes(self, graph: Graph, node: Node, cut: Cut, size: int, resident: bool = False) -> int:
        tr, tc = self.tile(node, cut)
        vectors = len(_operands(node.attrs)) * self._channels_in_tile(node, tr, tc)
        return (2 * rows_in_flight(tr) * tc + vectors) * size

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, tc = plan.largest_tile
        per_row = _rows_per_channel(int(node.attrs["channels"]), int(node.attrs["inner"]), plan.cols)
        vectors = len(_operands(node.attrs)) * (tr * tc if per_row is None else tr)
        return (tr * tc + vectors) * size, tr * tc * size

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        view = output_view(node.shape)
        return view, [view] + [(int(node.attrs["channels"]),)] * (len(node.inputs) - 1)

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_batchnorm(spec)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        x = inputs[0].astype(np.float64)
        channels, inner = int(attrs["channels"]), int(attrs["inner"])
        given = dict(zip(_operands(attrs), (v.astype(np.float64) for v in inputs[1:]), strict=True))
        channel = (np.arange(x.size).reshape(x.shape) // inner) % channels
        value = {name: given[name][channel] if name in given else INITIAL[name] for name in OPERANDS}
        return (x - value["mean"]) / np.sqrt(value["var"] + float(attrs["eps"])) * value["weight"] + value["bias"]
