"""JIT compilation of kernel IR for the host CPU.

This is the only module that touches `llvmlite.binding`, so the LLVM process state (native target
initialisation, target machines, execution engines) has a single owner and a single lock.
Kernels are compiled for the exact host CPU: they never leave the process, so there is no
portability to preserve and every vector extension the CPU has is fair game.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from pathlib import Path

import llvmlite.binding as llvm
from llvmlite import ir

from wsc.runtime import kernel_cache

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


def vector_width_bits() -> int:
    """Widest float vector the host executes natively: 512 (AVX-512F), 256 (AVX) or 128 (SSE)."""
    if host_has_avx512():
        return 512
    if "+avx" in host_cpu()[1].split(","):
        return 256
    return 128


def vector_width_floats() -> int:
    """Number of float32 lanes in the vectors the optimiser is told to use on this host."""
    return vector_width_bits() // 32


def host_has_fma() -> bool:
    """True when the host fuses a vector multiply-add in one instruction; without it llvm.fma is a libm call."""
    return "+fma" in host_cpu()[1].split(",")


def vector_registers() -> int:
    """Architectural vector registers: 32 with AVX-512 (zmm0-31), 16 otherwise (ymm0-15 / xmm0-15)."""
    return 32 if host_has_avx512() else 16


# When the kernel cannot read the cache geometry (no sysfs, a container hiding it), block for a small core:
# too small a guess only costs a little reuse, too large a guess thrashes.
DEFAULT_CACHE_BYTES = {1: 32 * 1024, 2: 256 * 1024, 3: 8 * 1024 * 1024}


def _size_bytes(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


@lru_cache(maxsize=1)
def data_cache_bytes() -> dict[int, int]:
    """Size in bytes of the data (or unified) cache at levels 1, 2 and 3 that one core of the host sees.

    Read from Linux's sysfs; a level it does not describe takes DEFAULT_CACHE_BYTES. The matmul blocking is
    derived from these, and they reach the generated code as constants, so the kernel cache key (the IR
    text) changes with them.
    """
    sizes = dict(DEFAULT_CACHE_BYTES)
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = _size_bytes((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and level in sizes and size > 0:
            sizes[level] = size
    return sizes


def _target_machine() -> llvm.TargetMachine:
    # A fresh machine per engine: MCJIT takes ownership of the target machine it is given.
    cpu, features = host_cpu()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=cpu, features=features, opt=3, jit=True)


class JitHandle:
    """Keeps an execution engine (and so its machine code) alive.

    Function addresses obtained from the engine are valid only while this object is referenced.
    The optimised IR is produced on request only: a kernel loaded from the on-disk cache never ran the
    optimiser, and rerunning it just to keep a string nobody reads would cost what the cache saves.
    """

    def __init__(self, engine: llvm.ExecutionEngine, ir_text: str, from_cache: bool):
        self.engine = engine
        self.from_cache = from_cache
        self._ir_text = ir_text
        self._optimized: str | None = None

    @property
    def optimized_ir(self) -> str:
        if self._optimized is None:
            with _lock:
                mod, tm = _parse(self._ir_text)
                optimize(mod, tm)
                self._optimized = str(mod)
        return self._optimized


def _add_vector_width_attr(ir_text: str, fn_name: str) -> str:
    """State on `fn_name` the vector width the loop and SLP vectorisers should aim for.

    Left implicit, LLVM caps vectors at 256 bits on AVX-512 parts (to dodge frequency throttling), which
    halves the throughput of the compute-bound kernels here; elsewhere its choice already matches the host,
    but saying it keeps the generated code independent of LLVM's per-CPU tuning defaults.
    llvmlite.ir cannot spell string attributes, so they are added to the textual IR.
    """
    # llvmlite.ir puts the opening brace on its own line; hand-written IR keeps it on the define line.
    name = re.escape(fn_name)
    pattern = re.compile(r'^(define\b[^\n]*@"?' + name + r'"?\([^\n]*\)[^\n{]*?)(\s*\{)', re.M)
    attr = f'"prefer-vector-width"="{vector_width_bits()}"'
    out, n = pattern.subn(r"\1 " + attr + r"\2", ir_text, count=1)
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


def _parse(text: str) -> tuple[llvm.ModuleRef, llvm.TargetMachine]:
    tm = _target_machine()
    mod = llvm.parse_assembly(text)
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    mod.verify()
    return mod, tm


def compile_module(module: str | ir.Module, fn_name: str, use_cache: bool = True) -> tuple[int, JitHandle]:
    """Optimise and JIT-compile `module`, returning the address of `fn_name` and its keepalive.

    The object code comes from the on-disk kernel cache when an entry for this exact IR, host CPU and
    llvmlite exists; otherwise the module is optimised and compiled to object code, which is stored. Both
    paths load the object the same way (MCJIT's add_object_file), so what the cache holds is exactly what a
    fresh compile runs. The caller must hold the returned handle for as long as it calls through the address.
    """
    _init()
    text = _add_vector_width_attr(str(module), fn_name)
    cpu, features = host_cpu()
    key = kernel_cache.cache_key(text, cpu, features) if use_cache else None
    with _lock:
        obj = kernel_cache.load(key) if key is not None else None
        from_cache = obj is not None
        if obj is None:
            mod, tm = _parse(text)
            optimize(mod, tm)
            obj = tm.emit_object(mod)
            if key is not None:
                kernel_cache.store(key, obj)
        # MCJIT needs a module to exist; the code itself comes from the object file.
        engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _target_machine())
        engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        engine.finalize_object()
        address = engine.get_function_address(fn_name)
    if not address:
        raise ValueError(f"function {fn_name!r} was not found after compilation")
    return address, JitHandle(engine, text, from_cache)
