"""JIT kernels against torch, under many ways of tiling the output.

Tolerance for float32 results: atol=1e-5, rtol=1e-4 (matmul: atol scaled by sqrt(K), since
its inputs are unit normal and the kernel sums in a different order than torch).
Each kernel must also write exactly its tiles: elements outside them keep their old value.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsc.core.errors import WscError
from wsc.runtime import jit
from wsc.runtime.lowering import compile_kernel, supported_ops
from wsc.runtime.reference import run_reference

ATOL, RTOL = 1e-5, 1e-4
SENTINEL = np.float32(1234.5)
rng = np.random.default_rng(1234)


def tilings(rows: int, cols: int) -> dict[str, np.ndarray]:
    """Tile tables that each cover the [rows, cols] output exactly once."""
    out = {"one": [(0, rows, 0, cols)]}
    out["1x3"] = [(r, r + 1, c, min(c + 3, cols)) for r in range(rows) for c in range(0, cols, 3)]
    out["1x8_col_major"] = [(r, r + 1, c, min(c + 8, cols)) for c in range(0, cols, 8) for r in range(rows)]
    row_cuts = np.unique(np.r_[0, rng.integers(0, rows + 1, 2), rows])
    col_cuts = np.unique(np.r_[0, rng.integers(0, cols + 1, 3), cols])
    uneven = [
        (a, b, c, d)
        for a, b in zip(row_cuts[:-1], row_cuts[1:], strict=True)
        for c, d in zip(col_cuts[:-1], col_cuts[1:], strict=True)
    ]
    out["uneven_shuffled"] = [uneven[i] for i in rng.permutation(len(uneven))]
    return {k: np.array(v, dtype=np.int64).reshape(-1, 4) for k, v in out.items()}


def run_all_tilings(op, out_shape, inputs, attrs, expected, atol=ATOL, rtol=RTOL):
    kernel = compile_kernel(op, out_shape, [x.shape for x in inputs], attrs)
    cols = out_shape[-1]
    rows = math.prod(out_shape[:-1])
    for name, tiles in tilings(rows, cols).items():
        out = np.full(out_shape, SENTINEL, dtype=np.float32)
        kernel(out, inputs, tiles)
        np.testing.assert_allclose(out, expected, atol=atol, rtol=rtol, err_msg=f"tiling {name}")
        threaded = np.full(out_shape, SENTINEL, dtype=np.float32)
        kernel(threaded, inputs, tiles, threads=2)
        np.testing.assert_array_equal(threaded, out, err_msg=f"threads=2, tiling {name}")
    ref = np.full(out_shape, SENTINEL, dtype=np.float32)
    run_reference(op, ref, inputs, tilings(rows, cols)["uneven_shuffled"], attrs)
    np.testing.assert_allclose(ref, expected, atol=atol, rtol=rtol, err_msg="reference")
    return kernel


def randn(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x)


@pytest.mark.parametrize(
    "g,gb,m,n,k,bias",
    [
        (1, 1, 1, 1, 1, False),
        (1, 1, 7, 13, 29, True),
        (3, 3, 5, 11, 17, False),
        (2, 1, 4, 9, 64, True),
        (1, 1, 3, 37, 768, False),
    ],
)
def test_matmul(g, gb, m, n, k, bias):
    a, b = randn(g, m, k), randn(gb, n, k)
    inputs = [a, b] + ([randn(n)] if bias else [])
    expected = torch.matmul(t(a), t(b).transpose(1, 2))
    if bias:
        expected = expected + t(inputs[2])
    run_all_tilings("matmul", (g, m, n), inputs, {"bias": bias}, expected.numpy(), atol=ATOL * math.sqrt(k))


@pytest.mark.parametrize(
    "g,gb,m,n,k,bias,epilogue,approximate,residual",
    [
        (1, 1, 1, 1, 1, True, "gelu", "none", True),
        (1, 1, 7, 13, 29, True, "gelu", "none", False),
        (1, 1, 5, 11, 31, True, "gelu", "tanh", False),
        (1, 1, 3, 37, 97, True, "none", "none", True),
        (2, 1, 4, 9, 17, False, "none", "none", True),
        (3, 3, 2, 19, 23, True, "gelu", "tanh", True),
        (1, 1, 6, 41, 768, False, "gelu", "none", True),
    ],
)
def test_matmul_fused_epilogues(g, gb, m, n, k, bias, epilogue, approximate, residual):
    """residual + gelu(a @ b^T + bias), against the unfused torch ops, on odd (prime, 1) shapes."""
    a, b = randn(g, m, k), randn(gb, n, k)
    inputs = [a, b] + ([randn(n)] if bias else []) + ([randn(g, m, n)] if residual else [])
    expected = torch.matmul(t(a), t(b).transpose(1, 2))
    if bias:
        expected = expected + t(inputs[2])
    if epilogue == "gelu":
        expected = F.gelu(expected, approximate=approximate)
    if residual:
        expected = t(inputs[-1]) + expected
    attrs = {"bias": bias, "epilogue": epilogue, "approximate": approximate, "residual": residual}
    run_all_tilings("matmul", (g, m, n), inputs, attrs, expected.numpy(), atol=ATOL * math.sqrt(k))


def test_matmul_epilogue_checks():
    with pytest.raises(ValueError, match="epilogue"):
        compile_kernel("matmul", (1, 2, 3), [(1, 2, 4), (1, 3, 4)], {"epilogue": "relu"})
    with pytest.raises(ValueError, match="approximate"):
        compile_kernel("matmul", (1, 2, 3), [(1, 2, 4), (1, 3, 4)], {"epilogue": "gelu", "approximate": "x"})
    with pytest.raises(ValueError, match="residual has shape"):
        compile_kernel("matmul", (1, 2, 3), [(1, 2, 4), (1, 3, 4), (3,), (1, 3, 2)], {"bias": True, "residual": True})
    with pytest.raises(ValueError, match="inputs a, b, residual"):
        compile_kernel("matmul", (1, 2, 3), [(1, 2, 4), (1, 3, 4)], {"residual": True})


def test_vector_width_is_explicit():
    kernel = compile_kernel("add", (2, 3), [(2, 3), (1, 3)], {})
    bits = jit.vector_width_bits()
    assert bits in (128, 256, 512) and jit.vector_width_floats() == bits // 32
    assert f'"prefer-vector-width"="{bits}"' in kernel.optimized_ir


def test_matmul_is_vectorised():
    """The micro-kernel's multiply-adds are fused vector FMAs of the host's widest vectors."""
    kernel = compile_kernel("matmul", (1, 16, 64), [(1, 16, 768), (1, 64, 768)], {"bias": False})
    width = jit.vector_width_floats()
    assert re.search(rf"call <{width} x float> @llvm\.fma\.v{width}f32", kernel.optimized_ir)
    assert not re.search(r"fmul [a-z ]*float", kernel.optimized_ir), "no scalar or unfused multiply in the product"


@pytest.mark.parametrize("rows,d", [(1, 1), (5, 13), (7, 768)])
def test_layernorm(rows, d):
    x, w, b = randn(rows, d, scale=3.0) + 2.0, randn(d), randn(d)
    expected = F.layer_norm(t(x), (d,), t(w), t(b), eps=1e-5).numpy()
    run_all_tilings("layernorm", (rows, d), [x, w, b], {"eps": 1e-5}, expected)


@pytest.mark.parametrize(
    "rows,n,m,causal",
    [(1, 1, 1, False), (6, 11, 3, False), (6, 11, 3, True), (8, 8, 8, True), (10, 37, 5, True)],
)
def test_softmax(rows, n, m, causal):
    x, scale = randn(rows, n, scale=4.0), 0.37
    s = t(x) * scale
    if causal:
        j = torch.arange(n)[None, :]
        limit = (torch.arange(rows) % m)[:, None] + (n - m)
        s = s.masked_fill(j > limit, float("-inf"))
    expected = torch.softmax(s, dim=-1).numpy()
    attrs = {"scale": scale, "causal": causal, "group_rows": m}
    kernel = run_all_tilings("softmax", (rows, n), [x], attrs, expected)
    out = np.full((rows, n), SENTINEL, dtype=np.float32)
    kernel(out, [x], np.array([[0, rows, 0, n]], dtype=np.int64))
    assert np.all(out[expected == 0] == 0), "masked probabilities must be exactly 0"


@pytest.mark.parametrize(
    "g,m,extra_keys,d,causal",
    [
        (1, 1, 0, 5, False),
        (1, 1, 0, 16, True),
        (1, 1, 5, 5, True),
        (1, 4, 0, 16, False),
        (1, 4, 5, 5, True),
        (1, 7, 5, 16, False),
        (3, 1, 5, 16, True),
        (3, 4, 0, 5, True),
        (3, 4, 5, 16, True),
        (3, 7, 0, 16, True),
        (3, 7, 5, 5, False),
        (3, 7, 5, 16, True),
    ],
)
def test_attention(g, m, extra_keys, d, causal):
    """Against torch on [G, M, D] queries and [G, N, D] keys/values, N = M + extra_keys (a visible prefix)."""
    n, scale = m + extra_keys, 0.37
    q, k, v = randn(g, m, d, scale=2.0), randn(g, n, d, scale=2.0), randn(g, n, d)
    if causal and n == m:
        # torch's own causal rule, which for a square block is the kernel's.
        expected = F.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=True, scale=scale)
    else:
        visible = torch.arange(n)[None, :] <= torch.arange(m)[:, None] + (n - m) if causal else None
        expected = F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=visible, scale=scale)
    attrs = {"scale": scale, "causal": causal, "group_rows": m}
    kernel = run_all_tilings("attention", (g * m, d), [q.reshape(g * m, d), k, v], attrs,
                             expected.reshape(g * m, d).numpy())
    if causal and n == m:
        out = np.full((g * m, d), SENTINEL, dtype=np.float32)
        kernel(out, [q.reshape(g * m, d), k, v], np.array([[0, g * m, 0, d]], dtype=np.int64))
        np.testing.assert_array_equal(out[::m], v[:, 0], err_msg="a row seeing one key must copy its value")
    assert "0xfff0000000000000" not in kernel.ir.lower() and "0x7ff0000000000000" not in kernel.ir.lower()


def test_attention_checks():
    with pytest.raises(ValueError, match="causal needs N >= group_rows"):
        compile_kernel("attention", (8, 4), [(8, 4), (2, 3, 4), (2, 3, 4)], {"causal": True, "group_rows": 4})
    with pytest.raises(ValueError, match="v has shape"):
        compile_kernel("attention", (8, 4), [(8, 4), (2, 5, 4), (2, 6, 4)], {"group_rows": 4})
    with pytest.raises(ValueError, match="k has shape"):
        compile_kernel("attention", (8, 4), [(8, 4), (2, 5, 3), (2, 5, 3)], {"group_rows": 4})
    with pytest.raises(ValueError, match="q has shape"):
        compile_kernel("attention", (8, 4), [(8, 3), (2, 5, 4), (2, 5, 4)], {"group_rows": 4})
    with pytest.raises(ValueError, match="not 2 groups of group_rows=3"):
        compile_kernel("attention", (8, 4), [(8, 4), (2, 5, 4), (2, 5, 4)], {"group_rows": 3})
    with pytest.raises(ValueError, match="at least one key"):
        compile_kernel("attention", (8, 4), [(8, 4), (2, 0, 4), (2, 0, 4)], {"group_rows": 4})
    compile_kernel("attention", (8, 4), [(8, 4), (2, 4, 4), (2, 4, 4)], {"causal": True, "group_rows": 4})


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 17), (4, 300)])
def test_gelu(rows, cols, approximate):
    x = randn(rows, cols, scale=3.0)
    x.flat[: min(x.size, 4)] = [0.0, -12.0, 12.0, 1.0][: min(x.size, 4)]
    expected = F.gelu(t(x), approximate=approximate).numpy()
    run_all_tilings("gelu", (rows, cols), [x], {"approximate": approximate}, expected)


def test_erf_accuracy():
    x = np.linspace(-6, 6, 100_001, dtype=np.float32).reshape(1, -1)
    kernel = compile_kernel("gelu", x.shape, [x.shape], {"approximate": "none"})
    out = np.empty_like(x)
    kernel(out, [x], np.array([[0, 1, 0, x.shape[1]]], dtype=np.int64))
    exact = F.gelu(t(x).double()).numpy()
    assert np.max(np.abs(out - exact)) < 1e-6


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize(
    "rows,cols,rb,cb", [(1, 1, 1, 1), (6, 13, 6, 13), (6, 13, 1, 13), (6, 13, 3, 1), (4, 9, 1, 1)]
)
def test_elementwise(op, rows, cols, rb, cb):
    a, b = randn(rows, cols), randn(rb, cb)
    bt = t(b).repeat(rows // rb, cols // cb)
    expected = (t(a) + bt if op == "add" else t(a) * bt).numpy()
    run_all_tilings(op, (rows, cols), [a, b], {}, expected)


@pytest.mark.parametrize("tokens,vocab,d", [(1, 1, 1), (9, 31, 13)])
def test_embedding(tokens, vocab, d):
    w = randn(vocab, d)
    ids = rng.integers(0, vocab, tokens).astype(np.int64)
    expected = F.embedding(t(ids), t(w)).numpy()
    run_all_tilings("embedding", (tokens, d), [w, ids], {}, expected)


def test_embedding_rejects_bad_id():
    kernel = compile_kernel("embedding", (3, 4), [(5, 4), (3,)], {})
    out = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="id 5 at position 1"):
        kernel(out, [randn(5, 4), np.array([0, 5, 1], np.int64)], np.array([[0, 3, 0, 4]], np.int64))
    with pytest.raises(ValueError, match="id -1"):
        kernel(out, [randn(5, 4), np.array([0, 1, -1], np.int64)], np.array([[0, 3, 0, 4]], np.int64))


def test_writes_exactly_the_tiles():
    x, w, b = randn(5, 13), randn(13), randn(13)
    kernel = compile_kernel("layernorm", (5, 13), [(5, 13), (13,), (13,)], {"eps": 1e-5})
    tiles = np.array([[0, 2, 0, 13], [2, 5, 3, 7], [4, 5, 12, 13], [3, 3, 0, 13]], dtype=np.int64)
    out = np.full((5, 13), SENTINEL, dtype=np.float32)
    kernel(out, [x, w, b], tiles)
    covered = np.zeros((5, 13), dtype=bool)
    for r0, r1, c0, c1 in tiles:
        covered[r0:r1, c0:c1] = True
    assert np.all(out[~covered] == SENTINEL)
    expected = F.layer_norm(t(x), (13,), t(w), t(b)).numpy()
    np.testing.assert_allclose(out[covered], expected[covered], atol=ATOL, rtol=RTOL)


def test_matmul_writes_exactly_the_tiles():
    a, b = randn(2, 3, 5), randn(2, 11, 5)
    kernel = compile_kernel("matmul", (2, 3, 11), [(2, 3, 5), (2, 11, 5)], {"bias": False})
    tiles = np.array([[1, 4, 2, 9], [5, 6, 0, 1]], dtype=np.int64)
    out = np.full((2, 3, 11), SENTINEL, dtype=np.float32)
    kernel(out, [a, b], tiles)
    out2d = out.reshape(6, 11)
    covered = np.zeros((6, 11), dtype=bool)
    covered[1:4, 2:9] = covered[5:6, 0:1] = True
    assert np.all(out2d[~covered] == SENTINEL)
    expected = torch.matmul(t(a), t(b).transpose(1, 2)).numpy().reshape(6, 11)
    np.testing.assert_allclose(out2d[covered], expected[covered], atol=ATOL * 3, rtol=RTOL)


def test_argument_checks():
    kernel = compile_kernel("add", (4, 6), [(4, 6), (1, 6)], {})
    a, b = randn(4, 6), randn(1, 6)
    out = np.zeros((4, 6), np.float32)
    tiles = np.array([[0, 4, 0, 6]], np.int64)
    bad_calls = {
        "dtype": lambda: kernel(out, [a.astype(np.float64), b], tiles),
        "shape": lambda: kernel(out, [randn(4, 5), b], tiles),
        "out shape": lambda: kernel(np.zeros((4, 7), np.float32), [a, b], tiles),
        "contiguity": lambda: kernel(out, [np.asfortranarray(a), b], tiles),
        "input count": lambda: kernel(out, [a], tiles),
        "tile dtype": lambda: kernel(out, [a, b], tiles.astype(np.int32)),
        "tile shape": lambda: kernel(out, [a, b], tiles[:, :3].copy()),
        "tile rows": lambda: kernel(out, [a, b], np.array([[0, 5, 0, 6]], np.int64)),
        "tile cols": lambda: kernel(out, [a, b], np.array([[0, 4, 2, 1]], np.int64)),
        "negative": lambda: kernel(out, [a, b], np.array([[-1, 2, 0, 6]], np.int64)),
        "aliasing": lambda: kernel(a, [a, b], tiles),
    }
    for what, call in bad_calls.items():
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"no error for bad {what}")


def test_compile_time_checks_and_registry():
    assert set(supported_ops()) >= {
        "matmul", "layernorm", "softmax", "gelu", "add", "mul", "embedding", "attention", "relu"
    }
    with pytest.raises(WscError, match="no kernel for op 'conv'"):
        compile_kernel("conv", (1, 1), [(1, 1)], {})
    with pytest.raises(ValueError):
        compile_kernel("matmul", (1, 2, 3), [(1, 2, 4), (1, 3, 5)], {})
    with pytest.raises(ValueError):
        compile_kernel("add", (4, 6), [(4, 6), (3, 6)], {})
    with pytest.raises(ValueError):
        compile_kernel("softmax", (4, 3), [(4, 3)], {"causal": True, "group_rows": 4})
    k1 = compile_kernel("gelu", (2, 3), [(2, 3)], {"approximate": "tanh"})
    assert compile_kernel("gelu", [2, 3], [[2, 3]], {"approximate": "tanh"}) is k1
    assert compile_kernel("gelu", (2, 3), [(2, 3)], {"approximate": "none"}) is not k1
    assert "define void @" in k1.ir


def test_empty_tile_table_and_many_threads():
    kernel = compile_kernel("mul", (3, 5), [(3, 5), (3, 5)], {})
    a, b = randn(3, 5), randn(3, 5)
    out = np.full((3, 5), SENTINEL, dtype=np.float32)
    kernel(out, [a, b], np.zeros((0, 4), np.int64), threads=4)
    assert np.all(out == SENTINEL)
    kernel(out, [a, b], tilings(3, 5)["1x3"], threads=8)
    np.testing.assert_array_equal(out, a * b)


def test_prefer_vector_width_attribute(monkeypatch):
    kernel = compile_kernel("add", (2, 3), [(2, 3), (1, 3)], {})
    monkeypatch.setattr(jit, "host_has_avx512", lambda: True)
    _, handle = jit.compile_module(kernel.ir, "kernel")
    assert '"prefer-vector-width"="512"' in handle.optimized_ir
    with pytest.raises(ValueError):
        jit.compile_module(kernel.ir, "missing")
