"""Capture: a PyTorch module and its example inputs become a wsc Graph of ATen-level nodes.

`torch.export` is the main road: it gives an ATen graph with the parameters lifted out as graph inputs, which
is what weight streaming needs (each weight is a named input the store can hold). Modules export cannot take
fall back to `torch.fx.symbolic_trace`, whose torch-level calls are renamed to the ATen ops they stand for, so
legalisation sees one vocabulary. Shapes come from the tracer's metadata here, once.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import operator
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils._pytree import tree_leaves, tree_unflatten

from wsc.core import dtypes, progress
from wsc.core.errors import WscError
from wsc.core.ir import Graph, Node, Ref

TORCH_DTYPES = dtypes.torch_to_name()  # torch dtype -> IR name (the table is wsc/dtypes.py)


@dataclass
class Captured:
    graph: Graph
    weights: dict[str, torch.Tensor]  # store key -> tensor (may live on the meta device)
    how: str  # "torch.export" or "symbolic_trace"
    aliases: dict[str, list[str]] = field(default_factory=dict)  # weight key -> its other names (tied)
    # How the model's return value holds the graph's outputs (a tensor, a tuple, a dict, a Hugging Face output
    # object), as torch.export flattened it; None when the tracer does not say (symbolic_trace).
    out_spec: Any = None
    # The traced fx graph itself and what each of its placeholders takes, in order: ("weight", store key),
    # ("input", position among the example inputs) or ("value", a constant fixed at capture). The golden
    # reference (wsc.frontend.golden) interprets it to give every captured node's value in eager PyTorch.
    fx: torch.fx.GraphModule | None = None
    fx_args: list[tuple[str, Any]] = field(default_factory=list)

    def structure(self, outputs: list[Any]) -> Any:
        """The outputs put back in the form the model returns them; a bare tensor or a tuple without a spec."""
        spec = self.out_spec
        if spec is not None and spec.num_leaves == len(outputs):
            return tree_unflatten(list(outputs), spec)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


# The tracers print their own diagnostics (graph dumps, tracebacks, warnings) when they fail; wsc reports a
# failure in one line of its own, so they are silenced unless this is set (the CLI's --debug sets it).
VERBOSE = False


@contextmanager
def _quiet() -> Iterator[None]:
    if VERBOSE:
        yield
        return
    sink = io.StringIO()
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def capture(model: nn.Module, example_inputs: tuple) -> Captured:
    """Trace `model` on `example_inputs`; export first, symbolic_trace when export refuses."""
    # The stage opens before _quiet so that its spinner is bound to the real stderr, not the sink.
    with progress.stage(f"capturing {type(model).__name__}"), _quiet():
        captured = _capture(model, example_inputs)
    captured.aliases = tensor_aliases(model)
    return captured


def tensor_aliases(model: nn.Module) -> dict[str, list[str]]:
    """Every name of each tensor the model holds under several (a tied embedding and LM head)."""
    names: dict[int, list[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]:
        names.setdefault(id(tensor), []).append(name)
    return {n: [m for m in group if m != n] for group in names.values() if len(group) > 1 for n in group}


def forward_kwargs(model: nn.Module, example_inputs: tuple = ()) -> dict[str, Any]:
    """The keywords wsc calls the model with, to capture it and to run it eagerly: `use_cache=False` when its
    forward takes one that the example inputs do not give (a Hugging Face model would otherwise return its
    key/value cache, which is neither an output wsc computes nor needed for one step)."""
    try:
        parameters = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return {}
    if "use_cache" not in parameters or parameters.index("use_cache") < len(example_inputs):
        return {}
    return {"use_cache": False}


def output_tensors(value: Any) -> list[torch.Tensor]:
    """The tensors a model returned, in the order the captured graph lists its outputs: a tensor, a tuple, a
    list or a dict of them, or a model output object (Hugging Face's ModelOutput, whose unset fields are
    left out), flattened as torch.export flattens them; anything that is not a tensor (a cache) is dropped."""
    return [leaf for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def run_eager(model: nn.Module, example_inputs: tuple) -> list[torch.Tensor]:
    """The model run eagerly as capture traced it (with `forward_kwargs`): its output tensors."""
    return output_tensors(model(*example_inputs, **forward_kwargs(model, example_inputs)))


def fixed_shapes(model: nn.Module) -> bool:
    """Whether the model is a graph already captured (a loaded .pt2, wsc.frontend.modelfile.ExportedModule):
    its shapes are the ones it was exported with, whatever inputs it is captured on."""
    return isinstance(getattr(model, "exported", None), torch.export.ExportedProgram)


def _capture(model: nn.Module, example_inputs: tuple) -> Captured:
    if fixed_shapes(model):  # a loaded .pt2: its graph is already captured
        return _from_exported(model.exported)  # type: ignore[arg-type]
    try:
        exported, real_buffers = _export(model, example_inputs)
    except Exception as first_error:  # export raises many types; each means "try the fallback"
        export_error = first_error
        on_meta = _inputs_on_meta(model, example_inputs) if _two_devices(first_error) else None
        if on_meta is not None:
            # A model built without weights (on meta) meets a real floating input on two devices: traced again
            # with its inputs on meta too, since capture needs only their shapes and dtypes.
            try:
                exported, real_buffers = _export(model, on_meta)
            except Exception as meta_error:
                export_error, example_inputs = meta_error, on_meta
            else:
                return _with_buffers(_from_exported(exported), real_buffers)
        if _unbacked(export_error):  # no tracer makes such a shape static: the fallback would only hide why
            raise WscError("cannot capture the model: a shape in it depends on the values of its inputs (a tensor "
                           "used as a size, a start or a count of repeats); pass that value as a Python "
                           "number", details=_first_line(export_error)) from None
        try:
            return _from_symbolic_trace(model, example_inputs)
        except WscError:
            raise
        except Exception as trace_error:
            raise _diagnose(model, example_inputs, export_error, trace_error) from None
    return _with_buffers(_from_exported(exported), real_buffers)


def _export(model: nn.Module, example_inputs: tuple) -> tuple[torch.export.ExportedProgram, dict[str, torch.Tensor]]:
    """torch.export's program of the model, and the real values of the buffers it moved to meta to trace it."""
    with _buffers_on_meta_beside_meta_parameters(model) as real_buffers:
        keywords = forward_kwargs(model, example_inputs) or None
        return torch.export.export(model, tuple(example_inputs), kwargs=keywords, strict=False), real_buffers


def _with_buffers(captured: Captured, real_buffers: dict[str, torch.Tensor]) -> Captured:
    captured.weights.update({k: v for k, v in real_buffers.items() if k in captured.weights})
    return captured


def _two_devices(error: Exception) -> bool:
    """Whether a tracer failed on tensors of two devices (a real input meeting a meta weight)."""
    return "DeviceMismatch" in type(error).__name__ or "at least two devices" in str(error)


def _inputs_on_meta(model: nn.Module, example_inputs: tuple) -> tuple | None:
    """The example inputs on the meta device, for a model whose parameters are there; None when the model has
    real parameters or the inputs are on meta already."""
    if not any(p.is_meta for p in model.parameters()):
        return None
    if not any(isinstance(t, torch.Tensor) and not t.is_meta for t in example_inputs):
        return None
    return tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in example_inputs)


@contextmanager
def _buffers_on_meta_beside_meta_parameters(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """A model built without weights (wsc.frontend.meta.empty_weights) keeps real buffers; tracing it needs every
    tensor on one device, so its buffers go to meta for the trace. Their real values are handed back (a
    causal mask buffer is read at compile time) and the module is left as it was."""
    if not any(p.is_meta for p in model.parameters()):
        yield {}
        return
    saved = [(module, name, buf) for module in model.modules() for name, buf in module._buffers.items()
             if buf is not None and not buf.is_meta]
    real = {name: buf for name, buf in model.named_buffers() if not buf.is_meta}
    for module, name, buf in saved:
        module._buffers[name] = buf.to("meta")
    try:
        yield real
    finally:
        for module, name, buf in saved:
            module._buffers[name] = buf


def _diagnose(model: nn.Module, example_inputs: tuple, export_error: Exception,
              trace_error: Exception) -> WscError:
    """Say why neither tracer took the model: it returns something that is not a tensor, it branches on tensor
    values, or it fails on its inputs; else that both tracers failed. One short line: what each tracer said is
    the error's details (the CLI's --debug shows them, and the tracers' own output)."""
    details = f"torch.export: {_first_line(export_error)}\nsymbolic_trace: {_first_line(trace_error)}"
    unknown = re.search(r"Found <class '([\w.]+)'> in output", str(export_error))
    if unknown:
        kind = unknown.group(1).rsplit(".", 1)[-1]
        return WscError(f"cannot capture the model: its output holds an object of class {kind}, which is not a "
                        "tensor; return tensors (or a tuple, list or dict of them)", details=details)
    if any(_data_dependent(error) for error in (export_error, trace_error)):
        return WscError("cannot capture the model: both tracers failed; data-dependent control flow (an `if` on "
                        "a tensor's value) is the usual cause: make the branch static", details=details)
    eager_error = _eager_error(model, example_inputs)
    if eager_error is not None:
        head = f"the model fails on its example inputs ({_shapes(example_inputs)})"
        tail = "; give inputs of the dtype and shape its forward expects"
        said = quote(eager_error, MESSAGE_CHARS - len(head) - len(tail) - 2)
        if said == type(eager_error).__name__:  # its message would not fit: --debug shows it
            tail += " (--debug: the message)"
        return WscError(f"{head}: {said}{tail}", details=f"eager: {_first_line(eager_error)}\n{details}")
    return WscError(f"cannot capture the model: torch.export failed ({type(export_error).__name__}) and "
                    f"symbolic_trace failed ({type(trace_error).__name__}); --debug shows what each said",
                    details=details)


def _eager_error(model: nn.Module, example_inputs: tuple) -> Exception | None:
    """What the model raises when run eagerly on its inputs (on meta, with the inputs, when its parameters are
    there), or None when it runs; an error of the meta device itself (an op that needs real data) is None."""
    on_meta = any(p.is_meta for p in model.parameters())
    inputs = (_inputs_on_meta(model, example_inputs) or example_inputs) if on_meta else example_inputs
    try:
        with torch.no_grad():
            model(*inputs, **forward_kwargs(model, inputs))
    except Exception as error:
        return None if on_meta and "meta" in str(error) else error
    return None


def _shapes(example_inputs: tuple, most: int = 3) -> str:
    """`float32[1, 12], int64[1, 12]` of the first `most` inputs, and how many more."""
    shown = [f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}" if isinstance(t, torch.Tensor)
             else type(t).__name__ for t in example_inputs[:most]]
    more = f" and {len(example_inputs) - most} more" if len(example_inputs) > most else ""
    return ", ".join(shown) + more


def _unbacked(error: Exception) -> bool:
    """Whether torch.export failed on a size it could only know from a tensor's value (an unbacked symbol)."""
    text = f"{type(error).__name__}: {error}"
    # Not GuardOnDataDependentSymNode: export raises that for an `if` on a tensor's value too.
    return "PendingUnbackedSymbolNotFound" in text


def _data_dependent(error: Exception) -> bool:
    """Whether a tracer failed on a branch (or a size) that depends on a tensor's value."""
    text = f"{type(error).__name__}: {error}"
    return any(mark in text for mark in ("DataDependent", "data-dependent", "data dependent",
                                         "cannot be used as inputs to control flow"))


# A refusal's line is at most this long (with the CLI's `error: ` in front, under 160 characters).
MESSAGE_CHARS = 150
# A tracer's first line is kept in a refusal's details; one longer than this keeps its first whole sentences only.
QUOTE_CHARS = 300


def _first_line(error: Exception, room: int = QUOTE_CHARS) -> str:
    """`Type: message` of the error's first line, shortened (when longer than `room`) to the whole sentences
    that fit, and never to less than its first sentence: a quote is never cut mid-sentence."""
    text = str(error).strip().splitlines()
    line = f"{type(error).__name__}: {text[0].strip() if text else ''}"
    if len(line) <= room:
        return line
    sentences = re.split(r"(?<=[.!?])\s+", line)
    kept = sentences[0]
    for sentence in sentences[1:]:
        if len(kept) + 1 + len(sentence) > room:
            break
        kept += " " + sentence
    return kept


def quote(error: Exception, room: int) -> str:
    """The error quoted in at most `room` characters: its whole sentences that fit (`_first_line`), else its
    type's name alone. Never cut mid-sentence."""
    line = _first_line(error, room)
    return line if len(line) <= room else type(error).__name__


def _from_exported(ep: torch.export.ExportedProgram) -> Captured:
    from torch.export.graph_signature import ConstantArgument, InputKind

    state = dict(ep.state_dict)
    state.update(getattr(ep, "constants", {}) or {})
    graph = Graph()
    weights: dict[str, torch.Tensor] = {}
    specs = {spec.arg.name: spec for spec in ep.graph_signature.input_specs}
    fx_args: list[tuple[str, Any]] = []
    for fx_node in ep.graph.nodes:
        if fx_node.op == "placeholder":
            spec = specs[fx_node.name]
            if spec.kind == InputKind.USER_INPUT and isinstance(spec.arg, ConstantArgument):
                fx_args.append(("value", spec.arg.value))
                continue  # a keyword fixed at capture (use_cache=False): not an input of the program
            if spec.kind == InputKind.USER_INPUT:
                fx_args.append(("input", len(graph.inputs)))
                graph.add(_node(fx_node, "input", (), {}))
            else:
                fx_args.append(("weight", spec.target))
                weights[spec.target] = state[spec.target]
                kind = "parameter" if spec.kind == InputKind.PARAMETER else "buffer"
                graph.add(_node(fx_node, "param", (), {"key": spec.target, "kind": kind}))
        elif fx_node.op == "call_function":
            _add_call(graph, fx_node, _aten_name(fx_node.target), fx_node.args, fx_node.kwargs)
        elif fx_node.op == "output":
            graph.outputs = [a.name for a in _flat_outputs(fx_node.args[0])]
    return Captured(graph, weights, "torch.export", out_spec=ep.call_spec.out_spec, fx=ep.graph_module,
                    fx_args=fx_args)


def _aten_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    return str(target)


def _flat_outputs(value: Any) -> list[torch.fx.Node]:
    """The graph's output nodes; anything else in the returned structure (an int, a string) is refused."""
    leaves = tree_leaves(value)
    for leaf in leaves:
        if not isinstance(leaf, torch.fx.Node):
            raise WscError(f"model output of type {type(leaf).__name__} is not supported; return tensors")
    return leaves


def _add_call(graph: Graph, fx_node: torch.fx.Node, op: str, args: Any, kwargs: dict) -> None:
    if op == "getitem":
        # A multi-output op (split, chunk) read through getitem: one node per element, named by the
        # producing op, so legalisation sees `aten.split.Tensor(x, 768, 2)[index]` in one node.
        producer, index = args
        parent = graph[producer.name]
        node = _node(fx_node, parent.op, parent.inputs, {**parent.attrs, "index": index})
        graph.add(node)
        return
    refs = _refs(args)
    kw = _refs(kwargs)
    inputs = tuple(dict.fromkeys(r.name for r in _walk_refs((refs, kw))))
    attrs = {"args": refs, "kwargs": kw}
    if _is_multi(fx_node.meta.get("val", fx_node.meta.get("tensor_meta"))):
        attrs["multi_output"] = True  # its value is only read through the getitem nodes made from it
    graph.add(_node(fx_node, op, inputs, attrs))


def _refs(value: Any) -> Any:
    if isinstance(value, torch.fx.Node):
        return Ref(value.name)
    if isinstance(value, (list, tuple)):
        return type(value)(_refs(v) for v in value)
    if isinstance(value, dict):
        return {k: _refs(v) for k, v in value.items()}
    return value


def _walk_refs(value: Any):
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk_refs(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _walk_refs(v)


def _is_multi(val: Any) -> bool:
    """A list of tensors (split's value), as opposed to one tensor's metadata (itself a NamedTuple)."""
    return isinstance(val, (list, tuple)) and not hasattr(val, "shape")


def _node(fx_node: torch.fx.Node, op: str, inputs: tuple[str, ...], attrs: dict) -> Node:
    val = fx_node.meta.get("val", fx_node.meta.get("tensor_meta"))
    shape: tuple[int, ...] = ()
    dtype = "float32"
    if val is not None and _is_multi(val) and "index" in attrs:
        val = val[attrs["index"]]
    if val is not None and hasattr(val, "shape"):
        try:
            shape = tuple(int(d) for d in val.shape)
        except Exception as error:  # a SymInt that is not a plain number (torch raises several kinds for it)
            raise WscError(
                f"op {fx_node.name} ({op}) has a shape that depends on the input values {tuple(val.shape)}; "
                "compile ops of static shapes"
            ) from error
        dtype = TORCH_DTYPES.get(val.dtype, str(val.dtype).removeprefix("torch."))
    return Node(
        name=fx_node.name,
        op=op,
        inputs=inputs,
        shape=shape,
        dtype=dtype,
        attrs=attrs,
        module=_module_path(fx_node),
        source=_user_source(fx_node),
    )


def _module_path(fx_node: torch.fx.Node) -> str:
    stack = fx_node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return "" if path in ("", "L['self']") else str(path)


def _user_source(fx_node: torch.fx.Node) -> str:
    """The innermost frame outside torch that produced this node: where an error should point (for a Hugging Face
    model, the line of its `transformers` modeling file, not the wrapper that called it)."""
    trace = fx_node.meta.get("stack_trace") or ""
    lines = trace.strip().splitlines()
    best = ""
    torch_dir = os.path.dirname(torch.__file__)
    for i, line in enumerate(lines):
        line = line.strip()
        if not line.startswith("File "):
            continue
        try:
            file_part, line_part = line.split(", line ")[:2]
        except ValueError:
            continue
        path = file_part[len("File ") :].strip('"')
        if path.startswith(torch_dir):
            continue  # torch's own frames; a model's library (transformers) is the model's code
        number = line_part.split(",")[0]
        code = lines[i + 1].strip() if i + 1 < len(lines) else ""
        best = f"{os.path.basename(path)}:{number}: {code}"
    return best


# ---------------------------------------------------------------------------------------------------------
# Fallback: torch.fx.symbolic_trace, with torch-level calls renamed to the ATen ops they stand for.

_MODULE_OPS: dict[type, str] = {
    nn.Linear: "aten.linear.default",
    nn.LayerNorm: "aten.layer_norm.default",
    nn.Embedding: "aten.embedding.default",
    nn.GELU: "aten.gelu.default",
    nn.Dropout: "aten.dropout.default",
    nn.Identity: "aten.alias.default",
    nn.Softmax: "aten.softmax.int",
}

_FUNCTION_OPS: dict[Any, str] = {
    operator.add: "aten.add.Tensor",
    operator.mul: "aten.mul.Tensor",
    operator.matmul: "aten.matmul.default",
    operator.getitem: "getitem",
    torch.add: "aten.add.Tensor",
    torch.mul: "aten.mul.Tensor",
    torch.matmul: "aten.matmul.default",
    torch.bmm: "aten.bmm.default",
    torch.transpose: "aten.transpose.int",
    torch.reshape: "aten.reshape.default",
    torch.permute: "aten.permute.default",
    torch.nn.functional.linear: "aten.linear.default",
    torch.nn.functional.layer_norm: "aten.layer_norm.default",
    torch.nn.functional.gelu: "aten.gelu.default",
    torch.nn.functional.softmax: "aten.softmax.int",
    torch.nn.functional.embedding: "aten.embedding.default",
    torch.nn.functional.dropout: "aten.dropout.default",
    torch.nn.functional.scaled_dot_product_attention: "aten.scaled_dot_product_attention.default",
    torch.arange: "aten.arange.default",
}

_METHOD_OPS = {
    "view": "aten.view.default",
    "reshape": "aten.reshape.default",
    "transpose": "aten.transpose.int",
    "permute": "aten.permute.default",
    "contiguous": "aten.alias.default",
    "split": "aten.split.Tensor",
    "softmax": "aten.softmax.int",
    "add": "aten.add.Tensor",
    "mul": "aten.mul.Tensor",
    "matmul": "aten.matmul.default",
}


def _from_symbolic_trace(model: nn.Module, example_inputs: tuple) -> Captured:
    traced = torch.fx.symbolic_trace(model)
    ShapeProp(traced).propagate(*example_inputs)
    modules = dict(traced.named_modules())
    graph = Graph()
    weights: dict[str, torch.Tensor] = {}

    def param(key: str, tensor: torch.Tensor) -> Ref:
        name = "p_" + key.replace(".", "_")
        if name not in graph:
            weights[key] = tensor.detach()
            graph.add(
                Node(name, "param", (), tuple(tensor.shape), TORCH_DTYPES[tensor.dtype], {"key": key})
            )
        return Ref(name)

    # Python values the trace computes from shapes (x.shape, d // heads, ...) are static here: compute them
    # now, from the shapes ShapeProp recorded, and pass them as plain numbers.
    static: dict[str, Any] = {}

    def subst(value: Any) -> Any:
        if isinstance(value, torch.fx.Node) and value.name in static:
            return static[value.name]
        if isinstance(value, (list, tuple)):
            return type(value)(subst(v) for v in value)
        if isinstance(value, dict):
            return {k: subst(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(subst(value.start), subst(value.stop), subst(value.step))
        return value

    def is_static(value: Any) -> bool:
        return all(n.name in static for n in _flat_nodes(value))

    fx_args: list[tuple[str, Any]] = []

    for fx_node in traced.graph.nodes:
        args, kwargs = subst(fx_node.args), subst(dict(fx_node.kwargs))
        if fx_node.op == "placeholder":
            fx_args.append(("input", len(graph.inputs)))
            graph.add(_node(fx_node, "input", (), {}))
        elif fx_node.op == "get_attr":
            # A tensor attribute read directly (a parameter or a buffer) becomes a streamed weight.
            tensor = operator.attrgetter(fx_node.target)(traced)
            ref = param(fx_node.target, tensor)
            graph.add(_node(fx_node, "aten.alias.default", (ref.name,), {"args": (ref,), "kwargs": {}}))
        elif fx_node.op == "call_function" and fx_node.target is getattr:
            meta = args[0].meta.get("tensor_meta")
            static[fx_node.name] = {"shape": tuple(int(d) for d in meta.shape), "dtype": meta.dtype,
                                    "device": torch.device("cpu")}.get(args[1])
        elif fx_node.op == "call_method" and fx_node.target == "size":
            shape = tuple(int(d) for d in args[0].meta["tensor_meta"].shape)
            static[fx_node.name] = shape[args[1]] if len(args) > 1 else shape
        elif fx_node.op == "call_function" and is_static((args, kwargs)) and \
                getattr(fx_node.target, "__module__", "") in ("_operator", "operator", "builtins"):
            static[fx_node.name] = fx_node.target(*args, **kwargs)
        elif fx_node.op == "call_module":
            module = modules[fx_node.target]
            op = _MODULE_OPS.get(type(module))
            if op is None:
                raise WscError(f"module {type(module).__name__} at {fx_node.target} has no lowering")
            _add_call(graph, fx_node, op, _module_args(fx_node, module, param), {})
        elif fx_node.op == "call_function":
            name = _FUNCTION_OPS.get(fx_node.target, getattr(fx_node.target, "__name__", str(fx_node.target)))
            _add_call(graph, fx_node, name, args, kwargs)
        elif fx_node.op == "call_method":
            op = _METHOD_OPS.get(fx_node.target, f"Tensor.{fx_node.target}")
            if fx_node.target in ("view", "reshape", "permute") and not isinstance(args[1], (list, tuple)):
                args = (args[0], list(args[1:]))
            _add_call(graph, fx_node, op, args, kwargs)
        elif fx_node.op == "output":
            graph.outputs = [a.name for a in _flat_outputs(fx_node.args[0])]
    return Captured(graph, weights, "symbolic_trace", fx=traced, fx_args=fx_args)


def _flat_nodes(value: Any) -> list[torch.fx.Node]:
    return [leaf for leaf in tree_leaves(value) if isinstance(leaf, torch.fx.Node)]


def _module_args(fx_node: torch.fx.Node, module: nn.Module, param) -> tuple:
    x = fx_node.args[0]
    path = fx_node.target
    if isinstance(module, nn.Linear):
        bias = param(f"{path}.bias", module.bias) if module.bias is not None else None
        return (x, param(f"{path}.weight", module.weight), bias)
    if isinstance(module, nn.LayerNorm):
        w = param(f"{path}.weight", module.weight) if module.weight is not None else None
        b = param(f"{path}.bias", module.bias) if module.bias is not None else None
        return (x, list(module.normalized_shape), w, b, module.eps)
    if isinstance(module, nn.Embedding):
        return (param(f"{path}.weight", module.weight), x)
    if isinstance(module, nn.GELU):
        return (x,) if module.approximate == "none" else (x, module.approximate)
    if isinstance(module, nn.Softmax):
        return (x, module.dim)
    return (x,)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().contiguous().numpy()
