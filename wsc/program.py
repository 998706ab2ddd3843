"""The program the passes build up: the legal graph, cut into streaming layers, each mapped onto the mesh.

The graph stays the single source of shapes; a Layer only names its nodes and adds the mapping decisions
(tile grids, rectangles, routes) that the later passes make.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsc.ir import Graph
from wsc.targets import Target

DTYPE_SIZE = {"fp16": 2, "fp32": 4}  # bytes per element of the precision the target computes in


@dataclass
class KernelPlan:
    """How one kernel is cut into PE tiles: an h x w grid over its output viewed as [rows, cols].

    `tiles[i * w + j]` = (r0, r1, c0, c1) is the block of output computed by the PE at grid position (i, j);
    the executor runs exactly these tiles, so the plan is what the numbers depend on.
    """

    node: str
    rows: int
    cols: int
    h: int
    w: int
    tiles: np.ndarray
    sram_bytes_per_pe: int
    work: int  # FLOPs (or elements moved, for a kernel without arithmetic): what the areas balance

    @property
    def pes(self) -> int:
        return self.h * self.w


@dataclass
class Layer:
    """A streaming layer: its weights are on the wafer together, and only while it runs."""

    index: int
    name: str
    nodes: list[str]
    weights: list[str]  # param nodes this layer reads, streamed in before it runs
    kernels: dict[str, KernelPlan] = field(default_factory=dict)
    flows: list[Any] = field(default_factory=list)  # wsc.passes.place.Flow between this layer's kernels
    placement: Any = None  # wsc.passes.place.Placement
    routes: Any = None  # wsc.passes.route.Routes

    def signature(self, graph: Graph) -> str:
        """Equal for layers that map identically (every block of a GPT): their mapping is computed once."""
        parts: list[str] = []
        position: dict[str, int] = {}
        for name in self.nodes:
            node = graph[name]
            if node.is_kernel:
                position[name] = len(position)
                attrs = sorted((k, v) for k, v in node.attrs.items() if k != "value")
                parts.append(f"{node.op}{node.shape}{[graph[i].shape for i in node.inputs]}{attrs}")
        parts += [f"{position[f.src]}>{position[f.dst]}:{f.bytes}" for f in self.flows]
        return "|".join(parts)


@dataclass
class Program:
    graph: Graph
    target: Target
    model_name: str = "model"
    layers: list[Layer] = field(default_factory=list)
    strategy: str = "cpsat"
    dtype: str = "fp16"  # the precision the target computes and streams in (Cerebras trains in fp16)
    tokens: int = 0  # tokens per step: what the estimate divides by for tokens per second
    estimate: dict[str, Any] = field(default_factory=dict)

    def verify(self) -> None:
        """The invariants after any pass: a valid graph, and every layer naming real nodes of it."""
        self.graph.verify()
        for layer in self.layers:
            for name in layer.nodes + layer.weights:
                if name not in self.graph:
                    raise AssertionError(f"layer {layer.name} names missing node {name}")
            for name, plan in layer.kernels.items():
                covered = int(((plan.tiles[:, 1] - plan.tiles[:, 0]) * (plan.tiles[:, 3] - plan.tiles[:, 2])).sum())
                if covered != plan.rows * plan.cols:
                    raise AssertionError(f"kernel {name}: tiles cover {covered} of {plan.rows * plan.cols}")
