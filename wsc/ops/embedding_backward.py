"""The table gradient of an embedding lookup: out[v] = the sum, over the tokens t with ids[t] == v in ascending
order, of dy[t]; 0 for a row no id names and for the row of `padding_idx` (-1: none).

Tiles cut the output [V, D]. Each tile zeroes its block, then scans every id and adds the rows whose id falls
in its row range, one float32 add per element in token order: each element's sum is the same sequence of
roundings whatever the tiling, so any tiling gives identical bits (no reassociation is allowed in the adds).
An id outside [0, V) falls in no tile and is skipped, so the kernel never writes out of bounds; the
reference raises on it (the forward lookup already rejects it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.ops.base import KernelOp, Shape, output_view, register
from wsc.ops.codegen import KernelBuilder, KernelIR, KernelSpec, f32, for_range, i64, load_at, store_at
from wsc.ops.embedding import TOKEN_ID_BYTES


def _check_num_weights(attrs: Mapping[str, Any], vocab: int) -> None:
    if int(attrs.get("num_weights", vocab)) != vocab:
        raise ValueError(f"embedding_backward: num_weights {attrs['num_weights']} but the output has {vocab} rows")


def lower_embedding_backward(spec: KernelSpec) -> KernelIR:
    if len(spec.out_shape) != 2 or len(spec.in_shapes) != 2:
        raise ValueError(f"embedding_backward: expected out [V, D] and inputs dy [T, D], ids [T]; got {spec}")
    vocab, d = spec.out_shape
    dy_shape, ids_shape = spec.in_shapes
    if len(dy_shape) != 2 or dy_shape[1] != d or ids_shape != (dy_shape[0],):
        raise ValueError(f"embedding_backward: inputs {spec.in_shapes}, expected [T, {d}] and [T]")
    _check_num_weights(spec.attrs, vocab)
    tokens = dy_shape[0]
    padding = int(spec.attrs.get("padding_idx", -1))
    kb = KernelBuilder(spec, ["f32", "i64"])
    b = kb.b
    dy_ptr, ids_ptr = kb.inputs

    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "v") as v:
            o_row = b.gep(kb.out, [b.mul(v, i64(d))], inbounds=True)
            with for_range(b, c0, c1, "z") as c:
                store_at(b, f32(0.0), o_row, c)
        with for_range(b, i64(0), i64(tokens), "t") as t:
            v = load_at(b, ids_ptr, t)
            mine = b.and_(b.icmp_signed(">=", v, r0), b.icmp_signed("<", v, r1))
            if padding >= 0:
                mine = b.and_(mine, b.icmp_signed("!=", v, i64(padding)))
            with b.if_then(mine):
                o_row = b.gep(kb.out, [b.mul(v, i64(d))], inbounds=True)
                dy_row = b.gep(dy_ptr, [b.mul(t, i64(d))], inbounds=True)
                with for_range(b, c0, c1, "c") as c:
                    store_at(b, b.fadd(load_at(b, o_row, c), load_at(b, dy_row, c)), o_row, c)
    return kb.finish()


@register
class EmbeddingBackward(KernelOp):
    """The scatter-add of the output gradients into the table's rows: T * D adds. SRAM: the output tile (it
    accumulates over every token), a double buffer for the streamed gradient row and the ids in flight.
    Traffic, at worst (every id in the largest tile): every id, and per token a gradient row read and an
    accumulator row read and written, after the tile's zeroing."""

    name = "embedding_backward"

    def flops(self, out_shape: Shape, in_shapes: Sequence[Shape], attrs: Mapping[str, Any]) -> int:
        return math.prod(in_shapes[0])

    def sram_bytes(self, graph: Graph, node: Node, cut: Cut, size: int, resident: bool = False) -> int:
        tr, tc = self.tile(node, cut)
        return tr * tc * size + 2 * tc * size + 2 * TOKEN_ID_BYTES

    def sram_traffic(self, graph: Graph, node: Node, plan: KernelPlan, size: int) -> tuple[int, int]:
        tr, tc = plan.largest_tile
        tokens = graph[node.inputs[1]].numel
        return tokens * TOKEN_ID_BYTES + 2 * tokens * tc * size, (tr + tokens) * tc * size

    def summed_terms(self, graph: Graph, node: Node) -> int:
        """At worst every token names the same row, whose sum then adds all T gradients."""
        return max(1, graph[node.inputs[1]].numel)

    def abi(self, graph: Graph, node: Node) -> tuple[Shape, list[Shape]]:
        """The table gradient [V, D], the output gradients as [T, D] and the ids flattened to [T]."""
        vocab, d = output_view(node.shape)
        tokens = graph[node.inputs[1]].numel
        return (vocab, d), [(tokens, d), (tokens,)]

    def lower(self, spec: KernelSpec) -> KernelIR:
        return lower_embedding_backward(spec)

    def reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: Shape) -> np.ndarray:
        dy, ids = inputs
        vocab = out_shape[0]
        _check_num_weights(attrs, vocab)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise ValueError("embedding_backward: id out of range")
        kept = ids != int(attrs.get("padding_idx", -1))
        out = np.zeros(out_shape)
        np.add.at(out, ids[kept], dy.astype(np.float64)[kept])
        return out
