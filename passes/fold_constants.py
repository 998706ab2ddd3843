"""fold-constants: evaluate at compile time every ATen node whose value does not depend on the inputs' values.

Models compute things from shapes alone: position ids (`arange`), causal masks (`tril`, `index`, `le`,
`cumsum` of `new_ones(input_ids)`, as Hugging Face's GPT-2 does). On the wafer these are data, not work, and
folding them leaves the graph with only the ops that touch activations. A node folds when each input is
folded already or is a buffer whose values are known (a causal mask kept as a buffer), or when the op reads
only its input's shape (`new_ones`, `zeros_like`...). Each is evaluated
once with the real ATen op on CPU tensors; values larger than `max_elements` are left in the graph.
Runs on the captured graph, before legalize; folded nodes become `const` nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from wsc.core import dtypes
from wsc.core.ir import Graph, Node, Ref
from wsc.core.program import Program

SHAPE_ONLY_OPS = {
    "aten.new_ones.default", "aten.new_zeros.default", "aten.new_full.default", "aten.new_empty.default",
    "aten.ones_like.default", "aten.zeros_like.default", "aten.full_like.default", "aten.empty_like.default",
}
NEVER_FOLD = ("rand", "dropout", "bernoulli", "normal", "uniform", "_assert")
TORCH_DTYPE = dtypes.name_to_torch()  # IR name -> torch dtype (the table is wsc/dtypes.py)


def aten_op(name: str) -> Any | None:
    """torch.ops.aten.<op>.<overload> from its printed name, e.g. "aten.index.Tensor"."""
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != "aten":
        return None
    try:
        return getattr(getattr(torch.ops.aten, parts[1]), parts[2])
    except AttributeError:
        return None


# Composite ATen ops whose schema does not mark what they write: the positions of the arguments written.
# batch_norm in training mode (its argument 5) updates its running mean and variance (arguments 3 and 4).
UNMARKED_WRITES = {"aten.batch_norm.default": lambda args: (3, 4) if len(args) > 5 and args[5] else ()}


def mutated_inputs(node: Node) -> list[str]:
    """The nodes an op writes in place, from its schema (`add_`'s self, native_batch_norm's running stats) or
    UNMARKED_WRITES: what reads them afterwards must not see the value they had before."""
    args, kwargs = node.attrs.get("args", ()), node.attrs.get("kwargs", {})
    if node.op in UNMARKED_WRITES:
        return [args[i].name for i in UNMARKED_WRITES[node.op](args) if isinstance(args[i], Ref)]
    op = aten_op(node.op)
    schema = getattr(op, "_schema", None)
    if schema is None:
        return []
    written = []
    for i, argument in enumerate(schema.arguments):
        if argument.alias_info is None or not argument.alias_info.is_write:
            continue
        value = args[i] if i < len(args) else kwargs.get(argument.name)
        if isinstance(value, Ref):
            written.append(value.name)
    return written


@dataclass(frozen=True)
class FoldConstants:
    name: ClassVar[str] = "fold-constants"
    max_elements: int = 1 << 24

    def __call__(self, program: Program) -> Program:
        return replace(program, graph=self.run(program.graph, program.weights or {}))

    def run(self, graph: Graph, weights: Mapping[str, Any] | None = None) -> Graph:
        values: dict[str, torch.Tensor] = {}
        out = Graph()
        for node in graph:
            known = (weights or {}).get(node.attrs.get("key", ""))
            if node.op == "param" and node.attrs.get("kind") == "buffer" and known is not None \
                    and not known.is_meta:
                values[node.name] = known  # a buffer is data the model carries: what reads it may fold
                out.add(node)
                continue
            written = mutated_inputs(node)
            value = self.evaluate(graph, node, values, written)
            for name in written:
                values.pop(name, None)  # changed in place from here on: no longer the value it had
            if value is not None and value.numel() <= self.max_elements:
                values[node.name] = value
                out.add(Node(node.name, "const", (), tuple(value.shape), node.dtype,
                             {"value": value.numpy()}, module=node.module, source=node.source,
                             phase=node.phase))
            else:
                out.add(node)
        out.outputs = list(graph.outputs)
        return out

    def evaluate(self, graph: Graph, node: Node, values: dict[str, torch.Tensor],
                 written: Sequence[str] = ()) -> torch.Tensor | None:
        """The node's value, or None when it cannot be known at compile time. The inputs an op writes in place
        are handed to it as copies: a model's buffer is never changed by compiling it."""
        if node.op in ("input", "param", "const") or any(word in node.op for word in NEVER_FOLD):
            return None
        op = aten_op(node.op)
        if op is None or node.attrs.get("multi_output"):
            return None
        shape_only = node.op in SHAPE_ONLY_OPS
        if not shape_only and not all(name in values for name in node.inputs):
            return None
        if not node.inputs and node.op not in ("aten.arange.default", "aten.arange.start",
                                                "aten.arange.start_step", "aten.full.default",
                                                "aten.ones.default", "aten.zeros.default"):
            return None

        def real(value: Any) -> Any:
            if isinstance(value, Ref):
                if value.name in values:
                    known = values[value.name]
                    return known.clone() if value.name in written else known
                src = graph[value.name]  # a shape-only op's input: any tensor of its shape and dtype will do
                return torch.zeros(src.shape, dtype=TORCH_DTYPE.get(src.dtype, torch.float32))
            if isinstance(value, (list, tuple)):
                return type(value)(real(v) for v in value)
            if isinstance(value, torch.device):
                return torch.device("cpu")
            return value

        kwargs = {k: real(v) for k, v in node.attrs.get("kwargs", {}).items()}
        if "device" in kwargs:
            kwargs["device"] = torch.device("cpu")
        try:
            with torch.no_grad():
                result = op(*real(node.attrs.get("args", ())), **kwargs)
        except Exception:  # not evaluable here (e.g. an op that needs other inputs): leave it in the graph
            return None
        if "index" in node.attrs and isinstance(result, (list, tuple)):
            result = result[node.attrs["index"]]
        if not isinstance(result, torch.Tensor) or tuple(result.shape) != node.shape:
            return None
        return result.contiguous()

