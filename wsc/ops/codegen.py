"""The LLVM IR every kernel lowering is written with: the kernel ABI, loops, and small helpers.

Every kernel shares one ABI so the executor can call any op the same way:

    void kernel(const int64 *tiles, int64 ntiles, float *out, <input pointers in order>)

`tiles` holds `ntiles` rows (r0, r1, c0, c1), half-open ranges over the output viewed as 2-D
[rows, cols] (cols = last dim, rows = product of the others). A kernel writes exactly the elements
inside its tiles, which is what lets the executor hand disjoint tile sets to different simulated
cores (or host threads) writing into one shared output buffer.

Shapes and attributes are baked into the IR as constants (one kernel per op + shapes + attrs) so
LLVM knows every trip count and stride, which is what makes the vectoriser effective.
This module builds IR with `llvmlite.ir` only; compiling it is the runtime's (`wsc.runtime.jit` is the one
user of `llvmlite.binding`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from llvmlite import ir

F32 = ir.FloatType()
I64 = ir.IntType(64)
I32 = ir.IntType(32)
I8P = ir.IntType(8).as_pointer()
F32P = F32.as_pointer()
I64P = I64.as_pointer()

KERNEL_NAME = "kernel"
# Flags for reductions: reassociation is what allows the vectoriser to split a sum or a dot product
# into vector lanes; contraction lets it fuse multiply-adds. No nnan/ninf: inputs may hold inf.
FAST = ("reassoc", "contract")
# Element-wise arithmetic only needs contraction (FMA); keeping IEEE order elsewhere keeps results
# close to torch's.
CONTRACT = ("contract",)

# An input kind per element type a kernel reads; "bool" is numpy's bool, one byte holding 0 or 1.
_IR_TYPES = {"f32": F32P, "i64": I64P, "bool": ir.IntType(8).as_pointer()}


@dataclass(frozen=True)
class HostCpu:
    """What a lowering may tailor its code to: the host's widest float vectors, how many vector registers it has,
    whether it fuses multiply-adds, and the data cache sizes one core sees (bytes). The runtime fills it in from
    the CPU it runs on; whatever a lowering derives from it ends up as constants in the IR, so the kernel cache
    (keyed by the IR text) tells kernels for different hosts apart."""

    vector_bits: int = 256
    vector_registers: int = 16
    fma: bool = True
    l1d_bytes: int = 32 * 1024
    l2_bytes: int = 256 * 1024
    l3_bytes: int = 8 * 1024 * 1024

    @property
    def lanes(self) -> int:
        """float32 lanes of one vector."""
        return max(4, self.vector_bits // 32)


@dataclass(frozen=True)
class KernelSpec:
    """What a kernel is specialised on: op name, output and input shapes, attributes, and the host CPU."""

    op: str
    out_shape: tuple[int, ...]
    in_shapes: tuple[tuple[int, ...], ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    host: HostCpu = HostCpu()

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

    def declare(self, name: str, ret: ir.Type, args: Sequence[ir.Type]) -> ir.Function:
        """The function `name` of the module, declared on first use (an intrinsic or a C library function)."""
        existing = self.module.globals.get(name)
        if isinstance(existing, ir.Function):
            return existing
        fn = ir.Function(self.module, ir.FunctionType(ret, list(args)), name=name)
        fn.attributes.add("nounwind")
        return fn

    def vector_fma(self, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
        """x * y + z on float32 vectors, rounded once (llvm.fma)."""
        vt = x.type
        return self.b.call(self.declare(f"llvm.fma.v{vt.count}f32", vt, [vt, vt, vt]), [x, y, z])

    def masked_load(self, ptr: ir.Value, mask: ir.Value) -> ir.Value:
        """The lanes of the float vector at `ptr` (float*) whose mask bit is set, 0 elsewhere; masked-off lanes
        are not read, so they may lie outside the array."""
        vt = vector(mask.type.count)
        fn = self.declare(f"llvm.masked.load.v{vt.count}f32.p0", vt, [vt.as_pointer(), I32, mask.type, vt])
        return self.b.call(fn, [self.b.bitcast(ptr, vt.as_pointer()), ir.Constant(I32, 4), mask, ir.Constant(vt, None)])

    def masked_store(self, value: ir.Value, ptr: ir.Value, mask: ir.Value) -> None:
        """Store the lanes of `value` whose mask bit is set at `ptr` (float*); the others are not written."""
        vt = value.type
        fn = self.declare(f"llvm.masked.store.v{vt.count}f32.p0", ir.VoidType(), [vt, vt.as_pointer(), I32, mask.type])
        self.b.call(fn, [value, self.b.bitcast(ptr, vt.as_pointer()), ir.Constant(I32, 4), mask])

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


@contextmanager
def while_loop(b: ir.IRBuilder, cond: Callable[[], ir.Value], name: str = "while") -> Iterator[None]:
    """`while cond(): body`; `cond` emits its test at the loop head, so it sees values the body stored."""
    head = b.append_basic_block(f"{name}.head")
    body = b.append_basic_block(f"{name}.body")
    end = b.append_basic_block(f"{name}.end")
    b.branch(head)
    b.position_at_end(head)
    b.cbranch(cond(), body, end)
    b.position_at_end(body)
    yield
    b.branch(head)
    b.position_at_end(end)


def ceil_div(b: ir.IRBuilder, x: ir.Value, d: int) -> ir.Value:
    """ceil(x / d) of a non-negative x."""
    return b.udiv(b.add(x, i64(d - 1)), i64(d))


def vector(lanes: int) -> ir.VectorType:
    return ir.VectorType(F32, lanes)


def splat(b: ir.IRBuilder, x: ir.Value, lanes: int) -> ir.Value:
    """The vector with `x` in each of its `lanes` lanes (a broadcast)."""
    one = b.insert_element(ir.Constant(ir.VectorType(x.type, lanes), None), x, ir.Constant(I32, 0))
    return b.shuffle_vector(one, ir.Constant(one.type, None), ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))


def load_vector(b: ir.IRBuilder, ptr: ir.Value, lanes: int, align: int = 4) -> ir.Value:
    """The `lanes` floats from `ptr` (float*) on, as one vector."""
    return b.load(b.bitcast(ptr, vector(lanes).as_pointer()), align=align)


def store_vector(b: ir.IRBuilder, value: ir.Value, ptr: ir.Value, align: int = 4) -> None:
    b.store(value, b.bitcast(ptr, value.type.as_pointer()), align=align)


def load_at(b: ir.IRBuilder, ptr: ir.Value, index: ir.Value) -> ir.Value:
    return b.load(b.gep(ptr, [index], inbounds=True))


def store_at(b: ir.IRBuilder, value: ir.Value, ptr: ir.Value, index: ir.Value) -> None:
    b.store(value, b.gep(ptr, [index], inbounds=True))


def horner(b: ir.IRBuilder, x: ir.Value, coeffs: tuple[float, ...]) -> ir.Value:
    """The polynomial sum(coeffs[i] * x**i) in float32 by Horner's rule, each step one fused multiply-add; x is a
    float32 or a vector of them (the coefficients are then splatted)."""
    acc = ir.Constant(x.type, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = b.fadd(b.fmul(acc, x, flags=CONTRACT), ir.Constant(x.type, c), flags=CONTRACT)
    return acc


# exp(r) = 1 + r + r^2 * P(r) on [-ln2 / 2, ln2 / 2]: the coefficients of Cephes' expf.
_EXP_POLY = (5.0000001201e-1, 1.6666665459e-1, 4.1665795894e-2, 8.3334519073e-3, 1.3981999507e-3,
             1.9875691500e-4)
# ln 2 in two parts: n * _LN2_HI is exact for |n| <= 2^15 (its 10 significant bits), so x - n * _LN2_HI has no
# rounding error and _LN2_LO carries the rest of ln 2 (to about 2^-35).
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_LOG2E = 1.4426950408889634
# Adding 1.5 * 2^23 rounds a float below 2^22 in magnitude to an integer n (to nearest, ties to even), which then
# sits in the low mantissa bits: bits(1.5 * 2^23 + n) = _ROUND_BITS + n.
_ROUND, _ROUND_BITS = 12582912.0, 0x4B400000
# exp below _EXP_MIN would be subnormal and is 0; above _EXP_MAX it overflows to inf. _EXP_MIN is the smallest
# float32 whose exp is at least the smallest normal float (2^-126), _EXP_MAX the largest whose exp is finite.
_EXP_MIN = -87.33654022216797
_EXP_MAX = 88.72283172607422
_F32_MAX = 3.4028234663852886e38


def emit_vector_exp(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """exp(x) of a float32 or of each lane of a float32 vector, without a libm call: about 25 operations.

    x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2 (ln2 in two parts, so r is exact but for the
    second part's product); exp(r) = 1 + r + r^2 P(r), Cephes' degree-5 P; 2^n is built from exponent bits as
    2^(n >> 1) * 2^(n - (n >> 1)), so that n from -126 to 128 (the whole finite range) needs no special case.
    The error is at most 1.02 ulp wherever exp(x) is a normal float: 1.0103 ulp at worst over every float32 x,
    against float64, on an FMA host (tests/test_attention_kernel.py sweeps the range densely). exp(0) is exactly
    1. Below -87.3365 (where exp would be subnormal, under 2^-126) the result is exactly 0, -inf included; above
    88.7228 it is +inf, +inf included; NaN gives NaN. No infinity appears as a constant: the overflow is
    x * FLT_MAX.
    """
    ty = x.type
    int_ty: ir.Type = ir.VectorType(I32, ty.count) if isinstance(ty, ir.VectorType) else I32

    def c(v: float) -> ir.Constant:
        return ir.Constant(ty, v)

    def ci(v: int) -> ir.Constant:
        return ir.Constant(int_ty, v)

    # The polynomial's argument is x clamped to the finite range (NaN to the top: its result is chosen below),
    # so that every step, the conversion to integer bits included, sees an ordinary number.
    xc = b.select(b.fcmp_ordered("<", x, c(_EXP_MAX)), x, c(_EXP_MAX))
    xc = b.select(b.fcmp_ordered(">", xc, c(_EXP_MIN)), xc, c(_EXP_MIN))
    shifted = b.fadd(b.fmul(xc, c(_LOG2E), flags=CONTRACT), c(_ROUND), flags=CONTRACT)
    n = b.fsub(shifted, c(_ROUND))
    r = b.fsub(xc, b.fmul(n, c(_LN2_HI), flags=CONTRACT), flags=CONTRACT)
    r = b.fsub(r, b.fmul(n, c(_LN2_LO), flags=CONTRACT), flags=CONTRACT)
    tail = b.fadd(b.fmul(horner(b, r, _EXP_POLY), b.fmul(r, r), flags=CONTRACT), r, flags=CONTRACT)
    exp_r = b.fadd(tail, c(1.0))
    n_int = b.sub(b.bitcast(shifted, int_ty), ci(_ROUND_BITS))
    half = b.ashr(n_int, ci(1))
    scales = [b.bitcast(b.shl(b.add(e, ci(127)), ci(23)), ty) for e in (half, b.sub(n_int, half))]
    y = b.fmul(b.fmul(exp_r, scales[0]), scales[1])
    y = b.select(b.fcmp_ordered("<", x, c(_EXP_MIN)), c(0.0), y)
    return b.select(b.fcmp_unordered(">", x, c(_EXP_MAX)), b.fmul(x, c(_F32_MAX)), y)


def lower_unary(spec: KernelSpec, emit: Callable[[KernelBuilder, ir.Value], ir.Value]) -> KernelIR:
    """An elementwise kernel of one input: out[r, c] = emit(x[r, c]) over the tiles (gelu, relu, ...)."""
    if len(spec.out_shape) != 2 or spec.in_shapes != (spec.out_shape,):
        raise ValueError(f"{spec.op}: expected out [R, C] and one input of the same shape; got {spec}")
    cols = spec.out_shape[1]
    kb = KernelBuilder(spec, ["f32"])
    b = kb.b
    (x_ptr,) = kb.inputs
    with kb.for_tiles() as (r0, r1, c0, c1):
        with for_range(b, r0, r1, "r") as r:
            base = b.mul(r, i64(cols))
            with for_range(b, c0, c1, "c") as c:
                idx = b.add(base, c)
                store_at(b, emit(kb, load_at(b, x_ptr, idx)), kb.out, idx)
    return kb.finish()


class _LoopID(ir.values.MDValue):
    """A loop's `!llvm.loop` node: distinct, its first operand itself, then its hints. llvmlite.ir's MDValue is
    uniqued and hashes its operands, so a node that holds itself needs its own class."""

    def __init__(self, module: ir.Module, hints: Sequence[ir.values.MDValue]):
        super().__init__(module, (), name=str(len(module.metadata)))
        self.operands = (self, *hints)

    def descr(self, buf: list[str]) -> None:
        refs = ", ".join(op.get_reference() for op in self.operands)
        buf += (f"distinct !{{ {refs} }}", "\n")

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other


def no_vectorize(module: ir.Module, carried: ir.Value) -> None:
    """Tell the loop vectorizer to leave alone the loop that carries `carried` (a value `loop` returned).

    For the loops LLVM's two cost models (VPlan's and the legacy one) price differently, the assertion that
    they agree aborts the whole process (LLVM as llvmlite 0.50 ships it: "VPlan cost model and legacy cost
    model disagreed"), and which loops those are depends on the host CPU's cost tables: a kernel marks the
    loops it knows to be short, which gain nothing from vectors anyway."""
    assert isinstance(carried, ir.PhiInstr)
    latch = carried.incomings[-1][1]
    hint = module.add_metadata([ir.MetaDataString(module, "llvm.loop.vectorize.enable"), ir.IntType(1)(0)])
    latch.terminator.set_metadata("llvm.loop", _LoopID(module, [hint]))
