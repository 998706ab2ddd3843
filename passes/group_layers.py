"""group-layers: cut the graph into streaming layers, the unit whose weights share the wafer.

A GPT's layers are its embedding, each transformer block and the final norm with the LM head. Blocks are found
from the module path each op was captured under: the first numbered component (`blocks.3`, `transformer.h.3`)
names the block. Ops outside any block belong to the embedding layer when they come before the first block,
to the head layer after the last one, and to the block before them otherwise. A model with no numbered
blocks is one layer. This is the `split_module` cut of torch.fx, done on the wsc graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import ClassVar

from wsc import ops
from wsc.core.ir import Graph, Node
from wsc.core.mesh import Flow
from wsc.core.program import DTYPE_SIZE, Layer, Program


def block_of(module_path: str) -> str | None:
    parts = module_path.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return None


@dataclass(frozen=True)
class GroupLayers:
    name: ClassVar[str] = "group-layers"

    def __call__(self, program: Program) -> Program:
        graph = program.graph
        body = [n for n in graph if n.op not in ("input", "param") and not n.phase]
        blocks = [block_of(n.module) for n in body]
        numbered = [i for i, b in enumerate(blocks) if b is not None]
        names: list[str] = []
        for i, block in enumerate(blocks):
            if block is None:
                if not numbered:
                    block = "model"
                elif i < numbered[0]:
                    block = "embed"
                elif i > numbered[-1]:
                    block = "head"
                else:
                    block = names[-1]
            names.append(block)
        backward = [n for n in graph if n.phase == "backward"]
        if backward:
            body, names = body + backward, names + backward_layers(body, names, backward)
        order = list(dict.fromkeys(names))
        layers = [Layer(index, name, [], []) for index, name in enumerate(order)]
        by_name = {layer.name: layer for layer in layers}
        index_of: dict[str, int] = {}
        for node, name in zip(body, names, strict=True):
            # A layer runs after those before it, so a node reading a value of a later layer moves to that layer
            # (a training graph's backward node whose module placed it before the layer computing its input).
            later = max((index_of[src] for src in node.inputs if src in index_of), default=-1)
            layer = layers[max(by_name[name].index, later)]
            index_of[node.name] = layer.index
            layer.nodes.append(node.name)
            for src in node.inputs:
                if graph[src].op == "param" and src not in layer.weights:
                    layer.weights.append(src)
        grouped = Graph()
        for node in graph:
            grouped.add(replace(node, layer=index_of.get(node.name, node.layer)))
        grouped.outputs = list(graph.outputs)
        element_bytes = DTYPE_SIZE[program.dtype]
        for layer in layers:
            layer.flows = kernel_flows(grouped, layer, element_bytes)
        return replace(program, graph=grouped, layers=layers)


def backward_layers(forward: list[Node], names: list[str], backward: list[Node]) -> list[str]:
    """The layer of each backward node: the backward of the forward layer its module is in (`blocks.3.backward`),
    so the backward runs as layers of its own, each streaming its forward layer's weights again."""
    layer_of_module: dict[str, str] = {}
    for node, name in zip(forward, names, strict=True):
        layer_of_module.setdefault(node.module, name)
    last = names[-1] if names else "model"
    out = []
    for node in backward:
        block = block_of(node.module)
        if block is None:
            block = layer_of_module.get(node.module) or next(
                (name for module, name in layer_of_module.items() if module and module.startswith(node.module + ".")),
                last)
        out.append(f"{block}.backward")
    return out


def kernel_flows(graph: Graph, layer: Layer, element_bytes: int) -> list[Flow]:
    """The on-wafer traffic of a layer: for each kernel input, the kernel of this layer that produced it
    (looking through layout ops, which are routing), carrying the value in the target's precision."""
    flows: dict[tuple[str, str], int] = {}
    for producer, consumer, elements in _reads(graph, layer, set(layer.nodes)):
        flows[producer, consumer] = flows.get((producer, consumer), 0) + elements * element_bytes
    return [Flow(src, dst, nbytes) for (src, dst), nbytes in flows.items()]


def handoff_flows(graph: Graph, layers: list[Layer], element_bytes: int) -> list[tuple[int, str, int, str, int]]:
    """The activations handed from one layer to a later one, as (producer layer, producer kernel, consumer
    layer, consumer kernel, bytes): for each kernel input, the kernels of other layers that produced it
    (looking through layout ops). Pipelined mode routes them, every layer being resident at once."""
    layer_of = {name: layer.index for layer in layers for name in layer.nodes}
    flows: dict[tuple[int, str, int, str], int] = {}
    for layer in layers:
        for producer, consumer, elements in _reads(graph, layer, set(layer_of)):
            if layer_of[producer] != layer.index:
                key = (layer_of[producer], producer, layer.index, consumer)
                flows[key] = flows.get(key, 0) + elements * element_bytes
    return [(a, b, c, d, nbytes) for (a, b, c, d), nbytes in flows.items()]


def _reads(graph: Graph, layer: Layer, members: set[str]) -> Iterator[tuple[str, str, int]]:
    """(producer kernel, consumer kernel, elements) for each input of each kernel of `layer`, the producers
    found among `members` through layout ops."""
    for name in layer.nodes:
        node = graph[name]
        if node.is_kernel:
            for src in node.inputs:
                for producer in _kernels_behind(graph, src, members):
                    yield producer, name, graph[src].numel


def _kernels_behind(graph: Graph, name: str, members: set[str]) -> list[str]:
    """The kernels of the layer whose outputs reach value `name` through layout ops only (a concatenation has
    several), each once."""
    found: list[str] = []
    seen: set[str] = set()
    stack = [name]
    while stack:
        node = graph[stack.pop()]
        if node.name in seen or node.name not in members:
            continue
        seen.add(node.name)
        if node.is_kernel:
            found.append(node.name)
        elif ops.is_layout(node.op):
            stack.extend(reversed(node.inputs))
    return found
