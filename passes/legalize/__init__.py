"""legalize: rewrite ATen nodes into the ops of the op table (wsc/ops/), recording FLOPs and bytes.

Each ATen op has one rule, registered with `@legalizes(...)` in the module of its family (this package:
linear_algebra, attention, normalization, elementwise, embedding, layout, ...); a rule emits wsc nodes and
returns the node that now holds the ATen node's value. Ops with no rule, and cases a rule refuses
(`rw.unsupported`), are the unsupported ones: legalize goes on through the whole graph and then refuses once,
naming every one with the user's line that produced it, and `wsc ops` (which prints this registry). Shapes are
copied from the captured nodes: a rule computes the shapes of only the intermediate nodes it invents.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from wsc import ops
from wsc.core.errors import WscError
from wsc.core.ir import SOURCE_OPS, Graph, Node, Ref
from wsc.core.program import Program
from wsc.core.registry import load_modules

_RULES: dict[str, Callable[[Rewriter, Node], str]] = {}
_REFUSES: dict[str, str] = {}  # ATen op -> the cases its rule refuses, as `wsc ops` prints them


def legalizes(*aten_ops: str, refuses: str = ""):
    """Decorator: the rule for `aten_ops`. `refuses` says, in a few words, which cases of them the rule refuses
    (the unsupported ones): `wsc ops` prints it next to the op."""

    def register(rule):
        for op in aten_ops:
            _RULES[op] = rule
            if refuses:
                _REFUSES[op] = refuses
        return rule

    return register


def supported_aten_ops() -> list[str]:
    return sorted(_RULES)


def families() -> dict[str, list[str]]:
    """The ATen ops by the family whose module holds their rule ("elementwise", "layout", ...), in name order."""
    grouped: dict[str, list[str]] = {}
    for op in sorted(_RULES):
        grouped.setdefault(_RULES[op].__module__.rsplit(".", 1)[-1], []).append(op)
    return dict(sorted(grouped.items()))


def refused_cases(aten_op: str) -> str:
    """What the rule of `aten_op` refuses ("" when it takes every case)."""
    return _REFUSES.get(aten_op, "")


def node_flops(op: str, shape: tuple[int, ...], in_shapes: list[tuple[int, ...]], attrs: dict) -> int:
    """The op table's FLOP count for one node."""
    return ops.get(op).flops(shape, in_shapes, attrs)


class Rewriter:
    """Builds the legal graph; `emit` names, costs and attributes each new node to its ATen origin."""

    def __init__(self, source: Graph, weights: Mapping[str, Any] | None = None, fused_attention: bool = True):
        self.source = source
        self.fused_attention = fused_attention
        self.weights = weights  # store key -> tensor, for values a rule must know (a mask buffer)
        self.out = Graph()
        self.value: dict[str, str] = {}  # ATen node name -> wsc node holding its value
        self.origin: Node | None = None
        self.count = 0
        # What a rule computed once for the several nodes of one multi-output op (attention's three gradients),
        # by the op's name.
        self.memo: dict[str, Any] = {}

    def emit(self, op: str, inputs: list[str], shape, dtype: str | None = None, final=False, **attrs) -> str:
        origin = self.origin
        assert origin is not None
        name = origin.name if final else f"{origin.name}_{op}{self.count}"
        self.count += 1
        in_nodes = [self.out[i] for i in inputs]
        shape = tuple(int(d) for d in shape)
        node = Node(name, op, tuple(inputs), shape, dtype or origin.dtype, attrs, module=origin.module,
                    source=origin.source, phase=origin.phase)
        if op not in SOURCE_OPS:
            node.flops = node_flops(op, shape, [n.shape for n in in_nodes], attrs)
            node.bytes = ops.get(op).bytes_moved(in_nodes, node)
        self.out.add(node)
        return name

    def const(self, value: np.ndarray) -> str:
        value = np.asarray(value, order="C")  # not ascontiguousarray, which makes a 0-d value 1-d
        dtype = "int64" if value.dtype.kind in "iu" else "float32"
        return self.emit("const", [], value.shape, dtype, value=value.astype(dtype))

    def arg(self, node: Node, index: int, name: str, default: Any = None) -> Any:
        args, kwargs = node.attrs.get("args", ()), node.attrs.get("kwargs", {})
        value = args[index] if index < len(args) else kwargs.get(name, default)
        return self.value[value.name] if isinstance(value, Ref) else value

    def shape(self, name: str) -> tuple[int, ...]:
        return self.out[name].shape

    def unsupported(self, node: Node, why: str) -> Unsupported:
        """The error a rule raises for a case it does not take; legalize collects them all before refusing."""
        return Unsupported(node.op, node.source, why)


class Unsupported(WscError):
    """One refused op: the ATen op, where the model's code produced it, and why (the case, or no rule)."""

    def __init__(self, op: str, source: str, why: str):
        self.op, self.source, self.why = op, source, why
        super().__init__(self.line())

    def line(self) -> str:
        where = f" at {self.source}" if self.source else ""
        if self.why == NO_RULE:
            return f"unsupported op {self.op}{where}"
        return f"unsupported use of {self.op}{where}: {self.why}"


NO_RULE = "no rule for this op"


def refusal(refused: list[Unsupported]) -> WscError:
    """One error naming every unsupported op of the model: the first line how many and the first of them, the
    others one per line. The same op refused for the same reason at the same line (every block of a model) is
    named once, with how many times."""
    counts = Counter((each.op, each.source, each.why) for each in refused)  # first seen first
    lines = [Unsupported(*key).line() + (f" ({times} times)" if times > 1 else "") for key, times in counts.items()]
    if len(lines) == 1:
        return WscError(f"{lines[0]}; `wsc ops` lists what is supported")
    first = f"{len(lines)} unsupported ops or uses, the first: {lines[0]}; `wsc ops` lists what is supported"
    return WscError("\n".join([first, *(f"  {line}" for line in lines[1:])]))


@dataclass(frozen=True)
class Legalize:
    """`fused_attention`: attention as one kernel that never stores its scores (else three: scores, softmax,
    weighted sum, as a model that spells attention out by hand gets anyway)."""

    name: ClassVar[str] = "legalize"
    fused_attention: bool = True

    def __call__(self, program: Program) -> Program:
        return replace(program, graph=self.run(program.graph, program.weights))

    def run(self, graph: Graph, weights: Mapping[str, Any] | None = None) -> Graph:
        rw = Rewriter(graph, weights, self.fused_attention)
        refused: list[Unsupported] = []
        unknown: set[str] = set()  # nodes whose value is not known: refused, or reading one that was
        for node in graph:
            rw.origin, rw.count = node, 0
            if node.op in SOURCE_OPS:
                rw.out.add(Node(node.name, node.op, (), node.shape, node.dtype, dict(node.attrs),
                                module=node.module, source=node.source, holds=node.name,
                                phase=node.phase))
                rw.value[node.name] = node.name
                continue
            if node.attrs.get("multi_output") and "index" not in node.attrs:
                continue  # legalised element by element, through the nodes that read it
            if node.name in rw.value:  # an earlier rule took it into one op with the chain it ends (an RMSNorm)
                _holds(rw.out[rw.value[node.name]], node)
                continue
            rule = _rule_for(node.op)
            if any(i in unknown for i in node.inputs):
                # Its input was refused, so its own rule cannot run; an op with no rule at all is still named.
                unknown.add(node.name)
                if rule is None:
                    refused.append(Unsupported(node.op, node.source, NO_RULE))
                continue
            try:
                if rule is None:
                    raise Unsupported(node.op, node.source, NO_RULE)
                rw.value[node.name] = rule(rw, node)
                _holds(rw.out[rw.value[node.name]], node)
            except Unsupported as error:
                refused.append(error)
                unknown.add(node.name)
        if refused:
            raise refusal(refused)
        rw.out.outputs = [rw.value[o] for o in graph.outputs]
        return _drop_dead(rw.out)


def _holds(held: Node, aten: Node) -> None:
    """Record that `held` holds `aten`'s value (for verification's golden values). The latest ATen node of its
    shape wins: a chain taken into one kernel (an RMSNorm spelled out) ends with the node holding the kernel's
    value, and a view or alias after the node holds the same values."""
    if held.shape == aten.shape:
        held.holds = aten.name


def _rule_for(op: str) -> Callable[[Rewriter, Node], str] | None:
    """The rule of an ATen op. An in-place op (`aten.add_.Tensor`) takes its out-of-place rule: torch.export
    has every later reader of the mutated tensor read the in-place op's node, so its value is all that changes."""
    return _RULES.get(op) or _RULES.get(_out_of_place(op))


def _out_of_place(op: str) -> str:
    """`aten.add_.Tensor` -> `aten.add.Tensor`; other names as they are."""
    parts = op.split(".")
    if len(parts) == 3 and parts[1].endswith("_") and not parts[1].startswith("_"):
        return ".".join([parts[0], parts[1][:-1], parts[2]])
    return op


def _drop_dead(graph: Graph) -> Graph:
    """Remove what no output needs. The inputs stay, even one no output reads (an `expand_as` target): the program
    takes the inputs the model takes."""
    live = set(graph.outputs) | {n.name for n in graph if n.op == "input"}
    for node in reversed(list(graph)):
        if node.name in live:
            live.update(node.inputs)
    dead = [n.name for n in graph if n.name not in live]
    graph.g.remove_nodes_from(dead)
    return graph


# The rules, one module per family of ATen ops: each registers its rules with @legalizes when imported.
load_modules(__name__, __path__)
