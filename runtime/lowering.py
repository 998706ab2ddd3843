"""Registry of op lowerings and the compiled-kernel object the executor calls.

Every kernel shares one ABI so the executor can call any op the same way:

    void kernel(const int64 *tiles, int64 ntiles, float *out, <input pointers in order>)

`tiles` holds `ntiles` rows (r0, r1, c0, c1), half-open ranges over the output viewed as 2-D
[rows, cols] (cols = last dim, rows = product of the others). A kernel writes exactly the elements
inside its tiles, which is what lets the executor hand disjoint tile sets to different simulated
cores (or host threads) writing into one shared output buffer.

Shapes and attributes are baked into the IR as constants (one kernel per op + shapes + attrs) so
LLVM knows every trip count and stride, which is what makes the vectoriser effective.
"""

from __future__ import annotations

import ctypes
import importlib
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from llvmlite import ir

from wsc.errors import WscError
from wsc.runtime import jit, kernel_cache

F32 = ir.FloatType()
I64 = ir.IntType(64)
F32P = F32.as_pointer()
I64P = I64.as_pointer()

KERNEL_NAME = "kernel"
# Flags for reductions: reassociation is what allows the vectoriser to split a sum or a dot product
# into vector lanes; contraction lets it fuse multiply-adds. No nnan/ninf: inputs may hold inf.
FAST = ("reassoc", "contract")
# Element-wise arithmetic only needs contraction (FMA); keeping IEEE order elsewhere keeps results
# close to torch's.
CONTRACT = ("contract",)

_KERNEL_MODULES = ("matmul", "layernorm", "softmax", "gelu", "elementwise", "embedding", "attention")

_DTYPES: dict[str, np.dtype] = {"f32": np.dtype(np.float32), "i64": np.dtype(np.int64)}
_IR_TYPES = {"f32": F32P, "i64": I64P}


@dataclass(frozen=True)
class KernelSpec:
    """What a kernel is specialised on: op name, output and input shapes, and attributes."""

    op: str
    out_shape: tuple[int, ...]
    in_shapes: tuple[tuple[int, ...], ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def cols(self) -> int:
        return self.out_shape[-1] if self.out_shape else 1

    @property
    def rows(self) -> int:
        return math.prod(self.out_shape[:-1])


InputCheck = Callable[[Sequence[np.ndarray]], None]


@dataclass
class KernelIR:
    """A lowering's result: the IR module, the input dtypes, and an optional input-value check."""

    module: ir.Module
    input_kinds: tuple[str, ...]
    check_inputs: InputCheck | None = None


class KernelBuilder:
    """Creates the ABI function and gives lowerings loop helpers, so each lowering is just its body."""

    def __init__(self, spec: KernelSpec, input_kinds: Sequence[str]):
        self.spec = spec
        self.input_kinds = tuple(input_kinds)
        self.module = ir.Module(name=f"wsc_{spec.op}")
        arg_types = [I64P, I64, F32P] + [_IR_TYPES[k] for k in self.input_kinds]
        self.fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), arg_types), name=KERNEL_NAME)
        self.fn.attributes.add("nounwind")
        for arg in self.fn.args:
            if isinstance(arg.type, ir.PointerType):
                arg.add_attribute("noalias")
        self.tiles, self.ntiles, self.out = self.fn.args[:3]
        self.inputs = list(self.fn.args[3:])
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))

    def intrinsic(self, name: str, nargs: int = 1) -> ir.Function:
        """Declare a float32 overload of an LLVM intrinsic, e.g. intrinsic("llvm.exp") -> llvm.exp.f32."""
        fnty = ir.FunctionType(F32, [F32] * nargs)
        return self.module.declare_intrinsic(name, [F32], fnty)

    @contextmanager
    def for_tiles(self) -> Iterator[tuple[ir.Value, ir.Value, ir.Value, ir.Value]]:
        """Loop over the tile table, yielding (r0, r1, c0, c1) of each tile."""
        with for_range(self.b, i64(0), self.ntiles, "tile") as t:
            base = self.b.mul(t, i64(4))
            fields = []
            for k, name in enumerate(("r0", "r1", "c0", "c1")):
                ptr = self.b.gep(self.tiles, [self.b.add(base, i64(k))], inbounds=True)
                fields.append(self.b.load(ptr, name=name))
            yield fields[0], fields[1], fields[2], fields[3]

    def finish(self, check_inputs: InputCheck | None = None) -> KernelIR:
        self.b.ret_void()
        return KernelIR(self.module, self.input_kinds, check_inputs)


def i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def f32(v: float) -> ir.Constant:
    return ir.Constant(F32, v)


@dataclass
class _Loop:
    idx: ir.PhiInstr
    head: ir.Block
    end: ir.Block
    carried: list[ir.PhiInstr]


def _open_loop(
    b: ir.IRBuilder, start: ir.Value, stop: ir.Value, init: Sequence[ir.Value], name: str
) -> _Loop:
    pre = b.block
    head = b.append_basic_block(f"{name}.head")
    body = b.append_basic_block(f"{name}.body")
    end = b.append_basic_block(f"{name}.end")
    b.branch(head)
    b.position_at_end(head)
    idx = b.phi(I64, name=name)
    idx.add_incoming(start, pre)
    carried = []
    for k, v in enumerate(init):
        phi = b.phi(v.type, name=f"{name}.acc{k}")
        phi.add_incoming(v, pre)
        carried.append(phi)
    b.cbranch(b.icmp_signed("<", idx, stop), body, end)
    b.position_at_end(body)
    return _Loop(idx, head, end, carried)


def _close_loop(b: ir.IRBuilder, lp: _Loop, new_values: Sequence[ir.Value] = ()) -> list[ir.Value]:
    latch = b.block
    lp.idx.add_incoming(b.add(lp.idx, i64(1), flags=("nsw",)), latch)
    for phi, v in zip(lp.carried, new_values, strict=True):
        phi.add_incoming(v, latch)
    b.branch(lp.head)
    b.position_at_end(lp.end)
    return list(lp.carried)


@contextmanager
def for_range(b: ir.IRBuilder, start: ir.Value, stop: ir.Value, name: str = "i") -> Iterator[ir.Value]:
    """`for i in range(start, stop)` over signed int64; the builder ends up after the loop."""
    lp = _open_loop(b, start, stop, (), name)
    yield lp.idx
    _close_loop(b, lp)


def loop(
    b: ir.IRBuilder,
    start: ir.Value,
    stop: ir.Value,
    init: Sequence[ir.Value],
    body: Callable[[ir.Value, list[ir.Value]], Sequence[ir.Value]],
    name: str = "i",
) -> list[ir.Value]:
    """A counted loop carrying values (e.g. accumulators); returns their values after the loop.

    `body(i, carried)` emits one iteration and returns the next carried values.
    """
    lp = _open_loop(b, start, stop, init, name)
    return _close_loop(b, lp, body(lp.idx, list(lp.carried)))


def smin(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed("<", x, y), x, y)


def smax(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed(">", x, y), x, y)


def load_at(b: ir.IRBuilder, ptr: ir.Value, index: ir.Value) -> ir.Value:
    return b.load(b.gep(ptr, [index], inbounds=True))


def store_at(b: ir.IRBuilder, value: ir.Value, ptr: ir.Value, index: ir.Value) -> None:
    b.store(value, b.gep(ptr, [index], inbounds=True))


# ---------------------------------------------------------------------------------------------
# Registry

Lowering = Callable[[KernelSpec], KernelIR]
_LOWERINGS: dict[str, Lowering] = {}
_CACHE: dict[tuple, Kernel] = {}
_CACHE_LOCK = threading.Lock()
_REUSED = [0]  # compile_kernel calls answered by a kernel already compiled in this process


def register_lowering(op: str) -> Callable[[Lowering], Lowering]:
    """Decorator: `fn(spec) -> KernelIR` emits the IR for `op` specialised on `spec`."""

    def deco(fn: Lowering) -> Lowering:
        if op in _LOWERINGS and _LOWERINGS[op] is not fn:
            raise ValueError(f"a lowering for op {op!r} is already registered")
        _LOWERINGS[op] = fn
        return fn

    return deco


def supported_ops() -> list[str]:
    return sorted(_LOWERINGS)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    # Type tags keep 1, 1.0 and True apart: they can lower to different IR.
    return (type(value).__name__, value)


def compile_kernel(
    op: str,
    out_shape: Sequence[int],
    in_shapes: Sequence[Sequence[int]],
    attrs: Mapping[str, Any] | None = None,
) -> Kernel:
    """The kernel for `op` specialised on these shapes and attrs, compiled once per process."""
    attrs = dict(attrs or {})
    spec = KernelSpec(
        op, tuple(int(d) for d in out_shape), tuple(tuple(int(d) for d in s) for s in in_shapes), attrs
    )
    key = (op, spec.out_shape, spec.in_shapes, _freeze(attrs))
    with _CACHE_LOCK:
        kernel = _CACHE.get(key)
        if kernel is not None:
            _REUSED[0] += 1
        else:
            lowering = _LOWERINGS.get(op)
            if lowering is None:
                raise WscError(f"no kernel for op {op!r}; supported ops: {', '.join(supported_ops())}")
            if any(d < 0 for d in spec.out_shape) or any(d < 0 for s in spec.in_shapes for d in s):
                raise ValueError(f"{op}: negative dimension in {spec.out_shape} / {spec.in_shapes}")
            kernel = Kernel(spec, lowering(spec))
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


def reset_cache_stats() -> None:
    with _CACHE_LOCK:
        _REUSED[0] = 0
    kernel_cache.reset_stats()


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
        base = tiles.ctypes.data
        row_bytes = tiles.strides[0]
        threads = max(1, min(int(threads), ntiles))
        if threads == 1:
            self._fn(base, ntiles, *ptrs)
            return
        bounds = [ntiles * i // threads for i in range(threads + 1)]
        chunks = [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(threads)]
        pool = _pool(threads - 1)
        futures = [pool.submit(self._fn, base + s * row_bytes, n, *ptrs) for s, n in chunks[1:]]
        s, n = chunks[0]
        self._fn(base + s * row_bytes, n, *ptrs)
        for f in futures:
            f.result()


def _load_kernels() -> None:
    # Kernel modules import this module for register_lowering, so they are imported last, once this
    # module's names exist; importing a kernel module first also works (it finds this module
    # partially initialised but with everything it needs already defined).
    for name in _KERNEL_MODULES:
        importlib.import_module(f"wsc.runtime.kernels.{name}")


_load_kernels()
