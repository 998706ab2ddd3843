"""Embedding lookup: out[t, c] = weight[ids[t], c].

Ids are range-checked in Python before the call rather than clamped in the kernel: a bad id is a
bug upstream, and clamping would hide it behind plausible-looking output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.ops.base import KernelOp, Shape, output_view, register, rows_in_flight
from wsc.ops.codegen import (
    KernelBuilder,
    KernelIR,
    KernelSpec,
    for_range,
    i64,
    load_at,
    store_at,
)


def lower_embedding(spec: KernelSpec) -> KernelIR:
    if len(spec.out_shape) != 2 or len(spec.in_shapes) != 2:
        raise ValueError(f"embedding: expected out [T, D] and inputs weight [V, D], ids [T]; got {spec}")
    t_dim, d = spec.out_shape
    w_shape, ids_shape = spec.in_shapes
    if len(w_shape) != 2 or w_shape[1] != d or ids_shape != (t_dim,):
        raise ValueError(f"embedding: inputs {spec.in_shapes}, expected [V, {d}] and [{t_dim}]")
    vocab = w_shape[0]
    kb = KernelBuilder(spec, ["f32", "i64"])
    b = kb.b
    w_ptr, ids_ptr = kb.inputs

    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "t") as t:
            w_row = b.gep(w_ptr, [b.mul(load_at(b, ids_ptr, t), i64(d))], inbounds=True)
            o_row = b.gep(kb.out, [b.mul(t, i64(d))], inbounds=True)
            with for_range(b, c0, c1, "c") as c:
                store_at(b, load_at(b, w_row, c), o_row, c)

    def check_ids(inputs: Sequence[np.ndarray]) -> None:
        ids = inputs[1]
        bad = (ids < 0) | (ids >= vocab)
        if bad.any():
            t = int(np.argmax(bad))
            raise ValueError(f"embedding: id {int(ids[t])} at position {t} is outside [0, {vocab})")

    return kb.finish(check_ids)


TOKEN_ID_BYTES = 8  # ids are int64 whatever the compute dtype


@register
class Embedding(KernelOp):
    """out[t] = weight[ids[t]]: no arithmetic; its backward scatter-adds each output gradient into the table
    (one add per output element). SRAM: the output tile, the tile's token ids, and a double buffer for the
    streamed table row. Traffic: reads the tile's ids, writes the gathered rows."""

    name = "embedding"

    def backward_flops(self, node: Node) -> int:
        return node.numel

    def sram_bytes(self, graph: Graph, node: Node, cut: Cut, size: int, resident: bool = False) -> int:
        tr, tc = self.tile(node, cut)
        held = rows_in_flight(tr)
        return held * tc * size + held * TOKEN_ID_BYTES + 2 * tc * size

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, tc = plan.largest_tile
        return tr * TOKEN_ID_BYTES, tr * tc * size

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        """The table [V, D] and the ids flattened to [T]."""
        return output_view(node.shape), [graph[node.inputs[0]].shape, (graph[node.inputs[1]].numel,)]

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_embedding(spec)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        weight, ids = inputs
        if ids.size and (ids.min() < 0 or ids.max() >= weight.shape[0]):
            raise ValueError("embedding: id out of range")
        return weight[ids].astype(np.float64)
