"""Rules for the ATen ops that move data or name a value another way: layout ops, identities, casts, constants.

The helpers `reshape`, `permute` and `expand` are how every rule emits those layout ops (the matrix products'
rules too): a reshape of a reshape is one reshape, a permute of a permute one permute, and one that changes
nothing is no node at all, so `x @ W.T` reads W itself. A permute that moves only dims of size 1 keeps the
elements in order, so it is a reshape (which an epilogue may be fused through)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from wsc.core.dtypes import BY_NAME
from wsc.core.ir import Node, Ref
from wsc.passes.legalize import Rewriter, legalizes

INDEX_DTYPES = ("int64", "int32")


# ----------------------------------------------------------------------------------------------------- helpers

def reshape(rw: Rewriter, x: str, shape: Sequence[int], final: bool = False) -> str:
    shape = tuple(int(d) for d in shape)
    while rw.out[x].op == "reshape":
        x = rw.out[x].inputs[0]
    if rw.shape(x) == shape:
        return x
    return rw.emit("reshape", [x], shape, dtype=rw.out[x].dtype, final=final)


def permute(rw: Rewriter, x: str, dims: Sequence[int], final: bool = False) -> str:
    rank = len(rw.shape(x))
    dims = [int(d) % rank for d in dims] if rank else []
    while rw.out[x].op == "permute":
        inner = rw.out[x]
        dims = [inner.attrs["dims"][d] for d in dims]
        x = inner.inputs[0]
    source = rw.shape(x)
    shape = tuple(source[d] for d in dims)
    if [d for d in dims if source[d] != 1] == [d for d in range(rank) if source[d] != 1]:
        return reshape(rw, x, shape, final)
    return rw.emit("permute", [x], shape, dtype=rw.out[x].dtype, final=final, dims=dims)


def expand(rw: Rewriter, x: str, shape: Sequence[int], final: bool = False) -> str:
    """x broadcast to `shape` (numpy's rules), materialised only where it repeats."""
    shape = tuple(int(d) for d in shape)
    padded = (1,) * (len(shape) - len(rw.shape(x))) + rw.shape(x)
    if padded == shape:
        return reshape(rw, x, shape, final)
    return rw.emit("expand", [x], shape, dtype=rw.out[x].dtype, final=final)


def swap_last(rank: int) -> list[int]:
    """The dims of a transpose of the last two dims."""
    dims = list(range(rank))
    dims[-2], dims[-1] = dims[-1], dims[-2]
    return dims


def known_value(rw: Rewriter, name: str) -> np.ndarray | None:
    """The value of `name` when the compiler knows it: a constant, or a buffer the model carries."""
    node = rw.out[name]
    if node.op == "const":
        return np.asarray(node.attrs["value"])
    known = rw.weights.get(node.attrs.get("key", "")) if node.op == "param" and rw.weights is not None else None
    if known is not None and node.attrs.get("kind") == "buffer" and not known.is_meta:
        return known.detach().cpu().numpy()
    return None


def _tensors(rw: Rewriter, items: Sequence[Ref]) -> list[str]:
    return [rw.value[item.name] for item in items]


def _concat(rw: Rewriter, node: Node, parts: list[str], dim: int) -> str:
    parts = [p for p in parts if rw.out[p].numel > 0]  # torch skips empty inputs, a legacy (0,) of any rank too
    if not parts:
        value = np.zeros(node.shape, BY_NAME[node.dtype].numpy)
        return rw.emit("const", [], node.shape, final=True, value=value)
    if len(parts) == 1:
        return reshape(rw, parts[0], node.shape, final=True)
    return rw.emit("concat", parts, node.shape, final=True, dim=dim % len(node.shape))


def _slice(rw: Rewriter, x: str, dim: int, start: int | None, end: int | None, step: int,
           shape: tuple[int, ...], final: bool = False) -> str:
    extent = rw.shape(x)[dim]
    start, end, step = slice(start, end, step).indices(extent)
    if shape[dim] == extent and step == 1:
        return reshape(rw, x, shape, final)
    end = min(end, start + step * shape[dim])
    return rw.emit("slice", [x], shape, dtype=rw.out[x].dtype, final=final, dim=dim, start=start, end=end,
                   step=step)


def _select(rw: Rewriter, node: Node, x: str, dim: int, index: int) -> str:
    dim %= len(rw.shape(x))
    index = index + rw.shape(x)[dim] if index < 0 else index
    kept = list(rw.shape(x))
    kept[dim] = 1
    return reshape(rw, _slice(rw, x, dim, index, index + 1, 1, tuple(kept)), node.shape, final=True)


def _index_tensor(rw: Rewriter, node: Node, name: str) -> str:
    """An index input, checked: an integer tensor (a buffer of indices becomes a constant: data the compiler
    knows, not a weight to stream)."""
    dtype = rw.out[name].dtype
    if dtype not in INDEX_DTYPES:
        raise rw.unsupported(node, f"indices of dtype {dtype} (a boolean mask's result has as many elements as "
                                   "it has True: use torch.where, or integer indices)")
    known = known_value(rw, name)
    return rw.const(known) if known is not None and rw.out[name].op == "param" else name


# ------------------------------------------------------------------------------------------------------- rules

@legalizes("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.view_as.default",
           "aten.reshape_as.default", "aten.unsqueeze.default", "aten.squeeze.dim", "aten.squeeze.dims",
           "aten.squeeze.default", "aten.flatten.using_ints", "aten.unflatten.int", "aten.ravel.default")
def _reshape(rw: Rewriter, node: Node) -> str:
    return reshape(rw, rw.arg(node, 0, "self"), node.shape, final=True)


@legalizes("aten.permute.default", "aten.transpose.int", "aten.swapaxes.default", "aten.swapdims.default",
           "aten.t.default", "aten.numpy_T.default", "aten.mT.default", "aten.movedim.int", "aten.movedim.intlist")
def _permute(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    rank = len(rw.shape(x))
    dims = list(range(rank))
    if node.op == "aten.permute.default":
        dims = list(rw.arg(node, 1, "dims"))
    elif node.op == "aten.numpy_T.default":
        dims.reverse()
    elif node.op == "aten.mT.default":
        dims = swap_last(rank)
    elif node.op.startswith("aten.movedim"):
        dims = _moved(rank, rw.arg(node, 1, "source"), rw.arg(node, 2, "destination"))
    elif rank > 1:  # transpose, swapaxes, swapdims, t
        d0, d1 = rw.arg(node, 1, "dim0", 0) % rank, rw.arg(node, 2, "dim1", 1) % rank
        dims[d0], dims[d1] = d1, d0
    return permute(rw, x, dims, final=True)


def _moved(rank: int, source: int | Sequence[int], destination: int | Sequence[int]) -> list[int]:
    """torch.movedim's order: each source dim at its destination, the others in order in the places left."""
    sources = [s % rank for s in ([source] if isinstance(source, int) else source)]
    destinations = [d % rank for d in ([destination] if isinstance(destination, int) else destination)]
    placed = dict(zip(destinations, sources, strict=True))
    rest = iter(d for d in range(rank) if d not in sources)
    return [placed[i] if i in placed else next(rest) for i in range(rank)]


@legalizes("aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default")
def _split(rw: Rewriter, node: Node) -> str:
    x, size = rw.arg(node, 0, "self"), rw.arg(node, 1, "split_size")
    dim = rw.arg(node, 2, "dim", 0) % len(rw.shape(x))
    extent, index = rw.shape(x)[dim], node.attrs["index"]
    if node.op == "aten.chunk.default":
        size = math.ceil(extent / size)
    sizes = list(size) if isinstance(size, (list, tuple)) else [size] * math.ceil(extent / size)
    start = sum(sizes[:index])
    return _slice(rw, x, dim, start, start + node.shape[dim], 1, node.shape, final=True)


@legalizes("aten.slice.Tensor")
def _slice_rule(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    dim = rw.arg(node, 1, "dim", 0) % len(rw.shape(x))
    start, end, step = rw.arg(node, 2, "start"), rw.arg(node, 3, "end"), rw.arg(node, 4, "step", 1)
    return _slice(rw, x, dim, start, end, step, node.shape, final=True)


@legalizes("aten.narrow.default")
def _narrow(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    dim = rw.arg(node, 1, "dim") % len(rw.shape(x))
    start = rw.arg(node, 2, "start")
    start = start + rw.shape(x)[dim] if start < 0 else start
    return _slice(rw, x, dim, start, start + rw.arg(node, 3, "length"), 1, node.shape, final=True)


@legalizes("aten.select.int")
def _select_rule(rw: Rewriter, node: Node) -> str:
    return _select(rw, node, rw.arg(node, 0, "self"), rw.arg(node, 1, "dim"), rw.arg(node, 2, "index"))


@legalizes("aten.unbind.int")
def _unbind(rw: Rewriter, node: Node) -> str:
    return _select(rw, node, rw.arg(node, 0, "self"), rw.arg(node, 1, "dim", 0), node.attrs["index"])


@legalizes("aten.cat.default", "aten.concat.default", "aten.concatenate.default")
def _cat(rw: Rewriter, node: Node) -> str:
    parts = _tensors(rw, rw.arg(node, 0, "tensors"))
    return _concat(rw, node, parts, rw.arg(node, 1, "dim", 0))


@legalizes("aten.stack.default")
def _stack(rw: Rewriter, node: Node) -> str:
    dim = rw.arg(node, 1, "dim", 0) % len(node.shape)
    parts = []
    for part in _tensors(rw, rw.arg(node, 0, "tensors")):
        shape = list(rw.shape(part))
        parts.append(reshape(rw, part, shape[:dim] + [1] + shape[dim:]))
    return _concat(rw, node, parts, dim)


@legalizes("aten.hstack.default", "aten.vstack.default")
def _hstack(rw: Rewriter, node: Node) -> str:
    """hstack joins along dim 1 (dim 0 for vectors), vstack along dim 0 with vectors as rows."""
    parts = _tensors(rw, rw.arg(node, 0, "tensors"))
    if node.op == "aten.vstack.default":
        rows = [reshape(rw, p, (1,) * (2 - len(rw.shape(p))) + rw.shape(p)) for p in parts]  # at least 2-D
        return _concat(rw, node, rows, 0)
    vectors = len(node.shape) == 1
    return _concat(rw, node, [reshape(rw, p, rw.shape(p) or (1,)) for p in parts], 0 if vectors else 1)


@legalizes("aten.expand.default", "aten.expand_as.default", "aten.broadcast_to.default")
def _expand(rw: Rewriter, node: Node) -> str:
    return expand(rw, rw.arg(node, 0, "self"), node.shape, final=True)


@legalizes("aten.repeat.default")
def _repeat(rw: Rewriter, node: Node) -> str:
    x, repeats = rw.arg(node, 0, "self"), [int(r) for r in rw.arg(node, 1, "repeats")]
    if all(r == 1 for r in repeats):
        return reshape(rw, x, node.shape, final=True)
    return rw.emit("repeat", [x], node.shape, final=True, repeats=repeats)


@legalizes("aten.repeat_interleave.self_int")
@legalizes("aten.repeat_interleave.self_Tensor", refuses="repeats computed at run time")
def _repeat_interleave(rw: Rewriter, node: Node) -> str:
    x, repeats, dim = rw.arg(node, 0, "self"), rw.arg(node, 1, "repeats"), rw.arg(node, 2, "dim")
    if isinstance(repeats, str):
        known = known_value(rw, repeats)
        if known is None:
            raise rw.unsupported(node, "repeats computed at run time (the output's size would depend on them)")
        repeats = int(known.reshape(-1)[0]) if known.size == 1 else [int(r) for r in known.reshape(-1)]
    if dim is None:  # torch repeats the elements of the flattened input
        x, dim = reshape(rw, x, (math.prod(rw.shape(x)),)), 0
    dim %= max(len(rw.shape(x)), 1)
    if repeats == 1:
        return reshape(rw, x, node.shape, final=True)
    return rw.emit("repeat_interleave", [x], node.shape, final=True, repeats=repeats, dim=dim)


@legalizes("aten.repeat_interleave.Tensor", refuses="repeats computed at run time")
def _repeat_indices(rw: Rewriter, node: Node) -> str:
    """The indices 0, 1, ... each repeated as often as `repeats` says: data, when the repeats are known."""
    known = known_value(rw, rw.arg(node, 0, "repeats"))
    if known is None:
        raise rw.unsupported(node, "repeats computed at run time (the output's size would depend on them)")
    value = np.repeat(np.arange(known.size), known.reshape(-1))
    return rw.emit("const", [], node.shape, "int64", final=True, value=value.astype(np.int64))


@legalizes("aten.index_select.default", refuses="indices that are not integers")
def _index_select(rw: Rewriter, node: Node) -> str:
    x, dim = rw.arg(node, 0, "self"), rw.arg(node, 1, "dim")
    index = _index_tensor(rw, node, rw.arg(node, 2, "index"))
    return rw.emit("index_select", [x, index], node.shape, final=True, dim=dim % max(len(rw.shape(x)), 1))


@legalizes("aten.gather.default", refuses="indices that are not integers")
def _gather(rw: Rewriter, node: Node) -> str:
    x, dim = rw.arg(node, 0, "self"), rw.arg(node, 1, "dim")
    index = _index_tensor(rw, node, rw.arg(node, 2, "index"))
    return rw.emit("gather", [x, index], node.shape, final=True, dim=dim % max(len(rw.shape(x)), 1))


@legalizes("aten.index.Tensor", refuses="boolean masks")
def _index(rw: Rewriter, node: Node) -> str:
    x, entries = rw.arg(node, 0, "self"), rw.arg(node, 1, "indices")
    dims = [d for d, entry in enumerate(entries) if entry is not None]
    indices = [_index_tensor(rw, node, rw.value[entries[d].name]) for d in dims]
    if not dims:
        return reshape(rw, x, node.shape, final=True)
    return rw.emit("index", [x, *indices], node.shape, final=True, dims=dims)


@legalizes("aten.flip.default")
def _flip(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    shape = rw.shape(x)
    dims = sorted({d % len(shape) for d in rw.arg(node, 1, "dims")}) if shape else []
    dims = [d for d in dims if shape[d] > 1]  # reversing one element moves nothing
    if not dims:
        return reshape(rw, x, node.shape, final=True)
    return rw.emit("flip", [x], node.shape, final=True, dims=dims)


@legalizes("aten.constant_pad_nd.default")
@legalizes("aten.pad.default", refuses="padding modes other than constant")
def _pad(rw: Rewriter, node: Node) -> str:
    x, pad = rw.arg(node, 0, "self"), [int(p) for p in rw.arg(node, 1, "pad")]
    if node.op == "aten.pad.default":
        mode = rw.arg(node, 2, "mode", "constant")
        if mode != "constant":
            raise rw.unsupported(node, f"{mode} padding (only constant padding is a layout op)")
        value = rw.arg(node, 3, "value")
    else:
        value = rw.arg(node, 2, "value", 0)
    rank = len(rw.shape(x))
    widths = [(0, 0)] * rank
    for i in range(len(pad) // 2):  # pairs from the last dim backwards, as torch takes them
        widths[rank - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    if not any(b or a for b, a in widths):
        return reshape(rw, x, node.shape, final=True)
    return rw.emit("pad", [x], node.shape, final=True, widths=widths, value=float(value or 0))


@legalizes("aten.alias.default", "aten.clone.default", "aten.contiguous.default", "aten.detach.default",
           "aten.lift_fresh_copy.default", "aten._assert_tensor_metadata.default")
def _identity(rw: Rewriter, node: Node) -> str:
    return rw.arg(node, 0, "self")


# The dtypes a cast may take a value to or from: what the kernels and the host hold. A cast between float dtypes
# changes the compute precision, which is the whole program's (--weights-dtype), not an op's.
_CASTABLE = ("float32", "int64", "int32", "bool")


@legalizes("aten.to.dtype_layout", "aten.to.dtype", "aten.to.device", "aten._to_copy.default",
           "aten.type_as.default", refuses="casts to or from dtypes other than float32, int64, int32 and bool")
def _cast(rw: Rewriter, node: Node) -> str:
    x = rw.arg(node, 0, "self")
    have = rw.out[x].dtype
    if have == node.dtype:
        return x  # a move to the device or a cast to the dtype it has: nothing to do
    if have not in _CASTABLE or node.dtype not in _CASTABLE:
        raise rw.unsupported(node, f"a cast from {have} to {node.dtype} (compile the model in one float dtype)")
    return rw.emit("cast", [x], node.shape, node.dtype, final=True)


@legalizes("aten.dropout.default")
def _dropout(rw: Rewriter, node: Node) -> str:
    if rw.arg(node, 2, "train", False) and rw.arg(node, 1, "p", 0.0) > 0:
        raise rw.unsupported(node, "dropout in training mode (call model.eval() first)")
    return rw.arg(node, 0, "input")


@legalizes("aten.arange.default", "aten.arange.start", "aten.arange.start_step")
def _arange(rw: Rewriter, node: Node) -> str:
    args = [rw.arg(node, i, n) for i, n in enumerate(("start", "end", "step"))]
    numbers = [a for a in args if isinstance(a, (int, float))]
    value = np.arange(*numbers).astype("int64" if node.dtype == "int64" else "float32")
    return rw.emit("const", [], node.shape, node.dtype, final=True, value=value)
