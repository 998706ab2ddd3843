"""The gradient of nll over its log-probabilities: one value at each row's target, zero elsewhere.

    nll_backward  out[r, c] = coef  where c == target[r] != ignore_index, else 0

Inputs: the int64 targets [R] and `coef` [1], the loss's gradient over what its reduction divides by, negated
(-grad / total weight for a mean, -grad for a sum): the backward of cross-entropy is then this and the
backward of log_softmax (wsc/ops/softmax_backward.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.ops.base import KernelOp, Shape, register, rows_in_flight
from wsc.ops.codegen import KernelBuilder, KernelIR, KernelSpec, f32, for_range, i64, load_at, store_at

TARGET_BYTES = 8


@register
class NllBackward(KernelOp):
    """No arithmetic: a select per element. SRAM: the output rows in flight and their targets. Traffic: the
    tile's targets read, the tile written."""

    name = "nll_backward"

    def sram_bytes(self, graph: Graph, node: Node, cut: Cut, size: int, resident: bool = False) -> int:
        tr, tc = self.tile(node, cut)
        return rows_in_flight(tr) * (tc * size + TARGET_BYTES) + size

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, tc = plan.largest_tile
        return tr * TARGET_BYTES + size, tr * tc * size

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        rows, classes = node.shape
        return (rows, classes), [(rows,), (1,)]

    def lower(self, spec: KernelSpec) -> KernelIR:
        rows, classes = spec.out_shape
        if list(spec.in_shapes) != [(rows,), (1,)]:
            raise ValueError(f"nll_backward: expected inputs [{rows}] and [1]; got {spec}")
        ignore = int(spec.attrs.get("ignore_index", -100))
        kb = KernelBuilder(spec, ["i64", "f32"])
        b = kb.b
        targets, coef_ptr = kb.inputs
        coef = load_at(b, coef_ptr, i64(0))
        with kb.for_tiles() as (r0, r1, c0, c1):
            with for_range(b, r0, r1, "r") as r:
                target = load_at(b, targets, r)
                kept = b.icmp_signed("!=", target, i64(ignore))
                o_row = b.gep(kb.out, [b.mul(r, i64(classes))], inbounds=True)
                with for_range(b, c0, c1, "c") as c:
                    hit = b.and_(kept, b.icmp_signed("==", c, target))
                    store_at(b, b.select(hit, coef, f32(0.0)), o_row, c)

        def check_targets(inputs: Sequence[np.ndarray]) -> None:
            t = inputs[0]
            bad = (t != ignore) & ((t < 0) | (t >= classes))
            if bad.any():
                at = int(np.argmax(bad))
                raise ValueError(f"nll_backward: target {int(t[at])} at position {at} is outside [0, {classes})")

        return kb.finish(check_targets)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        targets, coef = inputs
        out = np.zeros(out_shape)
        kept = targets != int(attrs.get("ignore_index", -100))
        out[np.flatnonzero(kept), targets[kept]] = float(coef.reshape(-1)[0])
        return out
