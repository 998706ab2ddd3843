"""A torch.compile backend: `torch.compile(model, backend="wsc")` runs the model through wsc.

Dynamo hands the backend each captured graph with example inputs; wsc compiles it for the target (cs2-sim
unless told otherwise) and returns a function that runs the compiled program on the simulated target.
The backend is registered under the name "wsc" through the `torch_dynamo_backends` entry point, so no
import is needed; `make_backend(target=..., verify=...)` gives one with other options:

    torch.compile(model, backend=wsc.backend.make_backend(target="mesh-16x16", verify=True))

With `verify`, each graph's compiled outputs are compared with the graph run eagerly on its example inputs,
and a mismatch raises.

A wsc program has static shapes. When a model is called with a second shape, Dynamo (by default) traces it
again as a dynamic graph, whose sizes are symbols passed as integer inputs beside the tensors. The backend
then compiles that graph once per set of concrete sizes it is called with (the sizes filled in, the graph
traced again as a static one), the example's sizes at once and any other on its first call, and keeps each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from wsc.core.errors import WscError
from wsc.options import CompileOptions


def make_backend(target: str = "cs2-sim", options: CompileOptions | None = None, **keywords: Any) -> Callable:
    """A backend compiling every graph for `target` with `options` (a CompileOptions), or the defaults changed
    by `keywords` (CompileOptions' field names). Unlike `wsc.compile`, the backend does not verify unless
    told to (`verify=True`, or options that say so). The options are checked here, once, not per graph."""
    if options is None:
        keywords.setdefault("verify", False)
    options = CompileOptions.of(options, **keywords)

    def compile_graph(module: torch.nn.Module, inputs: tuple) -> Any:
        from wsc import api

        compiled = api.compile(module, inputs, target, options, model_name="torch.compile graph")
        if compiled.report["verification"]["status"] == "fail":
            v = compiled.report["verification"]
            where = v.get("located")
            first = f"; first wrong: {where['kernel']} in layer {where['layer_index']}" if where else ""
            raise WscError(f"compiled graph differs from eager by {v['max_abs_err']} ({v.get('error_ratio')} of "
                           f"the bound at tolerance {v['tolerance']}){first}")
        return compiled

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        if is_dynamic(gm, example_inputs):
            return _per_shape(gm, example_inputs, compile_graph)
        compiled = compile_graph(gm, tuple(example_inputs))

        def run(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return compiled.flat_outputs(*args)

        run.wsc_compiled = compiled  # type: ignore[attr-defined]
        return run

    return backend


def is_dynamic(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> bool:
    """Whether Dynamo traced the graph with symbolic sizes or scalars: a number among its inputs, or a
    placeholder whose shape holds a symbol."""
    if scalar_inputs(gm, example_inputs):
        return True
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        value = node.meta.get("example_value", node.meta.get("val"))
        if isinstance(value, torch.Tensor) and not all(isinstance(d, int) for d in value.shape):
            return True
    return False


def scalar_inputs(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> list[int]:
    """The positions of the graph's inputs that are numbers, not data: the sizes, and (with dynamic=True) the
    Python scalars Dynamo passes as 0-d tensors (a LayerNorm's eps), which the graph reads with `.item()`."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    found = []
    for i, value in enumerate(example_inputs):
        grapharg = placeholders[i].meta.get("grapharg") if i < len(placeholders) else None
        if not isinstance(value, torch.Tensor) or getattr(grapharg, "pass_arg_as_tensor", False):
            found.append(i)
    return found


class ConcreteSizes(torch.nn.Module):
    """A dynamic graph with its size (and scalar) inputs filled in: it takes the tensors only, so tracing it
    again on tensors of those sizes gives a static graph, with the scalars folded in as constants."""

    def __init__(self, gm: torch.fx.GraphModule, sizes: dict[int, Any], count: int):
        super().__init__()
        self.gm, self.sizes, self.count = gm, sizes, count

    def forward(self, *tensors: torch.Tensor) -> Any:
        rest = iter(tensors)
        return self.gm(*[self.sizes[i] if i in self.sizes else next(rest) for i in range(self.count)])


def _concrete(value: Any) -> Any:
    """A size input's value: a plain number as it is, a symbol by the value Dynamo traced it with."""
    for symbolic, plain in ((torch.SymInt, int), (torch.SymFloat, float), (torch.SymBool, bool)):
        if isinstance(value, symbolic):
            return plain(value.node.hint) if value.node.has_hint() else None
    return value


def _per_shape(gm: torch.fx.GraphModule, example_inputs: list[Any], compile_graph: Callable) -> Callable:
    """The function Dynamo calls for a dynamic graph: a program per set of concrete sizes, each compiled
    when first met (the example's now, so that a refusal is raised at compile time) and kept."""
    positions = set(scalar_inputs(gm, example_inputs))
    programs: dict[tuple, Any] = {}

    def program(args: tuple) -> tuple[Any, tuple[torch.Tensor, ...]]:
        sizes = {i: args[i] for i in positions}
        tensors = tuple(a for i, a in enumerate(args) if i not in sizes)
        values = tuple((i, v.item() if isinstance(v, torch.Tensor) else v) for i, v in sorted(sizes.items()))
        key = (values, tuple((tuple(t.shape), t.dtype) for t in tensors))
        if key not in programs:
            programs[key] = compile_graph(ConcreteSizes(gm, sizes, len(args)), tensors)
        return programs[key], tensors

    example = [_concrete(value) for value in example_inputs]
    first = None
    if all(value is not None for value in example):
        first, _ = program(tuple(example))

    def run(*args: Any) -> tuple[torch.Tensor, ...]:
        compiled, tensors = program(args)
        return compiled.flat_outputs(*tensors)

    run.wsc_compiled = first  # type: ignore[attr-defined]
    run.wsc_programs = programs  # type: ignore[attr-defined]
    return run


wsc = make_backend()
