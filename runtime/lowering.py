"""Compiled kernels: `compile_kernel(op, out_shape, in_shapes, attrs)` and the Kernel object the executor calls.

The op table (`wsc/ops/`) writes each op's LLVM IR (the ABI is in `wsc.ops.codegen`); this module asks it for
the IR, has `wsc.runtime.jit` compile it for the host (through the on-disk kernel cache), and calls the machine
code over tile tables, checking every array it hands over, since the generated code trusts them completely.
Kernels are compiled once per process for each op, shapes and attrs.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np

from wsc import ops
from wsc.core.errors import WscError
from wsc.ops.codegen import KERNEL_NAME, HostCpu, KernelIR, KernelSpec
from wsc.runtime import jit, kernel_cache

_DTYPES: dict[str, np.dtype] = {"f32": np.dtype(np.float32), "i64": np.dtype(np.int64), "bool": np.dtype(np.bool_)}

# ---------------------------------------------------------------------------------------------
# Registry

_CACHE: dict[tuple, Kernel] = {}
_CACHE_LOCK = threading.Lock()
_REUSED = [0]  # compile_kernel calls answered by a kernel already compiled in this process


def supported_ops() -> list[str]:
    """The kernel ops of the table: each has a lowering."""
    return ops.kernel_names()


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    # Type tags keep 1, 1.0 and True apart: they can lower to different IR.
    return (type(value).__name__, value)


@lru_cache(maxsize=1)
def host_cpu() -> HostCpu:
    """The host as the lowerings see it: vector width and registers, FMA, and the data cache sizes."""
    caches = jit.data_cache_bytes()
    return HostCpu(jit.vector_width_bits(), jit.vector_registers(), jit.host_has_fma(), caches[1], caches[2],
                   caches[3])


def compile_kernel(
    op: str,
    out_shape: Sequence[int],
    in_shapes: Sequence[Sequence[int]],
    attrs: Mapping[str, Any] | None = None,
) -> Kernel:
    """The kernel for `op` specialised on these shapes and attrs, compiled once per process."""
    attrs = dict(attrs or {})
    spec = KernelSpec(
        op, tuple(int(d) for d in out_shape), tuple(tuple(int(d) for d in s) for s in in_shapes), attrs, host_cpu()
    )
    key = (op, spec.out_shape, spec.in_shapes, _freeze(attrs))
    with _CACHE_LOCK:
        kernel = _CACHE.get(key)
        if kernel is not None:
            _REUSED[0] += 1
        else:
            if op not in ops.kernel_names():
                raise WscError(f"no kernel for op {op!r}; supported ops: {', '.join(supported_ops())}")
            if any(d < 0 for d in spec.out_shape) or any(d < 0 for s in spec.in_shapes for d in s):
                raise ValueError(f"{op}: negative dimension in {spec.out_shape} / {spec.in_shapes}")
            kernel = Kernel(spec, ops.kernel(op).lower(spec))
            _CACHE[key] = kernel
    return kernel


def cache_stats() -> dict[str, int]:
    """How much compiled code was reused, for the compile report.

    `in_process`: kernel requests answered by a kernel this process had already compiled (e.g. every block
    of a GPT after the first); `hits` / `misses`: kernels loaded from / not found in the on-disk cache, so a
    second compile of the same model shows all hits; `stores`, `corrupt` (entries that failed their checksum
    and were recompiled), `errors` (cache I/O that failed; the compile went on without the cache).
    """
    with _CACHE_LOCK:
        reused = _REUSED[0]
    return {"in_process": reused, **kernel_cache.stats()}


# ---------------------------------------------------------------------------------------------
# Calling compiled kernels

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool, grown on demand: thread start-up would dominate small kernels."""
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < workers:
            old = _POOL
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsc-kernel")
            _POOL_SIZE = workers
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


class Kernel:
    """A JIT-compiled kernel; call it as `kernel(out, inputs, tiles, threads=1)`."""

    def __init__(self, spec: KernelSpec, kir: KernelIR):
        self.spec = spec
        self.ir = str(kir.module)
        self.input_dtypes = tuple(_DTYPES[k] for k in kir.input_kinds)
        self._check_inputs = kir.check_inputs
        address, self._keepalive = jit.compile_module(self.ir, KERNEL_NAME)
        argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p] + [ctypes.c_void_p] * len(
            self.input_dtypes
        )
        # CFUNCTYPE (not PYFUNCTYPE) releases the GIL for the duration of the call, which is what
        # lets tile chunks run in parallel on a thread pool.
        self._fn = ctypes.CFUNCTYPE(None, *argtypes)(address)
        self._split_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def optimized_ir(self) -> str:
        """The IR after the O3 pipeline, e.g. to check that loops were vectorised."""
        return self._keepalive.optimized_ir

    @property
    def from_cache(self) -> bool:
        """True when the machine code was loaded from the on-disk kernel cache rather than generated."""
        return self._keepalive.from_cache

    def __repr__(self) -> str:
        s = self.spec
        return f"Kernel({s.op}, out={s.out_shape}, in={s.in_shapes}, attrs={dict(s.attrs)})"

    def _check_array(self, what: str, arr: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{self.spec.op}: {what} must be a numpy array, got {type(arr).__name__}")
        if arr.dtype != dtype:
            raise ValueError(f"{self.spec.op}: {what} has dtype {arr.dtype}, expected {dtype}")
        if arr.shape != shape:
            raise ValueError(f"{self.spec.op}: {what} has shape {arr.shape}, expected {shape}")
        if not arr.flags.c_contiguous:
            raise ValueError(f"{self.spec.op}: {what} must be C-contiguous")

    def _pieces(self, tiles: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray]:
        """thread_pieces of a table, kept for the table object itself (held, so its id cannot be reused): the
        executor hands the same table to every run, and the split need not cost a call every time. A table edited in
        place after a threaded call keeps its old split (the executor never edits one; its bounds were checked
        when it was made, so the split can be stale but never outside the output)."""
        key = (id(tiles), threads)
        hit = self._split_cache.get(key)
        if hit is not None and hit[0] is tiles:
            return hit[1], hit[2]
        if len(self._split_cache) >= _SPLIT_CACHE_SIZE:
            self._split_cache.clear()
        split, bounds = thread_pieces(tiles, threads)
        self._split_cache[key] = (tiles, split, bounds)
        return split, bounds

    def check_tiles(self, tiles: Any) -> None:
        """Validate the tile table; the generated code trusts it completely."""
        op = self.spec.op
        if not isinstance(tiles, np.ndarray) or tiles.dtype != np.int64:
            raise ValueError(f"{op}: tiles must be an int64 numpy array")
        if tiles.ndim != 2 or tiles.shape[1] != 4 or not tiles.flags.c_contiguous:
            raise ValueError(f"{op}: tiles must be a C-contiguous [ntiles, 4] array, got shape {tiles.shape}")
        if tiles.shape[0] == 0:
            return
        r0, r1, c0, c1 = tiles.T
        rows, cols = self.spec.rows, self.spec.cols
        bad = (r0 < 0) | (r1 < r0) | (r1 > rows) | (c0 < 0) | (c1 < c0) | (c1 > cols)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{op}: tile {i} = {tiles[i].tolist()} is outside the output's 2-D view [{rows}, {cols}]"
            )

    def __call__(
        self, out: np.ndarray, inputs: Sequence[np.ndarray], tiles: np.ndarray, threads: int = 1
    ) -> None:
        spec = self.spec
        self._check_array("out", out, spec.out_shape, _DTYPES["f32"])
        if len(inputs) != len(spec.in_shapes):
            raise ValueError(f"{spec.op}: expected {len(spec.in_shapes)} inputs, got {len(inputs)}")
        for k, (arr, shape, dtype) in enumerate(zip(inputs, spec.in_shapes, self.input_dtypes, strict=True)):
            self._check_array(f"input {k}", arr, shape, dtype)
            # The kernel declares its pointers noalias; an overlapping output would be undefined.
            if np.may_share_memory(out, arr):
                raise ValueError(f"{spec.op}: out overlaps input {k}; kernels do not run in place")
        self.check_tiles(tiles)
        if self._check_inputs is not None:
            self._check_inputs(inputs)
        ntiles = tiles.shape[0]
        if ntiles == 0:
            return
        ptrs = [out.ctypes.data] + [a.ctypes.data for a in inputs]
        threads = max(1, int(threads))
        if threads == 1:
            self._fn(tiles.ctypes.data, ntiles, *ptrs)
            return
        tiles, bounds = self._pieces(tiles, threads)
        base, row_bytes = tiles.ctypes.data, tiles.strides[0]
        pieces = iter(range(len(bounds) - 1))  # next() on it is atomic under the GIL

        def worker() -> None:
            for i in pieces:
                self._fn(base + int(bounds[i]) * row_bytes, int(bounds[i + 1] - bounds[i]), *ptrs)

        workers = min(threads, len(bounds) - 1)
        futures = [_pool(workers - 1).submit(worker) for _ in range(workers - 1)] if workers > 1 else []
        worker()
        for f in futures:
            f.result()


_SPLIT_CACHE_SIZE = 256  # tile tables per kernel whose split is kept (a kernel serves every block of a model)
PIECES_PER_THREAD = 4  # pieces of about equal work per thread, taken in turn: a slow piece does not hold up the rest
PIECE_ROW_MULTIPLE = 8  # a split tile's pieces start at multiples of this where they can: blocked kernels see
# whole blocks


def thread_pieces(tiles: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """The tile table cut into runs of about equal work for `threads` threads: (tiles, bounds), piece i being
    tiles[bounds[i]:bounds[i + 1]].

    The work of a tile is its element count. A tile larger than a piece's share is first split along its rows
    (its columns when it has few rows), so that one tile (an attention over every head, a matmul the
    partitioner left whole) still keeps every thread busy. Splitting changes no value: each kernel computes an
    element from its position and its inputs alone, whatever tile it is in (the op table's contract;
    tests/test_kernels.py checks every kernel, threaded against not). Pieces are contiguous runs of the table,
    so tiles the executor ordered to share cached operands stay together.
    """
    area = (tiles[:, 1] - tiles[:, 0]) * (tiles[:, 3] - tiles[:, 2])
    total = int(area.sum())
    npieces = threads * PIECES_PER_THREAD
    share = max(1, -(-total // npieces))
    if (area > share).any():
        tiles = np.ascontiguousarray(np.concatenate([_split(tile, -(-int(a) // share)) for tile, a in
                                                     zip(tiles, area, strict=True)]))
        area = (tiles[:, 1] - tiles[:, 0]) * (tiles[:, 3] - tiles[:, 2])
    done = np.concatenate([[0], np.cumsum(area)])
    targets = total * np.arange(1, npieces) // npieces
    cuts = np.searchsorted(done, targets, side="left")
    bounds = np.unique(np.concatenate([[0], cuts, [len(tiles)]]))
    return tiles, bounds


def _split(tile: np.ndarray, n: int) -> np.ndarray:
    """`tile` cut into about n tiles along its rows, or along its columns when it has too few rows (a matmul
    of one token), each piece starting at a multiple of PIECE_ROW_MULTIPLE where it can."""
    r0, r1, c0, c1 = (int(v) for v in tile)
    axis = 0 if (r1 - r0) >= n * PIECE_ROW_MULTIPLE or (r1 - r0) >= (c1 - c0) else 2
    first, last = (r0, r1) if axis == 0 else (c0, c1)
    step = max(1, -(-(last - first) // n))
    if step > PIECE_ROW_MULTIPLE:
        step = -(-step // PIECE_ROW_MULTIPLE) * PIECE_ROW_MULTIPLE
    starts = np.arange(first, last, step)
    if len(starts) <= 1:
        return tile[None]
    parts = np.repeat(tile[None], len(starts), axis=0)
    parts[:, axis], parts[:, axis + 1] = starts, np.minimum(starts + step, last)
    return parts
