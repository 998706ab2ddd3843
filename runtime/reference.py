"""Plain numpy definitions of every kernel op, with the same calling contract as the kernels.

This module states what each op means; tests compare the JIT kernels against it (and it against
torch). It is never on the execution path. Computation is in float64 and rounded once at the end,
so it is the more accurate side of any comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

RefOp = Callable[[Sequence[np.ndarray], Mapping[str, Any], tuple[int, ...]], np.ndarray]
_OPS: dict[str, RefOp] = {}


def _op(name: str) -> Callable[[RefOp], RefOp]:
    def deco(fn: RefOp) -> RefOp:
        _OPS[name] = fn
        return fn

    return deco


@_op("layernorm")
def _layernorm(
    inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: tuple[int, ...]
) -> np.ndarray:
    x, w, b = (v.astype(np.float64) for v in inputs)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + float(attrs.get("eps", 1e-5))) * w + b


@_op("softmax")
def _softmax(
    inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: tuple[int, ...]
) -> np.ndarray:
    x = inputs[0].astype(np.float64) * float(attrs.get("scale", 1.0))
    rows, n = x.shape
    if attrs.get("causal", False):
        m = int(attrs.get("group_rows", rows))
        visible = np.arange(n)[None, :] <= (np.arange(rows) % m)[:, None] + (n - m)
    else:
        visible = np.ones_like(x, dtype=bool)
    x = np.where(visible, x, -np.inf)
    e = np.where(visible, np.exp(x - x.max(axis=-1, keepdims=True)), 0.0)
    return e / e.sum(axis=-1, keepdims=True)


@_op("attention")
def _attention(
    inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: tuple[int, ...]
) -> np.ndarray:
    """out[r] = softmax_j(scale * q[r] . k[g, j]) @ v[g] over the visible keys, g = r // M (see the kernel)."""
    q, k, v = (x.astype(np.float64) for x in inputs)
    rows, d = q.shape
    g, n, _ = k.shape
    m = int(attrs.get("group_rows", rows // g if g else 1))
    s = np.einsum("gmd,gnd->gmn", q.reshape(g, m, d), k) * float(attrs.get("scale", 1.0))
    if attrs.get("causal", False):
        visible = np.arange(n)[None, :] <= np.arange(m)[:, None] + (n - m)
    else:
        visible = np.ones((m, n), dtype=bool)
    s = np.where(visible, s, -np.inf)
    e = np.where(visible, np.exp(s - s.max(axis=-1, keepdims=True)), 0.0)
    p = e / e.sum(axis=-1, keepdims=True)
    return np.einsum("gmn,gnd->gmd", p, v).reshape(rows, d)


@_op("gelu")
def _gelu(inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: tuple[int, ...]) -> np.ndarray:
    x = inputs[0].astype(np.float64)
    if attrs.get("approximate", "none") == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


@_op("matmul")
def _matmul(inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: tuple[int, ...]) -> np.ndarray:
    a, b = (x.astype(np.float64) for x in inputs[:2])
    out = np.einsum("gmk,gnk->gmn", a, np.broadcast_to(b, (a.shape[0],) + b.shape[1:]))
    if attrs.get("bias", False):
        out = out + inputs[2].astype(np.float64)
    if attrs.get("epilogue", "none") == "gelu":
        out = _gelu([out], attrs, out_shape)
    if attrs.get("residual", False):
        out = inputs[-1].astype(np.float64) + out
    return out


def _broadcast_b(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    rows, cols = a.shape
    rb, cb = b.shape
    return np.tile(b, (rows // rb, cols // cb))


@_op("add")
def _add(inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: tuple[int, ...]) -> np.ndarray:
    a, b = inputs
    return a.astype(np.float64) + _broadcast_b(a, b)


@_op("mul")
def _mul(inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: tuple[int, ...]) -> np.ndarray:
    a, b = inputs
    return a.astype(np.float64) * _broadcast_b(a, b)


@_op("embedding")
def _embedding(
    inputs: Sequence[np.ndarray], attrs: Mapping[str, Any], out_shape: tuple[int, ...]
) -> np.ndarray:
    weight, ids = inputs
    if ids.size and (ids.min() < 0 or ids.max() >= weight.shape[0]):
        raise ValueError("embedding: id out of range")
    return weight[ids].astype(np.float64)


def reference_ops() -> list[str]:
    return sorted(_OPS)


def run_reference(
    op: str,
    out: np.ndarray,
    inputs: Sequence[np.ndarray],
    tiles: np.ndarray,
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write op(inputs) into exactly the elements of `out` covered by `tiles` (see lowering.py)."""
    full = _OPS[op](inputs, dict(attrs or {}), out.shape).astype(np.float32)
    cols = out.shape[-1] if out.ndim else 1
    out2d = out.reshape(-1, cols)
    full2d = full.reshape(-1, cols)
    for r0, r1, c0, c1 in np.asarray(tiles, dtype=np.int64).reshape(-1, 4).tolist():
        out2d[r0:r1, c0:c1] = full2d[r0:r1, c0:c1]
