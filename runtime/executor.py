"""The executor: runs a compiled Program layer by layer, streaming each layer's weights from the store.

Activations stay resident between layers (as they stay on the wafer); a layer's weights are streamed in just
before it runs and released right after. Every kernel runs through its JIT-compiled LLVM function over exactly
the tiles the partitioner chose; outputs start as NaN, so an element no tile computed cannot pass for a value.
Layout ops (reshape, permute, slice, concat, gather, cast, ...) only move data, as the fabric does. What each op
does is the op table's (`wsc/ops/`): its ABI shapes, its kernel, how it runs with a split reduction.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsc import ops
from wsc.core import progress
from wsc.core.errors import WscError
from wsc.core.ir import Node
from wsc.core.program import KernelPlan, Layer, Program
from wsc.runtime.lowering import compile_kernel
from wsc.runtime.weight_store import WeightStore


def column_runs(tiles: np.ndarray) -> np.ndarray:
    """The tiles in the order the host runs them, a column of PEs at a time.

    Column blocks go outermost, so every row tile of a column block reuses the same rows of the streamed
    operand while they are in cache. Tiles of one column block whose rows follow each other (the PEs of one
    grid column) are handed to the kernel as one call: it computes exactly the same elements, each by the same
    dot product, but can block over the rows (a 128-token matmul cut into 128 row blocks would otherwise be
    run one row at a time). Tiles that do not line up (a moved or duplicated tile) stay as they are, so the
    output still depends on every tile the partitioner chose.
    """
    if len(tiles) == 0:
        return np.ascontiguousarray(tiles)
    t = tiles[np.lexsort((tiles[:, 0], tiles[:, 3], tiles[:, 2]))]
    joins = (t[1:, 2] == t[:-1, 2]) & (t[1:, 3] == t[:-1, 3]) & (t[1:, 0] == t[:-1, 1]) & (t[1:, 0] < t[1:, 1])
    starts = np.flatnonzero(np.concatenate([[True], ~joins]))
    ends = np.concatenate([starts[1:], [len(t)]]) - 1
    return np.ascontiguousarray(np.stack([t[starts, 0], t[ends, 1], t[starts, 2], t[starts, 3]], axis=1))


def kernel_attrs(node: Node) -> dict:
    return {k: v for k, v in node.attrs.items() if k != "value"}


@dataclass
class RunStats:
    seconds: float = 0.0
    kernel_seconds: float = 0.0
    layers: list[dict] = field(default_factory=list)


class Executor:
    """Runs a Program; with `prefetch`, the next layer's weights are copied in while the current layer runs.

    Prefetch is off by default: it doubles the resident weights (two layers instead of one) in exchange for
    hiding the copy, which is the trade a caller should choose (the store never holds more than two layers
    either way: the next layer's copy starts only after the previous layer was released).
    """

    def __init__(self, program: Program, store: WeightStore, threads: int | None = None, prefetch: bool = False):
        self.program = program
        self.graph = program.graph
        self.store = store
        self.prefetch = prefetch
        self.threads = threads or os.cpu_count() or 1
        self.kernels = {}
        self.tiles: dict[int, np.ndarray] = {}
        for layer in program.layers:
            for name in layer.nodes:
                node = self.graph[name]
                if node.is_kernel and layer.kernels[name].k_splits == 1:
                    out, ins = ops.kernel(node.op).abi(self.graph, node)
                    self.kernels[name] = compile_kernel(node.op, out, ins, kernel_attrs(node))
        # Outputs handed to `sink` (position, value) as soon as they are computed instead of held to the end of
        # the pass: a training step's gradients, streamed out to the store a layer at a time.
        self.sink: Callable[[int, np.ndarray], None] | None = None
        self.sunk: dict[str, list[int]] = {}
        self.current_layer = ""  # the layer running (what a sink may note)
        self.last_use = self._last_use()
        self.stats = RunStats()
        # Called with (layer, name, value) for each weight as streamed in and each value as computed, while
        # its layer runs: what a per-layer diff compares, without the executor holding any value longer.
        self.observer: Callable[[Layer, str, np.ndarray], None] | None = None

    def _last_use(self) -> dict[str, int]:
        """The last layer that reads each value: after it, the activation is freed."""
        last: dict[str, int] = {}
        for layer in self.program.layers:
            for name in layer.nodes:
                for src in self.graph[name].inputs:
                    last[src] = layer.index
        for out in self.graph.outputs:
            if out not in self.sunk:
                last[out] = len(self.program.layers)
        return last

    def stream_out(self, positions: list[int], sink: Callable[[int, np.ndarray], None]) -> None:
        """Hand the outputs at `positions` to `sink` as their layer computes them; run_pass gives None for them."""
        self.sink, self.sunk = sink, {}
        for position in positions:
            self.sunk.setdefault(self.graph.outputs[position], []).append(position)
        self.last_use = self._last_use()

    def _ordered_tiles(self, plan: KernelPlan) -> np.ndarray:
        key = id(plan.tiles)
        if key not in self.tiles:
            self.tiles[key] = column_runs(plan.tiles)
        return self.tiles[key]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """One step: every micro-batch of the inputs through every layer (the weights streamed in again for
        each, as on the target), the passes' outputs put back together along the batch."""
        graph, program = self.graph, self.program
        if len(inputs) != len(graph.inputs):
            raise WscError(f"the program takes {len(graph.inputs)} inputs, got {len(inputs)}")
        passes = program.micro_batches
        self.stats.seconds = 0.0
        if passes == 1:
            return self.run_pass(inputs)
        per_pass = []
        for p in range(passes):
            sliced = []
            for node, value in zip(graph.inputs, inputs, strict=True):
                rows = node.shape[0] if node.name in program.batched_inputs else None
                sliced.append(value if rows is None else value[p * rows : (p + 1) * rows])
            per_pass.append(self.run_pass(sliced))
        return [np.concatenate(parts, axis=0) for parts in zip(*per_pass, strict=True)]

    def run_pass(self, inputs: list[np.ndarray]) -> list[Any]:
        """One pass of the graph over one micro-batch, layer by layer."""
        graph, env = self.graph, {}
        for node, value in zip(graph.inputs, inputs, strict=True):
            env[node.name] = np.asarray(value, order="C")  # not ascontiguousarray: it makes 0-d values 1-d
        start = time.perf_counter()
        layers = self.program.layers
        try:
            self._run_layers(env)
        finally:
            for layer in layers:  # a failed run leaves no prefetch in flight nor layer counted as resident
                self.store.release(layer.name)
        self.stats.seconds += time.perf_counter() - start
        # Kernels write float32, a comparison's true as 1.0: an output of dtype bool is handed back as bool.
        return [None if o in self.sunk else env[o].astype(bool) if graph[o].dtype == "bool" else env[o]
                for o in graph.outputs]

    def _keys(self, layer_index: int) -> list[str]:
        layer = self.program.layers[layer_index]
        return [self.graph[w].attrs["key"] for w in layer.weights]

    def _run_layers(self, env: dict[str, np.ndarray]) -> None:
        graph, layers = self.graph, self.program.layers
        for i, layer in enumerate(progress.track(layers, lambda each: f"running layer {each.name}")):
            layer_start = time.perf_counter()
            self.current_layer = layer.name
            keys = self._keys(i)
            weights = self.store.stream_in(layer.name, keys)
            if self.prefetch and i + 1 < len(layers):
                self.store.prefetch(layers[i + 1].name, self._keys(i + 1))
            for w, key in zip(layer.weights, keys, strict=True):
                env[w] = weights[key].reshape(graph[w].shape)
                if self.observer is not None:
                    self.observer(layer, w, env[w])
            del weights
            for name in layer.nodes:
                env[name] = self._execute(graph[name], layer.kernels.get(name), env)
                if self.observer is not None:
                    self.observer(layer, name, env[name])
                if self.sink is not None:
                    for position in self.sunk.get(name, ()):
                        self.sink(position, env[name])
            self.store.release(layer.name)
            for w in layer.weights:
                env.pop(w, None)
            for dead in [v for v in env if self.last_use.get(v, -1) <= layer.index]:
                del env[dead]
            self.stats.layers.append({"layer": layer.name, "seconds": time.perf_counter() - layer_start})

    def execute(self, layer: Layer, name: str, values: dict[str, np.ndarray]) -> np.ndarray:
        """Node `name` of `layer` alone, on the given values of its inputs, over the same tiles as in a run: how
        a kernel is checked on its golden inputs, apart from any error upstream of it."""
        return self._execute(self.graph[name], layer.kernels.get(name), values)

    def _execute(self, node: Node, plan: KernelPlan | None, env: dict[str, np.ndarray]) -> np.ndarray:
        if node.op == "const":
            return node.attrs["value"]
        op = ops.get(node.op)
        if isinstance(op, ops.LayoutOp):
            return op.move(node, *(env[i] for i in node.inputs))
        assert isinstance(op, ops.KernelOp) and plan is not None, f"kernel {node.name} has no tile plan"
        out_shape, in_shapes = op.abi(self.graph, node)
        args = [np.ascontiguousarray(env[i]).reshape(s) for i, s in zip(node.inputs, in_shapes, strict=True)]
        t = time.perf_counter()
        tiles = self._ordered_tiles(plan)
        if plan.k_splits > 1:
            out = op.run_k_split(node, plan, args, out_shape, tiles, compile_kernel, self.threads)
        else:
            out = np.full(out_shape, np.nan, dtype=np.float32)
            self.kernels[node.name](out, args, tiles, threads=self.threads)
        self.stats.kernel_seconds += time.perf_counter() - t
        return out.reshape(node.shape)
