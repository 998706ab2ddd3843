"""The wsc IR: one small graph of ops with shapes, used from capture to execution.

A `Graph` is a networkx DiGraph whose nodes are `Node`s (an edge u -> v means v reads u's value). Shapes,
dtypes, FLOPs and bytes are recorded once, at capture and legalisation, and every later pass reads them from
the node; nothing re-infers a shape.

Node kinds:
- `input`: a user input (token ids); `param`: a weight, streamed from the weight store (attrs["key"] names it
  there); `const`: a value known at compile time (attrs["value"], a small numpy array).
- kernels: the ops that do arithmetic and occupy PEs (KERNEL_OPS); layout ops (LAYOUT_OPS: `reshape`,
  `permute`, `slice`), which on the wafer are routing, not compute, so they take no PEs. What each op means
  is the op table's (`wsc/ops/`, one file per family), which names its ops here as it loads: the IR knows a
  node's kind, never an op's meaning.
- before legalisation, nodes carry their ATen name (e.g. `aten.linear.default`) and attrs["args"].
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from wsc.core.dtypes import BYTES as DTYPE_BYTES

SOURCE_OPS = ("input", "param", "const")
KERNEL_OPS: set[str] = set()  # filled by wsc.ops.register
LAYOUT_OPS: set[str] = set()



@dataclass(frozen=True)
class Ref:
    """A reference to another node's value inside a pre-legalisation node's args."""

    name: str


@dataclass
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    attrs: dict[str, Any] = field(default_factory=dict)
    flops: int = 0
    bytes: int = 0  # bytes read plus bytes written by this op
    layer: int | None = None
    module: str = ""  # the nn.Module path that produced the op, e.g. "blocks.3.attn"
    source: str = ""  # "file.py:LINE: code" of the user's line that produced the op
    # The captured (ATen) node whose value this node holds, set by legalisation: verification compares the
    # node with that node's value in eager PyTorch. Empty for a value legalisation invents (an operand reshaped
    # for a kernel's ABI), which has no counterpart in the captured graph.
    holds: str = ""
    # "backward" for a node of a training graph's backward pass (the gradients), "" for the forward: the
    # backward of a layer streams its weights again and is a layer of its own (passes/group_layers.py).
    phase: str = ""

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]

    @property
    def is_kernel(self) -> bool:
        if not KERNEL_OPS:  # a silent False would make every kernel look like data
            raise IRError("the op table is not loaded: import wsc.ops before asking a node's kind")
        return self.op in KERNEL_OPS


class IRError(Exception):
    """The IR broke one of its invariants: a bug in a pass, not in the user's model."""


@dataclass
class Graph:
    """Nodes in a valid execution order (insertion order), plus the graph's inputs and outputs."""

    g: nx.DiGraph = field(default_factory=nx.DiGraph)
    outputs: list[str] = field(default_factory=list)

    def add(self, node: Node) -> Node:
        if node.name in self.g:
            raise IRError(f"duplicate node name {node.name}")
        for src in node.inputs:
            if src not in self.g:
                raise IRError(f"node {node.name} reads {src}, which is not defined before it")
        self.g.add_node(node.name, node=node)
        for src in node.inputs:
            self.g.add_edge(src, node.name)
        return node

    def __getitem__(self, name: str) -> Node:
        return self.g.nodes[name]["node"]

    def __contains__(self, name: str) -> bool:
        return name in self.g

    def __iter__(self) -> Iterator[Node]:
        for name in self.g.nodes:
            yield self.g.nodes[name]["node"]

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def users(self, name: str) -> list[str]:
        return list(self.g.successors(name))

    def nodes_of(self, *ops: str) -> list[Node]:
        return [n for n in self if n.op in ops]

    @property
    def inputs(self) -> list[Node]:
        return self.nodes_of("input")

    @property
    def params(self) -> list[Node]:
        return self.nodes_of("param")

    def verify(self, legal: bool = False) -> None:
        """Check the invariants every pass must keep; `legal` also demands only wsc ops."""
        if legal and not KERNEL_OPS:
            raise IRError("the op table is not loaded: import wsc.ops before verifying a legal graph")
        if not nx.is_directed_acyclic_graph(self.g):
            raise IRError("graph has a cycle")
        seen: set[str] = set()
        for node in self:
            for src in node.inputs:
                if src not in seen:
                    raise IRError(f"node {node.name} reads {src} before it is computed")
            if any(d < 0 for d in node.shape):
                raise IRError(f"node {node.name} has a negative dimension {node.shape}")
            if node.dtype not in DTYPE_BYTES:
                raise IRError(f"node {node.name} has unknown dtype {node.dtype}")
            if legal and node.op not in SOURCE_OPS and node.op not in KERNEL_OPS and node.op not in LAYOUT_OPS:
                raise IRError(f"node {node.name} is still {node.op} after legalisation")
            seen.add(node.name)
        for out in self.outputs:
            if out not in seen:
                raise IRError(f"output {out} is not a node")

    def summary(self) -> str:
        """A text listing, one node a line: what tests compare and what `--dump-ir` prints."""
        lines = []
        for n in self:
            shape = "x".join(map(str, n.shape)) or "scalar"
            layer = "" if n.layer is None else f" @L{n.layer}"
            lines.append(f"{n.name} = {n.op}({', '.join(n.inputs)}) : {n.dtype}[{shape}]{layer}")
        lines.append(f"return {', '.join(self.outputs)}")
        return "\n".join(lines)
