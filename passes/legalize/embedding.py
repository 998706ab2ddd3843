"""The rule for embedding lookups."""

from __future__ import annotations

from wsc.core.ir import Node
from wsc.passes.legalize import Rewriter, legalizes


@legalizes("aten.embedding.default")
def _embedding(rw: Rewriter, node: Node) -> str:
    weight, ids = rw.arg(node, 0, "weight"), rw.arg(node, 1, "indices")
    return rw.emit("embedding", [weight, ids], node.shape, final=True)
