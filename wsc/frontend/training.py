"""Capture for training: the joint forward and backward graph of a language model's loss, traced once.

AOTAutograd (`aot_export_module` with `trace_joint`) traces the loss (cross-entropy of the model's logits at the
next tokens) and PyTorch's own backward of it into one ATen graph: its inputs are the parameters and the token
ids and targets, its outputs the loss and one gradient per parameter. Legalisation then sees one more family of
ATen ops (the `*_backward` ops) and the rest of the pipeline maps the graph as it maps a forward.

The forward nodes are the ones the loss depends on; every other node is the backward's (`Node.phase`). A backward
node is given the module of the layer it differentiates, so that group-layers cuts the backward into layers of
its own that run in reverse: the backward ops of a block read the block's weights, and a node that reads none
(a gradient's residual add) belongs to the layer of the backward node before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsc.core.errors import WscError
from wsc.core.ir import Graph, Node
from wsc.frontend.capture import TORCH_DTYPES, Captured, _add_call, _aten_name, _node, _quiet, tensor_aliases

PREFIX = "model."  # the wrapper's attribute: stripped from every parameter and module path


class LanguageModelLoss(nn.Module):
    """The mean cross-entropy of a model's logits [batch, seq, vocab] at target ids [batch, seq]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor]:
        logits = self.model(ids)
        if not isinstance(logits, torch.Tensor):  # a Hugging Face output object
            logits = logits.logits if hasattr(logits, "logits") else logits[0]
        return (F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)),)


@dataclass
class TrainingCapture(Captured):
    """A joint graph: graph.outputs[0] is the loss, graph.outputs[1 + i] the gradient of store key gradients[i]
    (two parameters tied to one tensor give two gradients of one key, which add up)."""

    gradients: list[str] = field(default_factory=list)


def canonical_keys(model: nn.Module) -> dict[str, str]:
    """Each parameter name -> the name its tensor is stored under (the first of a tied tensor's names)."""
    first: dict[int, str] = {}
    keys = {}
    tensors: list[tuple[str, torch.Tensor]] = [*model.named_parameters(remove_duplicate=False),
                                               *model.named_buffers(remove_duplicate=False)]
    for name, tensor in tensors:
        keys[name] = first.setdefault(id(tensor), name)
    return keys


def capture_training(model: nn.Module, ids: torch.Tensor, targets: torch.Tensor) -> TrainingCapture:
    """The joint graph of `model`'s loss on token `ids` at `targets` ([batch, seq] int64 each)."""
    from torch._functorch.aot_autograd import aot_export_module

    if ids.shape != targets.shape or ids.dtype != torch.int64 or targets.dtype != torch.int64:
        raise WscError(f"training takes int64 token ids and targets of one shape, got {ids.dtype}{list(ids.shape)} "
                       f"and {targets.dtype}{list(targets.shape)}")
    if any(p.is_meta for p in model.parameters()):
        raise WscError("training traces the model on real weights; build it on the CPU (or give --weights)")
    wrapper = LanguageModelLoss(model)
    was_training = model.training
    model.train()
    try:
        with _quiet():
            gm, signature = aot_export_module(wrapper, (ids, targets), trace_joint=True, output_loss_index=0)
    except WscError:
        raise
    except Exception as error:
        raise WscError(f"cannot trace the model's backward: {type(error).__name__}: "
                       f"{str(error).strip().splitlines()[0][:120]}") from None
    finally:
        model.train(was_training)
    assert isinstance(gm, torch.fx.GraphModule)
    return _from_joint(model, gm, signature)


def _from_joint(model: nn.Module, gm: torch.fx.GraphModule, signature: Any) -> TrainingCapture:
    keys = canonical_keys(model)
    tensors = {**dict(model.named_parameters(remove_duplicate=False)),
               **dict(model.named_buffers(remove_duplicate=False))}
    tied = {k.removeprefix(PREFIX): v for k, v in tensor_aliases(model).items()}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    sources = [*signature.parameters, *signature.buffers]
    if len(placeholders) != len(sources) + 2:
        raise WscError(f"the joint graph takes {len(placeholders)} inputs; expected the parameters, the buffers, "
                       "the ids and the targets")
    output = next(n for n in gm.graph.nodes if n.op == "output")
    results = list(output.args[0])
    loss = results[0]
    forward = _ancestors(loss)
    graph = Graph()
    weights: dict[str, torch.Tensor] = {}
    fx_args: list[tuple[str, Any]] = []
    module_of_param: dict[str, str] = {}
    for fx_node, fqn in zip(placeholders, sources, strict=False):
        name = fqn.removeprefix(PREFIX)
        key = keys[name]
        weights[key] = tensors[name].detach()
        kind = "parameter" if fqn in signature.parameters else "buffer"
        graph.add(_node(fx_node, "param", (), {"key": key, "kind": kind}))
        fx_args.append(("weight", key))
        if not tied.get(name):  # a tied weight is read by two modules (the embedding and the LM head)
            module_of_param[fx_node.name] = name.rpartition(".")[0]
    for index, fx_node in enumerate(placeholders[len(sources):]):
        graph.add(_node(fx_node, "input", (), {}))
        fx_args.append(("input", index))
    # AOTAutograd's trace keeps no module paths, so a node gets the module of the weight it reads, or else the
    # module of the node before it in its phase (a residual add, attention between its projections).
    position: dict[str, int] = {}  # forward values (and weights) in the order the forward computes them
    current = {True: "", False: ""}  # forward?, -> the module the phase is in
    for fx_node in gm.graph.nodes:
        if fx_node.op == "get_attr":  # a tensor the trace made a constant (a literal the model wrote)
            value = getattr(gm, str(fx_node.target)).detach()
            graph.add(Node(fx_node.name, "const", (), tuple(value.shape), TORCH_DTYPES.get(value.dtype, "float32"),
                           {"value": value.cpu().numpy()}))
            continue
        if fx_node.op != "call_function":
            continue
        _add_call(graph, fx_node, _aten_name(fx_node.target), fx_node.args, fx_node.kwargs)
        node = graph[fx_node.name]
        is_forward = fx_node in forward
        if is_forward:
            read = [module_of_param[a.name] for a in fx_node.all_input_nodes if a.name in module_of_param]
        else:  # the forward value it reads that was computed last: the layer it differentiates
            seen = [a for a in fx_node.all_input_nodes if a.name in position]
            last = max(seen, key=lambda a: position[a.name]).name if seen else None
            read = [module_of_param.get(last) or graph[last].module] if last else []
        if read:
            current[is_forward] = read[0]
        elif not current[is_forward] and not is_forward:
            current[is_forward] = current[True]  # the backward starts where the forward ended: the LM head
        node.module = current[is_forward]
        if is_forward:
            position[fx_node.name] = len(position)
            for a in fx_node.all_input_nodes:  # a weight is placed where the forward first reads it
                position.setdefault(a.name, len(position))
        if not is_forward:
            node.phase = "backward"
    gradients = []
    for grad_node in results[1:]:
        fqn = signature.backward_signature.gradients_to_parameters[grad_node.name]
        gradients.append(keys[fqn.removeprefix(PREFIX)])
    graph.outputs = [loss.name, *(g.name for g in results[1:])]
    return TrainingCapture(graph, weights, "aot-joint", aliases=tied, fx=gm, fx_args=fx_args,
                           gradients=gradients)


def _ancestors(node: torch.fx.Node) -> set[torch.fx.Node]:
    seen: set[torch.fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen
