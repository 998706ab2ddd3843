"""pool: the max or the mean of each window that im2col gathered, as torch's max, average and adaptive pools.

Inputs, in order: the windows [rows, cols, window] (an im2col "windows" value, or a reshape of the input when
one window covers the whole of each channel's spatial extent), then, for a mean whose divisor changes with
the output position (count_include_pad=False, a ceil-mode edge, adaptive windows of several widths), the
divisors [Rd, cols], read at (r % Rd, c). A uniform divisor is attrs["divisor"].

The max keeps NaN, as torch's does (a window holding NaN pools to NaN); a window's positions outside the input
were filled with -inf by the gather, so they never win. The mean sums the window and divides once, as torch
does.
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
from wsc.ops.codegen import FAST, KernelBuilder, KernelIR, KernelSpec, f32, for_range, i64, load_at, loop, store_at

MODES = ("max", "mean")


def _check(spec: KernelSpec) -> tuple[str, int, float | None]:
    mode, window, divisor = spec.attrs.get("mode"), int(spec.attrs.get("window", 0)), spec.attrs.get("divisor")
    if mode not in MODES:
        raise ValueError(f"pool: mode must be one of {', '.join(MODES)}, got {mode!r}")
    if len(spec.out_shape) != 2:
        raise ValueError(f"pool: expected out [R, C]; got {spec}")
    rows, cols = spec.out_shape
    per_position = mode == "mean" and divisor is None
    if len(spec.in_shapes) != 1 + per_position or spec.in_shapes[0] != (rows, cols, window):
        names = "windows [R, C, window]" + ", divisors [Rd, C]" * per_position
        raise ValueError(f"pool: expected inputs {names} with window {window}; got {spec}")
    if per_position:
        rd, cd = spec.in_shapes[1]
        if cd != cols or rd < 1 or rows % rd:
            raise ValueError(f"pool: divisors of shape {spec.in_shapes[1]} do not repeat over {(rows, cols)}")
    return str(mode), window, None if divisor is None else float(divisor)


def lower_pool(spec: KernelSpec) -> KernelIR:
    mode, window, divisor = _check(spec)
    rows, cols = spec.out_shape
    kb = KernelBuilder(spec, ["f32"] * len(spec.in_shapes))
    b = kb.b
    windows = kb.inputs[0]
    divisors = kb.inputs[1] if len(kb.inputs) > 1 else None
    rd = spec.in_shapes[1][0] if divisors is not None else 1

    def window_max(k: ir.Value, acc: list[ir.Value], row: ir.Value) -> list[ir.Value]:
        v = load_at(b, row, k)
        # v replaces the max when larger, or when NaN; a NaN max is then never replaced (NaN > v is false).
        take = b.or_(b.fcmp_ordered(">", v, acc[0]), b.fcmp_unordered("uno", v, v))
        return [b.select(take, v, acc[0])]

    def window_sum(k: ir.Value, acc: list[ir.Value], row: ir.Value) -> list[ir.Value]:
        return [b.fadd(acc[0], load_at(b, row, k), flags=FAST)]

    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "r") as r:
            base = b.mul(r, i64(cols))
            d_base = b.mul(b.urem(r, i64(rd)), i64(cols))
            with for_range(b, c0, c1, "c") as c:
                idx = b.add(base, c)
                row = b.gep(windows, [b.mul(idx, i64(window))], inbounds=True)
                if mode == "max":
                    (value,) = loop(b, i64(0), i64(window), [f32(-math.inf)],
                                    lambda k, acc: window_max(k, acc, row), name="k")
                else:
                    (total,) = loop(b, i64(0), i64(window), [f32(0.0)],
                                    lambda k, acc: window_sum(k, acc, row), name="k")
                    by = f32(divisor) if divisor is not None else load_at(b, divisors, b.add(d_base, c))
                    value = b.fdiv(total, by)
                store_at(b, value, kb.out, idx)
    return kb.finish()


@register
class Pool(KernelOp):
    """The max or mean of each window: `window` FLOPs an output (compares, or window - 1 adds and a divide).
    SRAM per PE: its windows (tr * tc * window), the output tile, and the divisors' tile when they vary.
    Traffic: every window element read once (and one divisor an output when they vary), the tile written
    once."""

    name = "pool"

    def flops(self, out_shape: Shape, in_shapes: Sequence[Shape], attrs: Mapping[str, Any]) -> int:
        return math.prod(out_shape) * int(attrs["window"])

    def sram_bytes(self, graph: Graph, node: Node, cut: Cut, size: int, resident: bool = False) -> int:
        tr, tc = self.tile(node, cut)
        held = rows_in_flight(tr) * tc
        divisors = held if len(node.inputs) > 1 else 0
        return (held * int(node.attrs["window"]) + held + divisors) * size

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, tc = plan.largest_tile
        divisors = tr * tc if len(node.inputs) > 1 else 0
        return (tr * tc * int(node.attrs["window"]) + divisors) * size, tr * tc * size

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        """windows as [rows, cols, window]; the divisors as [Rd, cols]."""
        rows, cols = output_view(node.shape)
        shapes: list[Shape] = [(rows, cols, int(node.attrs["window"]))]
        if len(node.inputs) > 1:
            shapes.append(output_view(graph[node.inputs[1]].shape))
        return (rows, cols), shapes

    def summed_terms(self, graph: Graph, node: Node) -> int:
        """A mean adds its whole window."""
        return max(1, int(node.attrs["window"]))

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_pool(spec)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        windows = inputs[0].astype(np.float64)
        if attrs["mode"] == "max":
            return windows.max(axis=-1)  # NaN in a window is the max, as in torch
        rows, cols = windows.shape[:2]
        if attrs.get("divisor") is not None:
            return windows.sum(axis=-1) / float(attrs["divisor"])
        divisors = inputs[1].astype(np.float64)
        return windows.sum(axis=-1) / np.tile(divisors, (rows // divisors.shape[0], 1))
