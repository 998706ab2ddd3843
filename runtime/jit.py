"""JIT compilation of kernel IR for the host CPU.

This is the only module that touches `llvmlite.binding`, so the LLVM process state (native target
initialisation, target machines, execution engines) has a single owner and a single lock.
Kernels are compiled for the exact host CPU: they never leave the process, so there is no
portability to preserve and every vector extension the CPU has is fair game.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache

import llvmlite.binding as llvm
from llvmlite import ir

_lock = threading.Lock()


@lru_cache(maxsize=1)
def _init() -> None:
    # LLVM core initialisation is automatic in llvmlite >= 0.45; only the native target and its
    # asm printer must be registered before a target machine can emit code.
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


@lru_cache(maxsize=1)
def host_cpu() -> tuple[str, str]:
    """(cpu name, feature string) of the host, as LLVM names them."""
    _init()
    return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def host_has_avx512() -> bool:
    """True when the host CPU has AVX-512F, which makes 512-bit vectors worth preferring."""
    return "+avx512f" in host_cpu()[1].split(",")


def vector_width_floats() -> int:
    """Number of float32 lanes in the vectors the optimiser is expected to use on this host."""
    features = host_cpu()[1].split(",")
    if "+avx512f" in features:
        return 16
    if "+avx" in features:
        return 8
    return 4


def _target_machine() -> llvm.TargetMachine:
    # A fresh machine per engine: MCJIT takes ownership of the target machine it is given.
    cpu, features = host_cpu()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=cpu, features=features, opt=3, jit=True)


@dataclass
class JitHandle:
    """Keeps an execution engine (and so its machine code) alive; also records the optimised IR.

    Function addresses obtained from the engine are valid only while this object is referenced.
    """

    engine: llvm.ExecutionEngine
    optimized_ir: str


def _add_vector_width_attr(ir_text: str, fn_name: str) -> str:
    """Mark `fn_name` as preferring 512-bit vectors when the CPU has AVX-512.

    Without the attribute LLVM caps vectors at 256 bits on AVX-512 parts (to dodge frequency
    throttling), which halves the throughput of the compute-bound kernels here.
    llvmlite.ir cannot spell string attributes, so they are added to the textual IR.
    """
    if not host_has_avx512():
        return ir_text
    # llvmlite.ir puts the opening brace on its own line; hand-written IR keeps it on the define line.
    name = re.escape(fn_name)
    pattern = re.compile(r'^(define\b[^\n]*@"?' + name + r'"?\([^\n]*\)[^\n{]*?)(\s*\{)', re.M)
    out, n = pattern.subn(r'\1 "prefer-vector-width"="512"\2', ir_text, count=1)
    if n != 1:
        raise ValueError(f"function {fn_name!r} is not defined in the IR")
    return out


def optimize(mod: llvm.ModuleRef, tm: llvm.TargetMachine) -> None:
    """Run the O3 pipeline of the new pass manager with both vectorisers explicitly on."""
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)
    mpm = pb.getModulePassManager()
    mpm.run(mod, pb)


def compile_module(module: str | ir.Module, fn_name: str) -> tuple[int, JitHandle]:
    """Optimise and JIT-compile `module`, returning the address of `fn_name` and its keepalive.

    The caller must hold the returned handle for as long as it calls through the address.
    """
    _init()
    text = _add_vector_width_attr(str(module), fn_name)
    with _lock:
        tm = _target_machine()
        mod = llvm.parse_assembly(text)
        mod.triple = tm.triple
        mod.data_layout = str(tm.target_data)
        mod.verify()
        optimize(mod, tm)
        optimized = str(mod)
        engine = llvm.create_mcjit_compiler(mod, tm)
        engine.finalize_object()
        address = engine.get_function_address(fn_name)
    if not address:
        raise ValueError(f"function {fn_name!r} was not found after compilation")
    return address, JitHandle(engine=engine, optimized_ir=optimized)
