"""fuse-epilogues: fold a GELU and a residual add into the matmul that feeds them.

A transformer block's MLP is matmul -> GELU -> matmul -> residual add, and its attention ends with
matmul -> residual add. Done separately, each elementwise op is a kernel of its own: a rectangle of PEs, a
flow of the whole activation across the fabric, and a pass over memory in the runtime. Fused, the matmul
applies them to its output block while it is still in its PE (out = residual + gelu(a @ b + bias)), which is
how a dataflow PE would do it. A matmul fuses an op when it is that op's input and has no other reader;
a reshape between them that keeps the last dimension (Hugging Face's Conv1D views) is looked through.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from wsc import ops
from wsc.core.ir import Graph, Node
from wsc.core.program import Program


@dataclass(frozen=True)
class FuseEpilogues:
    """Which ops may fuse is the op table's: an op says how a kernel feeding it could compute it
    (`epilogue`), and the kernel whether it can take that on (`accepts_epilogue`)."""

    name: ClassVar[str] = "fuse-epilogues"

    def __call__(self, program: Program) -> Program:
        graph = program.graph
        current: dict[str, Node] = {}  # every node as it now reads: fused matmuls replace what they absorbed
        absorbed: set[str] = set()
        for node in graph:
            current[node.name] = node
            if not node.is_kernel:
                continue
            op = ops.kernel(node.op)
            for position in range(len(node.inputs)):
                how = op.epilogue(graph, node, position)
                found = self.sole_kernel(graph, current, node.inputs[position]) if how else None
                # A residual that is the absorbed value itself (y + y) would read what the fusion removes.
                if how and found and how[1] not in found[1] \
                        and ops.kernel(found[0].op).accepts_epilogue(found[0], how[0]):
                    current[node.name] = fused(found[0], node, how[0], extra_input=how[1])
                    absorbed.update(found[1])
                    break
        out = Graph()
        for name in graph.g.nodes:
            if name not in absorbed:
                out.add(current[name])
        out.outputs = list(graph.outputs)
        return replace(program, graph=out)

    @staticmethod
    def sole_kernel(graph: Graph, current: dict[str, Node], name: str) -> tuple[Node, list[str]] | None:
        """The kernel whose value `name` is (directly, or through a reshape that keeps the last dim: the
        same elements in the same order, so the same output blocks) and
        that nothing else reads; with the names it would absorb."""
        chain = [name]
        node = current[name]
        if ops.is_layout(node.op) and ops.layout_op(node.op).keeps_order \
                and graph[node.inputs[0]].shape[-1:] == node.shape[-1:]:
            chain.append(node.inputs[0])
            node = current[node.inputs[0]]
        if not node.is_kernel:
            return None
        if any(len(graph.users(step)) != 1 for step in chain) or name in graph.outputs:
            return None
        return node, chain


def fused(kernel: Node, op: Node, attrs: dict, extra_input: str | None = None) -> Node:
    """`kernel` computing `op` too, under `op`'s name and shape (so its readers need no change)."""
    inputs = list(kernel.inputs) + ([extra_input] if extra_input else [])
    return Node(op.name, kernel.op, tuple(inputs), op.shape, op.dtype, {**kernel.attrs, **attrs},
                flops=kernel.flops + op.flops, bytes=kernel.bytes + op.bytes, layer=kernel.layer,
                module=kernel.module, source=kernel.source, holds=op.holds,
                phase=kernel.phase or op.phase)
