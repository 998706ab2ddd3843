"""Negative log-likelihood of class-index targets, the pick cross_entropy makes after its log_softmax.

    nll         out[r] = -weight[t] * logp[r, t], t = target[r]   (0 where t == ignore_index)
    nll_weight  out[r] = weight[t]                                 (0 where t == ignore_index)

Inputs: the log-probabilities [R, C] (nll only), the int64 targets [R], and optionally the class weights [C]
(without them every weight is 1). nll_weight gives what a mean reduction divides by: torch's mean is the sum
of the losses over the sum of the weights of the targets it does not ignore. A target outside [0, C) that is
not ignore_index is an error, as in torch, checked before the call: never clamped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from llvmlite import ir

from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.ops.base import KernelOp, Shape, register, rows_in_flight
from wsc.ops.codegen import KernelBuilder, KernelIR, KernelSpec, f32, for_range, i64, load_at, store_at

TARGET_BYTES = 8  # targets are int64 whatever the compute dtype


class Pick(KernelOp):
    """Both ops: [R, 1] outputs, one value per target. A PE holds its rows' targets, the log-probability each
    picks (it arrives from the PE holding the row) and, with class weights, the weights; it writes one value a
    row."""

    reads_logp: ClassVar[bool]
    flops_per_element = 1

    def sram_bytes(self, graph: Graph, node: Node, cut: Cut, size: int, resident: bool = False) -> int:
        tr, _ = self.tile(node, cut)
        classes = self.classes(graph, node)
        weights = classes * size if self.weighted(node) else 0
        return rows_in_flight(tr) * (TARGET_BYTES + size * (1 + self.reads_logp)) + weights

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, _ = plan.largest_tile
        return tr * (TARGET_BYTES + size * (self.reads_logp + self.weighted(node))), tr * size

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        rows = node.numel
        shapes: list[Shape] = [(rows, self.classes(graph, node))] if self.reads_logp else []
        shapes.append((rows,))
        return (rows, 1), shapes + [(self.classes(graph, node),)] * self.weighted(node)

    @staticmethod
    def weighted(node: Node) -> bool:
        return bool(node.attrs.get("weighted", False))

    def classes(self, graph: Graph, node: Node) -> int:
        return int(node.attrs["classes"])

    def lower(self, spec: KernelSpec) -> KernelIR:
        rows = spec.out_shape[0] if spec.out_shape else 0
        classes = int(spec.attrs["classes"])
        weighted = bool(spec.attrs.get("weighted", False))
        expected = ([(rows, classes)] if self.reads_logp else []) + [(rows,)] + [(classes,)] * weighted
        if spec.out_shape != (rows, 1) or list(spec.in_shapes) != expected:
            raise ValueError(f"{spec.op}: expected out [{rows}, 1] and inputs {expected}; got {spec}")
        ignore = int(spec.attrs.get("ignore_index", -100))
        kb = KernelBuilder(spec, (["f32"] if self.reads_logp else []) + ["i64"] + ["f32"] * weighted)
        b = kb.b
        logp = kb.inputs[0] if self.reads_logp else None
        targets = kb.inputs[int(self.reads_logp)]
        weights = kb.inputs[-1] if weighted else None

        with kb.for_tiles() as (r0, r1, c0, c1):
            with for_range(b, r0, r1, "r") as r:
                with for_range(b, c0, c1, "c"):
                    target = load_at(b, targets, r)
                    kept = b.icmp_signed("!=", target, i64(ignore))
                    t = b.select(kept, target, i64(0))  # an ignored target may be any number: never read at it
                    value = self.pick(b, logp, weights, r, t, classes)
                    store_at(b, b.select(kept, value, f32(0.0)), kb.out, r)

        def check_targets(inputs: Sequence[np.ndarray]) -> None:
            t = inputs[int(self.reads_logp)]
            bad = (t != ignore) & ((t < 0) | (t >= classes))
            if bad.any():
                at = int(np.argmax(bad))
                raise ValueError(f"{spec.op}: target {int(t[at])} at position {at} is outside [0, {classes})")

        return kb.finish(check_targets)

    def pick(self, b: ir.IRBuilder, logp: ir.Value | None, weights: ir.Value | None, r: ir.Value, t: ir.Value,
             classes: int) -> ir.Value:
        raise NotImplementedError

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        targets = inputs[int(self.reads_logp)]
        classes = int(attrs["classes"])
        kept = targets != int(attrs.get("ignore_index", -100))
        t = np.where(kept, targets, 0)
        if ((t < 0) | (t >= classes)).any():
            raise ValueError(f"{self.name}: target out of range")
        w = inputs[-1].astype(np.float64)[t] if attrs.get("weighted", False) else np.ones(len(t))
        if self.reads_logp:
            w = -w * inputs[0].astype(np.float64)[np.arange(len(t)), t]
        return np.where(kept, w, 0.0).reshape(-1, 1)


@register
class Nll(Pick):
    """-weight[t] * logp[r, t]: 1 FLOP a row (2 with weights)."""

    name = "nll"
    reads_logp = True

    def pick(self, b: ir.IRBuilder, logp: ir.Value | None, weights: ir.Value | None, r: ir.Value, t: ir.Value,
             classes: int) -> ir.Value:
        assert logp is not None
        value = b.fneg(load_at(b, logp, b.add(b.mul(r, i64(classes)), t)))
        return b.fmul(load_at(b, weights, t), value) if weights is not None else value


@register
class NllWeight(Pick):
    """weight[t] (1 without class weights): what a mean over the kept targets divides by."""

    name = "nll_weight"
    reads_logp = False

    def pick(self, b: ir.IRBuilder, logp: ir.Value | None, weights: ir.Value | None, r: ir.Value, t: ir.Value,
             classes: int) -> ir.Value:
        return load_at(b, weights, t) if weights is not None else f32(1.0)
