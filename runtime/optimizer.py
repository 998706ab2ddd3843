"""The optimizer the weight store applies in training: AdamW over fp32 master weights and moments on disk.

The master weights, the two moments and the gradient accumulation buffer are four safetensors files in one
folder, updated in place through memory maps a tensor at a time, so a step never holds the model (let alone
its optimizer state, three times its size) in RAM: MemoryX keeps the optimizer state off the wafer the same way.

The update is one JIT-compiled LLVM loop that reproduces torch.optim.AdamW's single-tensor (foreach=False)
fp32 arithmetic operation for operation: the scalars are derived in double precision exactly as torch derives
them in Python and rounded to fp32 once, and the element-wise steps fuse a multiply-add exactly where torch's
vectorised CPU kernels do (the lerp of the first moment and the addcmul of the second), and nowhere else. The
result is bit-identical to torch on a host whose torch kernels use FMA (the AVX2 and AVX-512 builds), which the
tests check.

A crash inside `apply` leaves the tensors it already updated updated while optimizer.json still counts the
previous step: restart from a checkpoint of the folder, not from a folder an interrupted step was writing.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import mmap
import os
import struct
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from llvmlite import ir

from wsc.core.errors import WscError
from wsc.ops.codegen import F32, F32P, I64, f32, for_range, load_at, store_at
from wsc.runtime import jit
from wsc.runtime.weight_store import write_store

MASTER, EXP_AVG, EXP_AVG_SQ, GRAD = "master", "exp_avg", "exp_avg_sq", "grad"
FILES = (MASTER, EXP_AVG, EXP_AVG_SQ, GRAD)
STATE_NAME = "optimizer.json"
FORMAT = 1
KERNEL = "adamw"
# Order of the fp32 scalars the kernel reads from its last argument.
COEFFS = ("decay", "lerp_weight", "beta2", "one_minus_beta2", "bias_correction2_sqrt", "eps", "neg_step_size")


@dataclass(frozen=True)
class AdamWConfig:
    """AdamW's hyper-parameters and the learning-rate schedule of the Cerebras-GPT model cards: a linear warm-up
    to the peak `lr`, then a cosine decay to `final_ratio` of it at `total_steps` (held there afterwards)."""

    lr: float = 6e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 0
    total_steps: int = 1
    final_ratio: float = 0.1

    def factor(self, step: int) -> float:
        """The learning rate of 1-based optimizer step `step` as a fraction of the peak.

        torch reproduces the schedule with `LambdaLR(opt, lambda s: cfg.factor(s + 1))`: LambdaLR calls its lambda
        with the number of scheduler.step() calls made so far, 0 before the first optimizer step, whereas `step`
        here counts the optimizer step about to run from 1. LambdaLR sets lr = base_lr * factor, which is why
        `lr_at` is computed as that same product rather than as lr_min + 0.5 * (lr - lr_min) * (...): the two are
        equal mathematically but not always in double rounding, and the point is that torch and wsc agree exactly.
        """
        if step < 1:
            raise WscError(f"optimizer steps count from 1, got step {step}")
        if step <= self.warmup_steps:
            return step / self.warmup_steps
        # The decay starts from the peak at the last warm-up step; without warm-up, step 1 is that peak (a run
        # of --lr X starts at X), and the final step is at final_ratio either way.
        peak_step = max(self.warmup_steps, 1)
        progress = min(1.0, (step - peak_step) / max(1, self.total_steps - peak_step))
        return self.final_ratio + 0.5 * (1.0 - self.final_ratio) * (1.0 + math.cos(math.pi * progress))

    def lr_at(self, step: int) -> float:
        """The learning rate of 1-based optimizer step `step`."""
        return self.lr * self.factor(step)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"betas": list(self.betas)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AdamWConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise WscError(f"{STATE_NAME} has unknown optimizer settings {', '.join(unknown)}")
        values = dict(data)
        if "betas" in values:
            b1, b2 = values["betas"]
            values["betas"] = (float(b1), float(b2))
        return cls(**values)


def step_coefficients(config: AdamWConfig, step: int) -> np.ndarray:
    """The fp32 scalars of 1-based step `step`, in COEFFS order, each derived in double precision and rounded to
    fp32 once, as torch's _single_tensor_adam derives a Python float and its CPU kernels round it to the tensor's
    dtype."""
    lr = config.lr_at(step)
    beta1, beta2 = config.betas
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    values = {
        "decay": 1 - lr * config.weight_decay,
        "lerp_weight": 1 - beta1,
        "beta2": beta2,
        "one_minus_beta2": 1 - beta2,
        "bias_correction2_sqrt": bias_correction2**0.5,
        "eps": config.eps,
        "neg_step_size": -step_size,
    }
    return np.array([values[k] for k in COEFFS], dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------
# The kernel


def adamw_module() -> ir.Module:
    """`void adamw(float *w, float *g, float *m, float *v, i64 n, const float *coeffs)`, updating w, m, v in place.

    No fast-math flag anywhere: without `contract` LLVM fuses nothing, so the only fused multiply-adds are the
    explicit llvm.fma calls standing where torch's kernels call vec::fmadd (or where GCC contracts its lerp and
    addcmul); without `reassoc` every operation keeps torch's order. The loop is a plain element loop: the
    pointers are noalias, so LLVM vectorises it without runtime overlap checks.
    """
    module = ir.Module(name="adamw")
    fnty = ir.FunctionType(ir.VoidType(), [F32P, F32P, F32P, F32P, I64, F32P])
    fn = ir.Function(module, fnty, name=KERNEL)
    for arg in fn.args:
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    w_ptr, g_ptr, m_ptr, v_ptr, n, c_ptr = fn.args
    fma, fabs, sqrt = (
        module.declare_intrinsic(name, [F32], ir.FunctionType(F32, [F32] * nargs))
        for name, nargs in (("llvm.fma", 3), ("llvm.fabs", 1), ("llvm.sqrt", 1))
    )
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    c = {name: b.load(b.gep(c_ptr, [ir.Constant(I64, k)], inbounds=True), name=name) for k, name in enumerate(COEFFS)}
    # torch's lerp(start, end, weight): start + weight * (end - start) for |weight| < 0.5, else
    # end - (end - start) * (1 - weight), which its vectorised form computes as fma(weight - 1, end - start, end).
    small = b.fcmp_ordered("<", b.call(fabs, [c["lerp_weight"]]), f32(0.5))
    lerp_coeff = b.select(small, c["lerp_weight"], b.fsub(c["lerp_weight"], f32(1.0)))
    with for_range(b, ir.Constant(I64, 0), n) as i:
        w, g, m, v = (load_at(b, p, i) for p in (w_ptr, g_ptr, m_ptr, v_ptr))
        w = b.fmul(w, c["decay"])  # param.mul_(1 - lr * weight_decay)
        m = b.call(fma, [lerp_coeff, b.fsub(g, m), b.select(small, m, g)])  # exp_avg.lerp_(grad, 1 - beta1)
        # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2): self + (value * t1) * t2, the add fused
        v = b.call(fma, [b.fmul(c["one_minus_beta2"], g), g, b.fmul(v, c["beta2"])])
        # denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        denom = b.fadd(b.fdiv(b.call(sqrt, [v]), c["bias_correction2_sqrt"]), c["eps"])
        # param.addcdiv_(exp_avg, denom, value=-step_size): self + (value * t1) / t2
        w = b.fadd(w, b.fdiv(b.fmul(c["neg_step_size"], m), denom))
        store_at(b, w, w_ptr, i)
        store_at(b, m, m_ptr, i)
        store_at(b, v, v_ptr, i)
    b.ret_void()
    return module


_FN_TYPE = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 4), ctypes.c_int64, ctypes.c_void_p)
# Elements per call on one thread: large enough that a call costs far more than handing it to the pool.
CHUNK = 1 << 18
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


@lru_cache(maxsize=1)
def _kernel() -> tuple[Any, jit.JitHandle]:
    address, handle = jit.compile_module(adamw_module(), KERNEL)
    return _FN_TYPE(address), handle  # the handle keeps the machine code alive as long as the cache holds it


def _threads() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="wsc-adamw")
        return _pool


def adamw(w: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, coeffs: np.ndarray) -> None:
    """One AdamW update of weight `w` with gradient `g` and moments `m`, `v`, in place (`g` is only read).

    All four must be C-contiguous float32 arrays of one shape and writable (but `g`); `coeffs` comes from
    `step_coefficients`. Large tensors are split into chunks that run in parallel: the update is element-wise,
    so the split changes no result.
    """
    arrays = (w, g, m, v)
    for name, a in zip("wgmv", arrays, strict=True):
        if a.dtype != np.float32 or not a.flags.c_contiguous or a.shape != w.shape:
            raise WscError(f"adamw: {name} must be a contiguous float32 array of shape {w.shape}")
    coeffs = np.ascontiguousarray(coeffs, dtype=np.float32)
    if coeffs.shape != (len(COEFFS),):
        raise WscError(f"adamw: coeffs must hold the {len(COEFFS)} values {', '.join(COEFFS)}")
    fn, _ = _kernel()
    n = w.size
    ptrs = [a.ctypes.data for a in arrays]
    cptr = coeffs.ctypes.data
    if n <= CHUNK:
        fn(*ptrs, n, cptr)
        return
    starts = range(0, n, CHUNK)
    futures = [
        _threads().submit(fn, ptrs[0] + 4 * s, ptrs[1] + 4 * s, ptrs[2] + 4 * s, ptrs[3] + 4 * s,
                          min(CHUNK, n - s), cptr)
        for s in starts
    ]
    for f in futures:
        f.result()


# ---------------------------------------------------------------------------------------------------------------
# The state on disk


class _Zeros(Mapping[str, np.ndarray]):
    """fp32 zeros of the given shapes, made only when write_store asks for one (calloc'd: no pages touched)."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]):
        self._shapes = shapes

    def __getitem__(self, key: str) -> np.ndarray:
        return np.zeros(self._shapes[key], dtype=np.float32)

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)


class _Float32(Mapping[str, np.ndarray]):
    """The weights converted to fp32 one at a time, as write_store writes them."""

    def __init__(self, weights: Mapping[str, Any]):
        self._weights = weights

    def __getitem__(self, key: str) -> np.ndarray:
        return np.asarray(self._weights[key], dtype=np.float32)

    def __iter__(self) -> Iterator[str]:
        return iter(self._weights)

    def __len__(self) -> int:
        return len(self._weights)


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _MappedFile:
    """One safetensors file of fp32 tensors, mapped read-write: a numpy view per tensor onto the file's pages."""

    def __init__(self, path: Path, keys: Sequence[str]):
        self.path = path
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        data_start = 8 + header_len
        size = path.stat().st_size
        self._mmap: mmap.mmap | None = None
        if size > data_start:
            with open(path, "r+b") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE)
        self.views: dict[str, np.ndarray] = {}
        for key in keys:
            entry = header.get(key)
            if entry is None:
                raise WscError(f"{path} holds no tensor {key}: the optimizer folder is inconsistent")
            if entry["dtype"] != "F32":
                raise WscError(f"{path}: tensor {key} is {entry['dtype']}, the optimizer keeps F32 only")
            begin, end = entry["data_offsets"]
            shape = tuple(entry["shape"])
            if end - begin != 4 * math.prod(shape) or data_start + end > size:
                raise WscError(f"{path}: tensor {key} has bad data offsets {begin}..{end}")
            if self._mmap is None or end == begin:
                self.views[key] = np.zeros(shape, dtype=np.float32)
            else:
                self.views[key] = np.frombuffer(
                    self._mmap, dtype=np.float32, count=(end - begin) // 4, offset=data_start + begin
                ).reshape(shape)

    def flush(self) -> None:
        if self._mmap is not None:
            self._mmap.flush()

    def close(self) -> None:
        self.views.clear()  # the views export the map's buffer: it cannot close while they live
        if self._mmap is not None:
            self._mmap.flush()
            try:
                self._mmap.close()
            except BufferError:
                pass  # a view still lives somewhere (a traceback's frame): the map closes when it is collected
            self._mmap = None


class OptimizerState:
    """An AdamW optimizer's state in a folder: master.safetensors (the fp32 weights a WeightStore streams the
    forward from), exp_avg.safetensors and exp_avg_sq.safetensors (the moments), grad.safetensors (the gradients
    accumulated since the last step) and optimizer.json (settings, steps done, tensor names)."""

    def __init__(self, folder: Path, config: AdamWConfig, step: int, keys: Sequence[str]):
        self.folder = Path(folder)
        self.config = config
        self.step = step
        self._keys = list(keys)
        self._files: dict[str, _MappedFile] = {}
        try:
            for name in FILES:
                self._files[name] = _MappedFile(self.folder / f"{name}.safetensors", self._keys)
        except BaseException:
            self.close()
            raise

    # -- creating and opening

    @classmethod
    def create(cls, folder: Path | str, weights: Mapping[str, Any], config: AdamWConfig) -> OptimizerState:
        """Start an optimizer at step 0 from `weights` (stored as fp32), with zero moments and gradients.

        optimizer.json is written last and is what `open` requires, so a crash part-way leaves a folder that
        does not open rather than one that opens half made; every file is written under a temporary name and
        renamed into place.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STATE_NAME).unlink(missing_ok=True)
        shapes: dict[str, tuple[int, ...]] = {}
        for key, value in weights.items():
            dtype = getattr(value, "dtype", None)
            if not (isinstance(dtype, np.dtype) and np.issubdtype(dtype, np.floating)):
                dtype = np.asarray(value).dtype
            if not np.issubdtype(dtype, np.floating):
                raise WscError(f"weight {key} is {dtype}: only floating-point tensors can be optimised")
            shapes[key] = tuple(np.shape(value))
        write_store(folder / f"{MASTER}.safetensors", _Float32(weights))
        for name in (EXP_AVG, EXP_AVG_SQ, GRAD):
            write_store(folder / f"{name}.safetensors", _Zeros(shapes))
        state = {"format": FORMAT, "config": config.to_json(), "step": 0, "keys": list(shapes)}
        _write_json_atomic(folder / STATE_NAME, state)
        return cls(folder, config, 0, list(shapes))

    @classmethod
    def open(cls, folder: Path | str) -> OptimizerState:
        folder = Path(folder)
        path = folder / STATE_NAME
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise WscError(f"{folder} holds no {STATE_NAME}: create the optimizer state first") from None
        except json.JSONDecodeError as e:
            raise WscError(f"{path} is not valid JSON ({e})") from None
        if state.get("format") != FORMAT:
            raise WscError(f"{path} has format {state.get('format')!r}, expected {FORMAT}")
        return cls(folder, AdamWConfig.from_json(state["config"]), int(state["step"]), state["keys"])

    def __enter__(self) -> OptimizerState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    # -- reading

    @property
    def master_path(self) -> Path:
        """The fp32 master weights, a safetensors file a WeightStore can stream the forward's weights from."""
        return self.folder / f"{MASTER}.safetensors"

    def keys(self) -> list[str]:
        return list(self._keys)

    def _view(self, name: str, key: str) -> np.ndarray:
        if not self._files:
            raise WscError(f"the optimizer state in {self.folder} is closed")
        views = self._files[name].views
        if key not in views:
            raise WscError(f"the optimizer state holds no tensor {key}")
        return views[key]

    def weight(self, key: str) -> np.ndarray:
        return self._view(MASTER, key).copy()

    def grad(self, key: str) -> np.ndarray:
        return self._view(GRAD, key).copy()

    def exp_avg(self, key: str) -> np.ndarray:
        return self._view(EXP_AVG, key).copy()

    def exp_avg_sq(self, key: str) -> np.ndarray:
        return self._view(EXP_AVG_SQ, key).copy()

    # -- updating

    def zero_grad(self) -> None:
        for key in self._keys:
            self._view(GRAD, key)[...] = 0
        self._files[GRAD].flush()

    def accumulate(self, key: str, grad: Any) -> None:
        """Add `grad` into the gradient buffer of `key` (in fp32): the gradients of several micro-batches, or a
        tied weight's several uses, add up until `apply`."""
        buf = self._view(GRAD, key)
        g = np.asarray(grad, dtype=np.float32)
        if g.shape != buf.shape:
            raise WscError(f"gradient of {key} has shape {list(g.shape)}, the weight has {list(buf.shape)}")
        np.add(buf, g, out=buf)

    def apply(self) -> float:
        """One AdamW step over every tensor, a tensor at a time; zeroes the gradients and returns the lr used."""
        step = self.step + 1
        coeffs = step_coefficients(self.config, step)
        for key in self._keys:
            adamw(self._view(MASTER, key), self._view(GRAD, key), self._view(EXP_AVG, key),
                  self._view(EXP_AVG_SQ, key), coeffs)
        for name in (MASTER, EXP_AVG, EXP_AVG_SQ):
            self._files[name].flush()
        self.step = step
        state = {"format": FORMAT, "config": self.config.to_json(), "step": step, "keys": self._keys}
        _write_json_atomic(self.folder / STATE_NAME, state)
        self.zero_grad()
        return self.config.lr_at(step)
