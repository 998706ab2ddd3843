"""fuse-epilogues: fold a GELU and a residual add into the matmul that feeds them.

A transformer block's MLP is matmul -> GELU -> matmul -> residual add, and its attention ends with
matmul -> residual add. Done separately, each elementwise op is a kernel of its own: a rectangle of PEs, a
flow of the whole activation across the fabric, and a pass over memory in the runtime. Fused, the matmul
applies them to its output block while it is still in its PE (out = residual + gelu(a @ b + bias)), which is
how a dataflow PE would do it. A matmul fuses an op when it is that op's input and has no other reader;
a reshape between them that keeps the last dimension (Hugging Face's Conv1D views) is looked through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from wsc.ir import Graph, Node
from wsc.program import Program


@dataclass(frozen=True)
class FuseEpilogues:
    name: ClassVar[str] = "fuse-epilogues"
    gelu: bool = True
    residual: bool = True

    def __call__(self, program: Program) -> Program:
        graph = program.graph
        current: dict[str, Node] = {}  # every node as it now reads: fused matmuls replace what they absorbed
        absorbed: set[str] = set()
        for node in graph:
            current[node.name] = node
            if self.gelu and node.op == "gelu":
                found = self.sole_matmul(graph, current, node.inputs[0])
                if found and found[0].attrs.get("epilogue", "none") == "none" and not found[0].attrs.get("residual"):
                    attrs = {"epilogue": "gelu", "approximate": node.attrs.get("approximate", "none")}
                    current[node.name] = fused(found[0], node, attrs)
                    absorbed.update(found[1])
            elif self.residual and node.op == "add":
                for position in (0, 1):
                    found = self.sole_matmul(graph, current, node.inputs[position])
                    other = node.inputs[1 - position]
                    if found and not found[0].attrs.get("residual") and graph[other].shape == node.shape:
                        current[node.name] = fused(found[0], node, {"residual": True}, extra_input=other)
                        absorbed.update(found[1])
                        break
        out = Graph()
        for name in graph.g.nodes:
            if name not in absorbed:
                out.add(current[name])
        out.outputs = list(graph.outputs)
        program.graph = out
        return program

    @staticmethod
    def sole_matmul(graph: Graph, current: dict[str, Node], name: str) -> tuple[Node, list[str]] | None:
        """The matmul whose value `name` is (directly, or through a reshape that keeps the last dim) and
        that nothing else reads; with the names it would absorb."""
        chain = [name]
        node = current[name]
        if node.op == "reshape" and graph[node.inputs[0]].shape[-1:] == node.shape[-1:]:
            chain.append(node.inputs[0])
            node = current[node.inputs[0]]
        if node.op != "matmul" or node.dtype != "float32":
            return None
        if any(len(graph.users(step)) != 1 for step in chain) or name in graph.outputs:
            return None
        return node, chain


def fused(matmul: Node, op: Node, attrs: dict, extra_input: str | None = None) -> Node:
    """`matmul` computing `op` too, under `op`'s name and shape (so its readers need no change)."""
    inputs = list(matmul.inputs) + ([extra_input] if extra_input else [])
    return Node(op.name, "matmul", tuple(inputs), op.shape, op.dtype, {**matmul.attrs, **attrs},
                flops=matmul.flops + op.flops, bytes=matmul.bytes + op.bytes, layer=matmul.layer,
                module=matmul.module, source=matmul.source)
