"""The blocked matmul kernel (wsc/ops/matmul.py) against torch on every shape class its blocking has an edge for.

Small blockings are forced so that tiny shapes cross every block boundary: several column blocks (nc), K blocks
(kc, with K not a multiple of it), row blocks (mc), and micro-tiles cut by the tile's edge in rows (mr) and in
columns (nr, lanes). Each output element is one chain of fp32 FMAs over k in order, so every blocking, vector
width and tiling must give the very same bits; torch is the reference within atol = 1e-5 * sqrt(K), as in
tests/test_kernels.py.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsc.ops.codegen import HostCpu, KernelSpec
from wsc.ops.matmul import Blocking, blocking, lower_matmul
from wsc.runtime import kernel_cache
from wsc.runtime.lowering import Kernel, compile_kernel, host_cpu

ATOL, RTOL = 1e-5, 1e-4
SENTINEL = np.float32(1234.5)
rng = np.random.default_rng(4321)

AVX2 = HostCpu(256, 16, True)
AVX512 = HostCpu(512, 32, True)
SSE = HostCpu(128, 16, True)


def small(host: HostCpu, kc: int, mc_panels: int, nc_panels: int) -> Blocking:
    """The host's micro-tile with blocks small enough for tiny shapes to cross them."""
    base = blocking(host, 1, 1, 1)
    return dataclasses.replace(base, kc=kc, mc=mc_panels * base.mr, nc=nc_panels * base.nr)


BLOCKINGS = {
    "host": None,
    "avx2-small": small(AVX2, kc=8, mc_panels=2, nc_panels=2),
    "avx512-small": small(AVX512, kc=12, mc_panels=1, nc_panels=1),
    "sse-small": small(SSE, kc=4, mc_panels=3, nc_panels=2),
    "avx2-kc1": small(AVX2, kc=1, mc_panels=1, nc_panels=1),
}


def kernel_with(spec: KernelSpec, blk: Blocking | None) -> Kernel:
    if blk is None:
        return compile_kernel(spec.op, spec.out_shape, spec.in_shapes, spec.attrs)
    return Kernel(spec, lower_matmul(spec, blk))


def randn(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def tile_tables(rows: int, cols: int) -> dict[str, np.ndarray]:
    """Tables covering [rows, cols] once: whole, odd sub-rectangles in a shuffled order, single columns (which
    the kernel merges back into runs), single elements in column-major order (which it cannot)."""
    row_cuts = np.unique(np.r_[0, rng.integers(0, rows + 1, 3), rows])
    col_cuts = np.unique(np.r_[0, rng.integers(0, cols + 1, 4), cols])
    odd = [(a, b, c, d) for a, b in zip(row_cuts[:-1], row_cuts[1:], strict=True)
           for c, d in zip(col_cuts[:-1], col_cuts[1:], strict=True)]
    out = {
        "whole": [(0, rows, 0, cols)],
        "odd_shuffled": [odd[i] for i in rng.permutation(len(odd))],
        "columns": [(0, rows, c, c + 1) for c in range(cols)],
        "elements_col_major": [(r, r + 1, c, c + 1) for c in range(cols) for r in range(rows)],
    }
    return {k: np.array(v, dtype=np.int64).reshape(-1, 4) for k, v in out.items()}


def expected_of(inputs: list[np.ndarray], attrs: dict, g: int, m: int, n: int) -> np.ndarray:
    a, b = torch.from_numpy(inputs[0]), torch.from_numpy(inputs[1])
    y = torch.matmul(a, b.transpose(1, 2))
    if attrs.get("bias"):
        y = y + torch.from_numpy(inputs[2])
    if attrs.get("epilogue", "none") == "gelu":
        y = F.gelu(y, approximate=attrs.get("approximate", "none"))
    if attrs.get("residual"):
        y = torch.from_numpy(inputs[-1]) + y
    return y.numpy().reshape(g, m, n)


# (G, Gb, M, N, K): 1s, primes, widths around the vector width (8) and the micro-tile (6 x 16, 12 x 32), K
# around the forced K blocks, a batched right operand whose batches a tile's rows straddle.
SHAPES = [
    (1, 1, 1, 1, 1),
    (1, 1, 1, 17, 3),
    (1, 1, 13, 1, 7),
    (1, 1, 7, 13, 29),
    (1, 1, 6, 16, 8),
    (1, 1, 12, 32, 24),
    (1, 1, 5, 9, 33),
    (1, 1, 19, 41, 37),
    (1, 1, 31, 47, 101),
    (2, 1, 7, 23, 13),
    (3, 3, 5, 11, 17),
    (2, 2, 13, 33, 9),
]


@pytest.mark.parametrize("g,gb,m,n,k", SHAPES, ids=[f"{g}x{gb}x{m}x{n}x{k}" for g, gb, m, n, k in SHAPES])
def test_every_blocking_and_tiling_gives_the_same_bits_close_to_torch(g, gb, m, n, k):
    a, b = randn(g, m, k), randn(gb, n, k)
    spec = KernelSpec("matmul", (g, m, n), ((g, m, k), (gb, n, k)), {"bias": False}, host_cpu())
    expected = expected_of([a, b], {}, g, m, n)
    first: np.ndarray | None = None
    for name, blk in BLOCKINGS.items():
        kernel = kernel_with(spec, blk)
        for tiling, tiles in tile_tables(g * m, n).items():
            for threads in (1, 2):
                out = np.full((g, m, n), SENTINEL, dtype=np.float32)
                kernel(out, [a, b], tiles, threads=threads)
                what = f"blocking {name}, tiling {tiling}, threads {threads}"
                np.testing.assert_allclose(out, expected, atol=ATOL * math.sqrt(k), rtol=RTOL, err_msg=what)
                if first is None:
                    first = out
                np.testing.assert_array_equal(out, first, err_msg=what)


EPILOGUES = [
    {"bias": True},
    {"bias": True, "epilogue": "gelu", "approximate": "none"},
    {"bias": False, "epilogue": "gelu", "approximate": "tanh", "residual": True},
    {"bias": True, "epilogue": "gelu", "approximate": "none", "residual": True},
    {"bias": True, "residual": True},
    {"bias": False, "residual": True},
]


@pytest.mark.parametrize("attrs", EPILOGUES, ids=lambda a: "+".join(k if v is True else str(v) for k, v in a.items()))
@pytest.mark.parametrize("g,gb,m,n,k", [(1, 1, 19, 41, 37), (3, 3, 5, 11, 17)])
def test_fused_epilogues_on_edges_and_k_blocks(g, gb, m, n, k, attrs):
    """The epilogue applies once, after the last K block, to exactly the tile's elements (on the two small blockings
    of 8 and 16 lanes, whose K blocks make the last one a run-time test: the epilogue code does not depend on the
    rest). The host's blocking takes both shapes' K in one block, where the last block is known when the kernel is
    generated: that path is tests/test_kernels.py's test_matmul_fused_epilogues (every epilogue, edge shapes)."""
    a, b = randn(g, m, k), randn(gb, n, k)
    inputs = [a, b] + ([randn(n)] if attrs.get("bias") else []) + ([randn(g, m, n)] if attrs.get("residual") else [])
    spec = KernelSpec("matmul", (g, m, n), tuple(x.shape for x in inputs), attrs, host_cpu())
    expected = expected_of(inputs, attrs, g, m, n)
    for name in ("avx2-small", "avx512-small"):
        kernel = kernel_with(spec, BLOCKINGS[name])
        for tiling, tiles in tile_tables(g * m, n).items():
            out = np.full((g, m, n), SENTINEL, dtype=np.float32)
            kernel(out, inputs, tiles)
            np.testing.assert_allclose(out, expected, atol=ATOL * math.sqrt(k), rtol=RTOL,
                                       err_msg=f"blocking {name}, tiling {tiling}")


def test_unfused_multiply_add_hosts_are_close_to_torch():
    """A host without FMA gets a multiply and an add (llvm.fma would be a libm call per lane)."""
    a, b = randn(1, 19, 37), randn(1, 41, 37)
    spec = KernelSpec("matmul", (1, 19, 41), ((1, 19, 37), (1, 41, 37)), {}, host_cpu())
    kir = lower_matmul(spec, dataclasses.replace(BLOCKINGS["avx2-small"], fma=False))
    assert "llvm.fma" not in str(kir.module)
    out = np.full((1, 19, 41), SENTINEL, dtype=np.float32)
    Kernel(spec, kir)(out, [a, b], tile_tables(19, 41)["odd_shuffled"])
    np.testing.assert_allclose(out, expected_of([a, b], {}, 1, 19, 41), atol=ATOL * math.sqrt(37), rtol=RTOL)


def test_writes_exactly_its_tiles_and_merges_only_adjacent_ones():
    """Tiles with a gap, an overlap, other rows or the wrong order between them are not merged; the elements
    no tile covers keep their value, whatever micro-tile edge they fall on."""
    m, n, k = 13, 40, 21
    a, b, bias, res = randn(1, m, k), randn(1, n, k), randn(n), randn(1, m, n)
    attrs = {"bias": True, "epilogue": "gelu", "approximate": "tanh", "residual": True}
    tables = [
        [(0, 13, 0, 3), (0, 13, 5, 9), (0, 13, 9, 17)],  # a gap at columns 3, 4
        [(2, 9, 0, 20), (2, 9, 17, 40)],  # an overlap
        [(0, 7, 1, 20), (0, 6, 20, 39), (7, 13, 1, 39)],  # the next tile has other rows
        [(3, 11, 20, 40), (3, 11, 0, 20)],  # adjacent, but in the other order
        [(5, 6, 7, 8), (0, 0, 0, 40), (12, 13, 39, 40), (4, 4, 3, 3)],  # single elements and empty tiles
    ]
    expected = expected_of([a, b, bias, res], attrs, 1, m, n)[0]
    for name, blk in BLOCKINGS.items():
        kernel = kernel_with(KernelSpec("matmul", (1, m, n), ((1, m, k), (1, n, k), (n,), (1, m, n)), attrs,
                                        host_cpu()), blk)
        for table in tables:
            tiles = np.array(table, dtype=np.int64)
            out = np.full((1, m, n), SENTINEL, dtype=np.float32)
            kernel(out, [a, b, bias, res], tiles)
            covered = np.zeros((m, n), dtype=bool)
            for r0, r1, c0, c1 in table:
                covered[r0:r1, c0:c1] = True
            assert np.all(out[0][~covered] == SENTINEL), f"blocking {name}, tiles {table}"
            np.testing.assert_allclose(out[0][covered], expected[covered], atol=ATOL * math.sqrt(k), rtol=RTOL,
                                       err_msg=f"blocking {name}, tiles {table}")


def test_blocking_follows_the_host():
    """The micro-tile fills the register file of the host's vector width; K blocks even out."""
    avx2, avx512 = blocking(AVX2, 128, 2048, 8192), blocking(AVX512, 128, 2048, 8192)
    assert (avx2.lanes, avx2.mr, avx2.nr) == (8, 6, 16)
    assert (avx512.lanes, avx512.mr, avx512.nr) == (16, 12, 32)
    assert avx2.mr * avx2.nr // avx2.lanes + 3 <= 16 and avx512.mr * avx512.nr // avx512.lanes + 3 <= 32
    for host in (AVX2, AVX512, SSE, dataclasses.replace(AVX2, l1d_bytes=48 * 1024, l2_bytes=2 << 20)):
        for rows, cols, k in [(1, 1, 1), (128, 768, 3072), (4096, 4096, 4096), (7, 13, 1031)]:
            blk = blocking(host, rows, cols, k)
            assert blk.kc <= max(1, k) and blk.kc * blk.nr * 4 <= max(host.l1d_bytes, 64 * blk.nr * 4)
            blocks = math.ceil(k / blk.kc)
            assert blocks * blk.kc - k < 4 * blocks, "K blocks are even"
            assert blk.mc % blk.mr == 0 and blk.nc % blk.nr == 0


def test_ir_and_cache_key_name_the_blocking():
    """Vector width and cache sizes reach the IR as constants, so kernels for different hosts never share a cache
    entry."""
    spec = KernelSpec("matmul", (1, 128, 768), ((1, 128, 3072), (1, 768, 3072)), {})
    hosts = [AVX2, AVX512, dataclasses.replace(AVX2, l1d_bytes=64 * 1024), dataclasses.replace(AVX2, fma=False)]
    texts = [str(lower_matmul(dataclasses.replace(spec, host=h)).module) for h in hosts]
    assert "<8 x float>" in texts[0] and "<16 x float>" in texts[1] and "<16 x float>" not in texts[0]
    keys = {kernel_cache.cache_key(text, "znver3", "+avx2") for text in texts}
    assert len(keys) == len(hosts)
