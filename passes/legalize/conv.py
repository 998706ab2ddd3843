"""Rules for convolutional nets: convolutions, pooling and batch norm (eval and training mode).

A convolution is an implicit GEMM: im2col gathers each output position's window of the input (a layout op;
on the wafer, routing the activations to the PEs that hold the filter), the matmul kernel multiplies the
windows by the filter read as its [N, K] operand (K = C/groups * prod(kernel), the bias fused), and a permute
puts the channels back at dim 1. Groups are the matmul's batch: group g's windows meet group g's filters.
Pools gather their windows the same way and reduce them with the pool kernel. Inputs without a batch dim
(torch takes a conv2d on [C, H, W]) get a batch of one for the gather and lose it again after.

Batch norm is the batchnorm kernel in both modes: eval mode gives it the running statistics, training mode the
batch's own (a mean and a biased var reduction over every dim but the channels), so the normalisation stays
one kernel. Training mode also moves the running statistics towards the batch's; that is computed only where
the graph reads them afterwards (see `_batch_norm_call`).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from wsc.core.ir import Node, Ref
from wsc.ops.im2col import adaptive_bounds, adaptive_widest
from wsc.passes.legalize import Rewriter, legalizes
from wsc.passes.legalize.elementwise import emit_elementwise
from wsc.passes.legalize.layout import permute, reshape
from wsc.passes.legalize.reduce import reduce_over

CONVOLUTIONS = ("aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default", "aten.conv1d.padding",
                "aten.conv2d.padding", "aten.conv3d.padding")


def _per_dim(value: Any, dims: int) -> list[int]:
    """An int or a list of one or `dims` ints (torch's forms of a kernel size, stride, padding...) as `dims`."""
    values = [value] if isinstance(value, int) else list(value)
    return [int(v) for v in (values * dims if len(values) == 1 else values)]


def _batched(rw: Rewriter, x: str, dims: int) -> str:
    """x as [N, C, *spatial]: an input without its batch dim gets a batch of one."""
    shape = rw.shape(x)
    return rw.emit("reshape", [x], (1, *shape)) if len(shape) == dims + 1 else x


def _unbatched(rw: Rewriter, node: Node, value: str) -> str:
    """The node's value from its batched form: the batch of one dropped again when the node has none."""
    if rw.shape(value) == node.shape:
        return value
    return rw.emit("reshape", [value], node.shape, final=True)


def _filter(rw: Rewriter, weight: str, shape: tuple[int, ...]) -> str:
    """The filter [OC, C/G, *kernel] as the matmul's [N, K] operand ([G, OC/G, K] with groups). A parameter is
    viewed in place, as a parameter of that shape (the store streams the same elements in that shape), so the
    matmul reads it as its weight; anything else is reshaped."""
    source = rw.out[weight]
    if source.op != "param":
        return rw.emit("reshape", [weight], shape)
    for seen in rw.out.params:  # one view of a filter that several convolutions share
        if seen.attrs.get("key") == source.attrs.get("key") and seen.shape == shape:
            return seen.name
    view = rw.emit("param", [], shape, source.dtype, **source.attrs)
    rw.out[view].holds = source.holds  # the captured weight it views, for verification's golden values
    return view


def _conv_padding(rw: Rewriter, node: Node, padding: Any, kernel: Sequence[int], dilation: Sequence[int],
                  dims: int) -> list[list[int]]:
    """[before, after] per spatial dim. "same" pads dilation * (kernel - 1) in all, the odd one after, as torch."""
    if padding == "valid":
        return [[0, 0]] * dims
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        return [[t // 2, t - t // 2] for t in totals]
    if isinstance(padding, str):
        raise rw.unsupported(node, f"padding {padding!r}; give 'same', 'valid' or sizes")
    return [[p, p] for p in _per_dim(padding, dims)]


@legalizes(*CONVOLUTIONS)
@legalizes("aten.convolution.default", refuses="transposed convolutions")
def _conv(rw: Rewriter, node: Node) -> str:
    x, weight, bias = rw.arg(node, 0, "input"), rw.arg(node, 1, "weight"), rw.arg(node, 2, "bias")
    dims = len(rw.shape(weight)) - 2
    if node.op == "aten.convolution.default":
        if rw.arg(node, 6, "transposed"):
            raise rw.unsupported(node, "a transposed convolution (ConvTranspose); only direct convolutions are")
        stride, padding, dilation = rw.arg(node, 3, "stride"), rw.arg(node, 4, "padding"), rw.arg(node, 5, "dilation")
        groups = rw.arg(node, 8, "groups")
    else:
        stride, dilation = rw.arg(node, 3, "stride", 1), rw.arg(node, 5, "dilation", 1)
        padding = rw.arg(node, 4, "padding", "valid" if node.op.endswith(".padding") else 0)
        groups = rw.arg(node, 6, "groups", 1)
    x = _batched(rw, x, dims)
    n, channels, *spatial = rw.shape(x)
    out_channels, _, *kernel = rw.shape(weight)
    out = list(node.shape[-dims:])
    stride, dilation = _per_dim(stride, dims), _per_dim(dilation, dims)
    pads = _conv_padding(rw, node, padding, kernel, dilation, dims)
    groups = int(groups)
    k = channels // groups * math.prod(kernel)
    positions = n * math.prod(out)
    if groups == 1 and set(kernel) | set(stride) == {1} and not any(map(any, pads)):
        # A 1x1 convolution: every position's window is its own channels, so channels-last is the patches.
        patches = rw.emit("permute", [x], (n, *spatial, channels), dims=[0, *range(2, dims + 2), 1])
    else:
        patches = rw.emit("im2col", [x], (groups, positions, k), kernel=kernel, stride=stride, dilation=dilation,
                          padding=pads, output=out, adaptive=False, fill=0.0, form="patches", groups=groups)
    channels_last = (n, *out, out_channels)
    if groups == 1:
        filt = _filter(rw, weight, (out_channels, k))
        inputs = [patches, filt] + ([bias] if bias is not None else [])
        value = rw.emit("matmul", inputs, channels_last, bias=bias is not None)
    else:
        filt = _filter(rw, weight, (groups, out_channels // groups, k))
        value = rw.emit("matmul", [patches, filt], (groups, positions, out_channels // groups), bias=False)
        value = rw.emit("permute", [value], (positions, groups, out_channels // groups), dims=[1, 0, 2])
        value = rw.emit("reshape", [value], channels_last)
        if bias is not None:  # the matmul's bias is one row for every batch, so a group's own is added after
            value = rw.emit("add", [value, bias], channels_last)
    batched = (n, out_channels, *out)
    to_nchw = [0, dims + 1, *range(1, dims + 1)]
    return _unbatched(rw, node, rw.emit("permute", [value], batched, final=batched == node.shape, dims=to_nchw))


# --------------------------------------------------------------------------------------------------- pooling


def _windows(rw: Rewriter, x: str, out: Sequence[int], kernel: Sequence[int], fill: float, **where: Any) -> str:
    """The pooling windows of x [N, C, *spatial] as [N, C, *out, prod(kernel)] (im2col's "windows")."""
    n, c = rw.shape(x)[:2]
    return rw.emit("im2col", [x], (n, c, *out, math.prod(kernel)), kernel=list(kernel), output=list(out),
                   fill=fill, form="windows", **where)


def _mean(rw: Rewriter, node: Node, windows: str, divisors: np.ndarray) -> str:
    """The pool kernel's mean of each window over its divisor: one attr when they are all equal, else a const."""
    window = rw.shape(windows)[-1]
    flat = divisors.reshape(-1)
    if np.all(flat == flat[0]):
        return rw.emit("pool", [windows], node.shape, final=True, mode="mean", window=window, divisor=float(flat[0]))
    return rw.emit("pool", [windows, rw.const(divisors.astype(np.float32))], node.shape, final=True, mode="mean",
                   window=window)


def _unread_extra_output(rw: Rewriter, node: Node, what: str) -> str | None:
    """For a multi-output op's extra outputs (a max pool's indices): the value standing for them when nothing
    reads them (the node is then dropped), else a refusal."""
    if node.attrs.get("index", 0) == 0:
        return None
    if rw.source.users(node.name) or node.name in rw.source.outputs:
        raise rw.unsupported(node, f"its {what} are read; only its first output is supported")
    return rw.arg(node, 0, "self")


@legalizes("aten.max_pool1d.default", "aten.max_pool2d.default")
@legalizes("aten.max_pool2d_with_indices.default", refuses="reading the indices")
def _max_pool(rw: Rewriter, node: Node) -> str:
    unread = _unread_extra_output(rw, node, "indices")
    if unread is not None:
        return unread
    dims = 1 if "pool1d" in node.op else 2
    x = _batched(rw, rw.arg(node, 0, "self"), dims)
    kernel = _per_dim(rw.arg(node, 1, "kernel_size"), dims)
    stride = _per_dim(rw.arg(node, 2, "stride", None) or kernel, dims)
    padding = [[p, p] for p in _per_dim(rw.arg(node, 3, "padding", 0), dims)]
    dilation = _per_dim(rw.arg(node, 4, "dilation", 1), dims)
    windows = _windows(rw, x, node.shape[-dims:], kernel, -math.inf, stride=stride, padding=padding,
                       dilation=dilation, adaptive=False)
    return rw.emit("pool", [windows], node.shape, final=True, mode="max", window=math.prod(kernel))


def _avg_pool_divisors(spatial: Sequence[int], out: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                      padding: Sequence[int], count_include_pad: bool, divisor_override: int | None) -> np.ndarray:
    """torch's divisor of each average pool window, [*out]: the override, else the window clipped to the padded
    input (count_include_pad) or to the input itself."""
    if divisor_override:
        return np.full(tuple(out), float(divisor_override))
    divisors = np.ones((), dtype=np.float64)
    for size, o, k, s, p in zip(spatial, out, kernel, stride, padding, strict=True):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, size + p)
        counted = end - start if count_include_pad else np.minimum(end, size) - np.maximum(start, 0)
        divisors = np.multiply.outer(divisors, counted)
    return divisors


@legalizes("aten.avg_pool1d.default", "aten.avg_pool2d.default")
def _avg_pool(rw: Rewriter, node: Node) -> str:
    dims = 1 if "pool1d" in node.op else 2
    x = _batched(rw, rw.arg(node, 0, "self"), dims)
    kernel = _per_dim(rw.arg(node, 1, "kernel_size"), dims)
    stride = _per_dim(rw.arg(node, 2, "stride", None) or kernel, dims)
    padding = _per_dim(rw.arg(node, 3, "padding", 0), dims)
    count_include_pad = rw.arg(node, 5, "count_include_pad", True)
    override = rw.arg(node, 6, "divisor_override", None) if dims == 2 else None
    out = node.shape[-dims:]
    windows = _windows(rw, x, out, kernel, 0.0, stride=stride, padding=[[p, p] for p in padding],
                       dilation=[1] * dims, adaptive=False)
    divisors = _avg_pool_divisors(rw.shape(x)[2:], out, kernel, stride, padding, count_include_pad, override)
    return _mean(rw, node, windows, divisors)


@legalizes("aten.adaptive_avg_pool1d.default", "aten.adaptive_avg_pool2d.default",
           "aten._adaptive_avg_pool2d.default")
def _adaptive_avg_pool(rw: Rewriter, node: Node) -> str:
    dims = 1 if "pool1d" in node.op else 2
    x = _batched(rw, rw.arg(node, 0, "self"), dims)
    n, c, *spatial = rw.shape(x)
    out = node.shape[-dims:]
    if all(o == 1 for o in out):
        # One window per channel, its whole extent: the input in its own order is the windows. The mean is
        # computed as [N, 1.., C], the same elements in the same order as [N, C, 1..], with the channels as the
        # columns, as the linear head that reads it has its classes: both kernels' rectangles are then wide.
        size = math.prod(spatial)
        windows = rw.emit("reshape", [x], (n, *out, c, size))
        pooled = rw.emit("pool", [windows], (n, *out, c), mode="mean", window=size, divisor=float(size))
        return rw.emit("reshape", [pooled], node.shape, final=True)
    widest = [adaptive_widest(s, o) for s, o in zip(spatial, out, strict=True)]
    windows = _windows(rw, x, out, widest, 0.0, adaptive=True)
    divisors = np.ones((), dtype=np.float64)
    for size, o in zip(spatial, out, strict=True):
        start, end = adaptive_bounds(size, o)
        divisors = np.multiply.outer(divisors, end - start)
    return _mean(rw, node, windows, divisors)


# ------------------------------------------------------------------------------------------------ batch norm


@dataclass(frozen=True)
class _Form:
    """Where an ATen batch norm op holds its arguments (indices into its args), and how it treats the running
    statistics: `stats` whether it takes them (at 3 and 4), `training` the index of its flag (None: eval mode
    only), `returns_stats` whether it returns the updated ones as its outputs 3 and 4 instead of writing them
    in place (the functional op of a decomposed graph)."""

    stats: bool
    training: int | None
    momentum: int
    eps: int
    returns_stats: bool = False


_FORMS = {
    "aten.batch_norm.default": _Form(True, 5, 6, 7),
    "aten._native_batch_norm_legit_no_training.default": _Form(True, None, 5, 6),
    "aten._native_batch_norm_legit.default": _Form(True, 5, 6, 7),
    "aten._native_batch_norm_legit.no_stats": _Form(False, 3, 4, 5),
    "aten.native_batch_norm.default": _Form(True, 5, 6, 7),
    "aten._native_batch_norm_legit_functional.default": _Form(True, 5, 6, 7, returns_stats=True),
}
RUNNING = {"mean": (3, "running_mean"), "var": (4, "running_var")}


@dataclass
class _Call:
    """One batch norm call, its operands as they were when it ran: the getitem nodes of a multi-output op each
    come to the rule, and the first of them may already have rebound the running statistics to their updates."""

    x: str
    weight: str | None
    bias: str | None
    running: dict[str, str | None]  # "mean", "var" -> the running statistic the call read
    training: bool
    momentum: float
    eps: float
    updated: dict[str, str] = field(default_factory=dict)  # "mean", "var" -> the running statistic after it


@dataclass
class _State:
    parents: dict[str, str]  # getitem node -> the multi-output node it reads
    calls: dict[str, _Call] = field(default_factory=dict)  # by the call's node
    batch: dict[str, tuple[str, str]] = field(default_factory=dict)  # x -> its batch mean and biased var [C]


_STATE: weakref.WeakKeyDictionary[Rewriter, _State] = weakref.WeakKeyDictionary()


def _state(rw: Rewriter) -> _State:
    if rw not in _STATE:
        # A getitem node carries its producer's op and args but not its name; the producer is the last
        # multi-output node before it with the same op and args (two calls alike are told apart by position).
        parents, last = {}, {}
        for each in rw.source:
            key = (each.op, repr(each.attrs.get("args")), repr(each.attrs.get("kwargs")))
            if each.attrs.get("multi_output") and "index" not in each.attrs:
                last[key] = each.name
            elif "index" in each.attrs and key in last:
                parents[each.name] = last[key]
        _STATE[rw] = _State(parents)
    return _STATE[rw]


def _call_name(rw: Rewriter, node: Node) -> str:
    return _state(rw).parents.get(node.name, node.name)


def _ref_name(node: Node, index: int, name: str) -> str | None:
    """The ATen node an argument names, None when it is not a tensor."""
    args, kwargs = node.attrs.get("args", ()), node.attrs.get("kwargs", {})
    value = args[index] if index < len(args) else kwargs.get(name)
    return value.name if isinstance(value, Ref) else None


def _read_later(rw: Rewriter, node: Node, name: str) -> bool:
    """Whether anything after this call reads the ATen value `name` (a running statistic it updates in place):
    a node not legalised yet that is not part of the call, or the graph's outputs."""
    call = _call_name(rw, node)
    return name in rw.source.outputs or any(
        user not in rw.value and _call_name(rw, rw.source[user]) != call for user in rw.source.users(name))


def _batch_norm_call(rw: Rewriter, node: Node) -> _Call:
    """The call the node is (or is an output of), read once. A call in training mode that updates running
    statistics in place rebinds them to their updates when something after it reads them, as torch's later
    readers see the updated buffers; else the update is not computed."""
    state = _state(rw)
    name = _call_name(rw, node)
    if name in state.calls:
        return state.calls[name]
    form = _FORMS[node.op]
    x = rw.arg(node, 0, "input")
    if len(rw.shape(x)) < 2:
        raise rw.unsupported(node, f"an input of rank {len(rw.shape(x))}; batch norm needs [N, C, ...]")
    running = {which: rw.arg(node, index, arg) if form.stats else None for which, (index, arg) in RUNNING.items()}
    training = bool(rw.arg(node, form.training, "training")) if form.training is not None else False
    call = _Call(x, rw.arg(node, 1, "weight"), rw.arg(node, 2, "bias"), running, training,
                 float(rw.arg(node, form.momentum, "momentum")), float(rw.arg(node, form.eps, "eps")))
    state.calls[name] = call
    if training and not form.returns_stats:
        for which, (index, arg) in RUNNING.items():
            ref = _ref_name(node, index, arg)
            if ref is not None and _read_later(rw, node, ref):
                rw.value[ref] = _running_update(rw, node, call, which)
    return call


def _batch_statistics(rw: Rewriter, node: Node, x: str) -> tuple[str, str]:
    """The batch's mean and biased variance of each channel of x [N, C, ...], [C] each: the channels moved
    first once, read as [C, N * inner] by both reductions. Computed once per input (every output of a call,
    and calls on the same input, share them)."""
    state = _state(rw)
    if x not in state.batch:
        shape = rw.shape(x)
        channels = shape[1]
        rows = reshape(rw, permute(rw, x, [1, 0, *range(2, len(shape))]), (channels, math.prod(shape) // channels))
        origin = rw.origin
        assert origin is not None
        stats = []
        for op, attrs in (("mean", {}), ("var", {"correction": 0.0})):
            # reduce_over names its result after the node it is given: a stand-in, so the call keeps its name.
            rw.origin = stand_in = replace(origin, name=f"{origin.name}_batch_{op}{rw.count}", shape=(channels,),
                                           dtype="float32")
            try:
                stats.append(reduce_over(rw, stand_in, op, rows, [1], **attrs))
            finally:
                rw.origin = origin
        state.batch[x] = (stats[0], stats[1])
    return state.batch[x]


def _running_update(rw: Rewriter, node: Node, call: _Call, which: str, final: bool = False) -> str:
    """(1 - momentum) * running + momentum * the batch's statistic, the variance unbiased (n / (n - 1)), as
    torch updates the running statistics."""
    running = call.running[which]
    assert running is not None  # only a call given running statistics updates them
    if which in call.updated:
        return call.updated[which]
    shape = rw.shape(call.x)
    channels, n = shape[1], math.prod(shape) // shape[1]
    mean, var = _batch_statistics(rw, node, call.x)
    if which == "var" and n < 2:
        raise rw.unsupported(node, "a running variance updated from one value per channel (its unbiased "
                                   "variance is undefined)")
    batch, factor = (mean, call.momentum) if which == "mean" else (var, call.momentum * n / (n - 1))
    kept = emit_elementwise(rw, node, "mul", [running, 1.0 - call.momentum], out=(channels,), final=False)
    alpha = float(np.float32(factor))
    call.updated[which] = emit_elementwise(rw, node, "add", [kept, batch], out=(channels,), final=final,
                                           attrs={} if alpha == 1 else {"alpha": alpha})
    return call.updated[which]


def _unread(rw: Rewriter, node: Node) -> bool:
    return not rw.source.users(node.name) and node.name not in rw.source.outputs


@legalizes("aten.batch_norm.default", refuses="values other than float32 in training mode")
@legalizes("aten._native_batch_norm_legit_no_training.default", refuses="reading the saved mean and rstd")
@legalizes("aten._native_batch_norm_legit.default", "aten._native_batch_norm_legit.no_stats",
           "aten.native_batch_norm.default", "aten._native_batch_norm_legit_functional.default",
           refuses="reading the saved mean and rstd in eval mode, values other than float32 in training mode")
def _batch_norm(rw: Rewriter, node: Node) -> str:
    call = _batch_norm_call(rw, node)
    index = node.attrs.get("index", 0)
    if index and _unread(rw, node):
        return call.x  # a stand-in: nothing reads it, so it is dropped
    if index in (1, 2):
        if not call.training:
            raise rw.unsupported(node, "its saved mean and inverse standard deviation are read in eval mode "
                                       "(torch leaves them empty); only its first output is supported")
        mean, var = _batch_statistics(rw, node, call.x)
        if index == 1:
            return mean
        shifted = emit_elementwise(rw, node, "add", [var, call.eps], out=node.shape, final=False)
        return rw.emit("rsqrt", [shifted], node.shape, final=True)
    if index in (3, 4):  # the functional op's updated running statistics
        which = "mean" if index == 3 else "var"
        if not call.training:
            kept = call.running[which]
            assert kept is not None  # the functional op's schema requires them
            return kept
        return _running_update(rw, node, call, which, final=True)
    shape = rw.shape(call.x)
    if call.training:
        mean, var = _batch_statistics(rw, node, call.x)
        given = {"mean": mean, "var": var, "weight": call.weight, "bias": call.bias}
    else:
        given = {**call.running, "weight": call.weight, "bias": call.bias}
    operands = [name for name in ("mean", "var", "weight", "bias") if given[name] is not None]
    return rw.emit("batchnorm", [call.x] + [given[name] for name in operands], node.shape, final=True,
                   eps=call.eps, channels=shape[1], inner=math.prod(shape[2:]), operands=operands)

