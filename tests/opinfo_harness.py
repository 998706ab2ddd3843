"""Conformance against torch's own OpInfo sample inputs: each sample of each op wsc covers, compiled and run
by wsc, against eager PyTorch. Shared by tests/test_opinfo.py (a seeded handful per op) and
benchmarks/opinfo.py (every sample).

A sample (`op.sample_inputs("cpu", torch.float32)`, generated with torch seeded) becomes a module whose
forward takes the sample's tensors as inputs (a tensor list such as cat's input is several of them) and calls
`op.op` with the rest of its arguments baked in. Its outcome is one of

- matched: wsc's verification passes, and the compiled outputs agree with eager by `compare` too;
- refused: wsc said why with a WscError (the first line is kept);
- failed: wrong numbers, or any other exception escaped (an internal error);
- skipped: the sample cannot be put to wsc at all (see `unexpressible`), with the reason.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

# The op_db entries wsc covers ("name" or "name.variant"), each with its family of ops (who owns its rules).
COVERED: dict[str, str] = {
    **dict.fromkeys([
        "neg", "exp", "log", "tanh", "sigmoid", "rsqrt", "sqrt", "abs", "reciprocal", "square", "sin", "cos",
        "erf", "nn.functional.silu", "nn.functional.softplus", "clamp", "pow", "nn.functional.gelu",
        "nn.functional.relu",
    ], "unary"),
    **dict.fromkeys([
        "add", "mul", "sub", "div.no_rounding_mode", "div.trunc_rounding", "div.floor_rounding", "maximum",
        "minimum", "where", "masked_fill", "tril", "triu",
    ], "binary"),
    **dict.fromkeys([
        # Not softmax.with_dtype nor log_softmax.with_dtype: each of their samples asks for a float64 result,
        # and wsc computes no float64.
        "sum", "mean", "amax", "amin", "var", "var.unbiased", "std", "std.unbiased", "softmax", "log_softmax",
        "nn.functional.layer_norm", "nn.functional.rms_norm",
    ], "reduction"),
    **dict.fromkeys([
        "cat", "stack", "expand", "repeat", "repeat_interleave", "index_select", "gather", "select", "narrow",
        "squeeze", "squeeze.multiple", "unsqueeze", "flatten", "transpose", "t", "permute", "T", "reshape",
        "view", "split", "split.list_args", "split_with_sizes", "chunk", "clone", "contiguous",
    ], "layout"),
    **dict.fromkeys([
        "matmul", "mm", "bmm", "bmm.triton_optimized", "addmm", "addmm.decomposed", "baddbmm",
        "nn.functional.linear", "einsum",
    ], "matmul"),
    **dict.fromkeys([
        "nn.functional.conv2d", "nn.functional.max_pool2d", "nn.functional.avg_pool2d",
        "nn.functional.adaptive_avg_pool2d", "nn.functional.batch_norm",
    ], "convolution"),
    "nn.functional.scaled_dot_product_attention": "attention",
    "nn.functional.embedding": "embedding",
}

# The cheapest compile that still runs every pass, the run and the verification: a small mesh, a placer that
# does not search, the plain router, and one share of the mesh (no retry at a smaller one).
TARGET = "mesh-16x16"
COMPILE_OPTIONS: dict[str, Any] = {"strategy": "row-major", "router": "xy", "time_limit": 0.1, "fill": 0.5}
SAMPLE_SEED = 0  # torch's seed when a sample list is made, so index i is the same sample in every run

# Samples of an op that cannot be put to wsc as they stand, with why: an eager result that is a draw from torch's
# generator (op_db seeds it inside op.op, so two eager runs agree, but no compiler can give those numbers), and
# a tuple output where the tuple is not the op's point (max_pool2d's indices beside its values).
UNEXPRESSIBLE_SAMPLES = {
    "nn.functional.scaled_dot_product_attention": (lambda sample: sample.kwargs.get("dropout_p", 0.0) > 0,
                                                   "random: dropout draws from torch's generator"),
    "nn.functional.max_pool2d": (lambda sample: bool(sample.kwargs.get("return_indices")),
                                 "a tuple output: the values and their indices (return_indices=True)"),
    # An output whose shape is the value of an input tensor: no static-shape program has it (wsc refuses it).
    "repeat_interleave": (lambda sample: any(isinstance(a, torch.Tensor)
                                             for a in (*sample.args, *sample.kwargs.values())),
                          "a shape from input values: the repeats are a tensor"),
    "narrow": (lambda sample: any(isinstance(a, torch.Tensor) for a in sample.args),
               "a shape from input values: the start is a tensor"),
}

INPUT_DTYPES = (torch.float32, torch.int64, torch.bool)
EPS32 = float(torch.finfo(torch.float32).eps)
# The kernels round differently from torch (their own summation order, exp and erf): each FLOP behind an output
# element may cost about one ulp of its size, plus this many for the last rounding and the transcendental
# functions' own error (see allowed_errors).
BASE_ULPS = 16


def key(op) -> str:
    """An OpInfo's name in COVERED: "name", or "name.variant"."""
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


def covered_ops(keys: Iterable[str] | None = None) -> dict[str, Any]:
    """The OpInfo of each covered key (all of COVERED, or `keys`), in COVERED's order. A key op_db does not
    hold is a KeyError naming it."""
    from torch.testing._internal.common_methods_invocations import op_db

    by_key = {key(op): op for op in op_db}
    wanted = list(COVERED) if keys is None else list(keys)
    missing = [k for k in wanted if k not in by_key]
    if missing:
        raise KeyError(f"op_db has no {', '.join(missing)}")
    return {k: by_key[k] for k in wanted}


def samples(op) -> list:
    """The op's float32 CPU samples, made with torch seeded: the same list, in the same order, every time."""
    state = torch.random.get_rng_state()
    torch.manual_seed(SAMPLE_SEED)
    try:
        return list(op.sample_inputs("cpu", torch.float32))
    finally:
        torch.random.set_rng_state(state)


class SampleModule(torch.nn.Module):
    """`op.op(sample.input, *sample.args, **sample.kwargs)` with the sample's tensors as the forward's inputs and
    everything else (dims, sizes, flags, an einsum equation) baked in."""

    def __init__(self, function, sample):
        super().__init__()
        self.function = function
        leaves, self.spec = tree_flatten((sample.input, sample.args, sample.kwargs))
        self.tensor_positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        self.baked = [None if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        self.tensors = [leaves[i] for i in self.tensor_positions]

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Fresh copies of the sample's tensors: an op that writes into an input (batch_norm's running
        statistics) cannot change what the next run sees."""
        return tuple(t.detach().clone() for t in self.tensors)

    def forward(self, *tensors: torch.Tensor):
        leaves = list(self.baked)
        for position, tensor in zip(self.tensor_positions, tensors, strict=True):
            leaves[position] = tensor
        input, args, kwargs = tree_unflatten(leaves, self.spec)
        return self.function(input, *args, **kwargs)


def _call_site() -> str:
    """Where wsc's refusals say a sample's op came from (as wsc.frontend.capture names a line): the same line
    for every sample, so tables leave it out."""
    lines, first = inspect.getsourcelines(SampleModule.forward)
    offset, code = next((i, line.strip()) for i, line in enumerate(lines) if "self.function(" in line)
    return f" at {os.path.basename(__file__)}:{first + offset}: {code}"


CALL_SITE = _call_site()


@dataclass
class Outcome:
    status: str  # matched, refused, failed or skipped
    message: str = ""  # the refusal's first line, what went wrong, or why the sample was skipped
    max_abs_err: float | None = None
    error_share: float | None = None  # the largest error as a share of what its element is allowed (compare)
    error: BaseException | None = field(default=None, repr=False)  # the refusal or the exception, for tests


def describe(sample) -> str:
    """A sample in one line: its tensors as dtype[shape], the rest as given."""

    def show(value):
        if isinstance(value, torch.Tensor):
            return f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}"
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(show(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}={show(v)}" for k, v in value.items()) + "}"
        return repr(value)

    parts = [show(sample.input), *(show(a) for a in sample.args), *(f"{k}={show(v)}" for k, v in sample.kwargs.items())]
    return ", ".join(parts)


def unexpressible(op, sample) -> str | None:
    """Why a sample cannot be put to wsc, as far as its inputs tell, or None: wsc takes CPU fp32, int64 and bool
    tensors, each holding at least one element; and see UNEXPRESSIBLE_SAMPLES."""
    unexpressible_when, why = UNEXPRESSIBLE_SAMPLES.get(key(op), (lambda _: False, ""))
    if unexpressible_when(sample):
        return why
    for tensor in SampleModule(op.op, sample).tensors:
        if tensor.device.type != "cpu" or tensor.dtype not in INPUT_DTYPES:
            return f"an input of dtype {str(tensor.dtype).removeprefix('torch.')} on {tensor.device.type}"
        if tensor.numel() == 0:
            return f"a zero-size input {list(tensor.shape)}"
        if tensor.is_sparse or tensor.is_quantized:
            return "a sparse or quantized input"
    return None


def eager_outputs(module: SampleModule, seed: int) -> Any:
    torch.manual_seed(seed)
    with torch.no_grad():
        return module(*module.example_inputs())


def output_problem(value: Any) -> str | None:
    """Why eager's output cannot be a wsc program's, or None: it must be tensors (one, or a tuple or list of
    them), none empty."""
    leaves = tree_leaves(value)
    if not leaves:
        return "it returns no tensor"
    others = sorted({type(leaf).__name__ for leaf in leaves if not isinstance(leaf, torch.Tensor)})
    if others:
        return f"its output holds a {', '.join(others)}, not only tensors"
    for leaf in leaves:
        if leaf.numel() == 0:
            return f"a zero-size output {list(leaf.shape)}"
    return None


def same(a: Any, b: Any) -> bool:
    """Two eager results are bit-for-bit equal (NaN equal to NaN)."""
    left, right = tree_leaves(a), tree_leaves(b)
    if len(left) != len(right):
        return False
    for x, y in zip(left, right, strict=True):
        if x.is_floating_point() and not torch.equal(x.isnan(), y.isnan()):
            return False
        if not torch.equal(x.nan_to_num(nan=0.0) if x.is_floating_point() else x,
                           y.nan_to_num(nan=0.0) if y.is_floating_point() else y):
            return False
    return True


def allowed_errors(want: torch.Tensor, scale: float, flops_per_element: float) -> torch.Tensor:
    """The error each element of `want` may carry: EPS32 x (BASE_ULPS + the FLOPs behind it) x (its own magnitude
    + the outputs' scale). The scale stands for the size of the terms an element was summed from, which a sum
    near zero (a cancellation) no longer shows."""
    return EPS32 * (BASE_ULPS + flops_per_element) * (want.abs() + scale)


def compare(got: Any, want: Any, flops: float) -> tuple[str | None, float, float]:
    """Whether wsc's outputs `got` are eager's `want`: (what differs or None, the largest absolute error, the
    largest error as a share of what its element is allowed: at most 1 agrees).

    Shapes, dtypes and NaN positions must agree, and infinities; integer and bool outputs must be equal; every
    other element within `allowed_errors`, with `flops` (the compiled program's) spread over the output
    elements and the outputs' scale the median finite magnitude, at least 1: the median, not the largest, so
    that pow's or exp's largest values leave the small ones held to their own size."""
    got_leaves, want_leaves = tree_leaves(got), tree_leaves(want)
    if len(got_leaves) != len(want_leaves):
        return f"{len(got_leaves)} outputs, eager has {len(want_leaves)}", math.nan, math.nan
    elements = sum(w.numel() for w in want_leaves)
    magnitudes = torch.cat([w.detach().double().abs().flatten() for w in want_leaves if w.is_floating_point()]
                           or [torch.ones(1, dtype=torch.float64)])
    finite = magnitudes[torch.isfinite(magnitudes)]
    scale = max(1.0, float(finite.median())) if finite.numel() else 1.0
    worst, share = 0.0, 0.0
    for index, (g, w) in enumerate(zip(got_leaves, want_leaves, strict=True)):
        name = f"output {index}" if len(want_leaves) > 1 else "the output"
        if not isinstance(g, torch.Tensor):
            return f"{name} is a {type(g).__name__}", math.nan, math.nan
        if tuple(g.shape) != tuple(w.shape):
            return f"{name} has shape {list(g.shape)}, eager {list(w.shape)}", math.nan, math.nan
        if g.dtype != w.dtype:
            return f"{name} is {g.dtype}, eager {w.dtype}", math.nan, math.nan
        g64, w64 = g.detach().double(), w.detach().double()
        if not w.is_floating_point():
            wrong = g64 != w64
            if wrong.any():
                at = tuple(int(i) for i in wrong.nonzero()[0])
                return (f"{name} differs at {int(wrong.sum())} of {w.numel()} places, first {list(at)}: "
                        f"{g64[at].item():g}, eager {w64[at].item():g}"), math.inf, math.inf
            continue
        if (g64.isnan() != w64.isnan()).any():
            return (f"{name} has NaN at {int((g64.isnan() & ~w64.isnan()).sum())} places where eager does not, "
                    f"and eager at {int((w64.isnan() & ~g64.isnan()).sum())} where wsc does not"), math.nan, math.nan
        infinite = w64.isinf() | g64.isinf()
        if (g64[infinite] != w64[infinite]).any():
            at = tuple(int(i) for i in (infinite & (g64 != w64)).nonzero()[0])
            return (f"{name} is {g64[at].item():g} at {list(at)}, eager {w64[at].item():g} (an infinity "
                    "differs)"), math.inf, math.inf
        usable = ~w64.isnan() & ~infinite
        if not usable.any():
            continue
        zero = torch.zeros((), dtype=torch.float64)
        error = (g64 - w64).abs().where(usable, zero)
        ratio = error / allowed_errors(w64.where(usable, zero), scale, flops / max(elements, 1))
        at = tuple(int(i) for i in (ratio == ratio.max()).nonzero()[0])
        worst, share = max(worst, float(error.max())), max(share, float(ratio[at]))
        if ratio[at] > 1:
            return (f"wrong numbers: {name} is {g64[at].item():.7g} at {list(at)}, eager {w64[at].item():.7g} "
                    f"(error {error[at].item():.3g}, {ratio[at].item():.3g} times what it may be)"), worst, share
    return None, worst, share


def internal_error(error: BaseException) -> str:
    """An exception that is not a refusal, in one line: its type, first line and the innermost frame of wsc."""
    text = str(error).strip().splitlines()
    root = error
    while root.__cause__ is not None:  # a pass's error wraps the one raised where it went wrong
        root = root.__cause__
    frames = [f for f in traceback.extract_tb(root.__traceback__)
              if re.search(r"/(wsc|passes|runtime|targets)/", f.filename)]
    where = ""
    if frames:
        frame = frames[-1]
        parts = frame.filename.replace(os.sep, "/").split("/")
        where = f" ({'/'.join(parts[-2:])}:{frame.lineno})"
    return f"internal error: {type(error).__name__}: {text[0] if text else ''}{where}"


def program_flops(compiled) -> float:
    return float(sum(node.flops for node in compiled.program.graph))


def run_sample(op, sample) -> Outcome:
    """Compile one sample with wsc, run it and hold it to eager PyTorch."""
    import wsc
    from wsc.core.errors import WscError
    from wsc.micro_batch import batch_size

    why = unexpressible(op, sample)
    if why:
        return Outcome("skipped", why)
    module = SampleModule(op.op, sample)
    try:
        want = eager_outputs(module, seed=0)
    except Exception as error:  # the sample is meant to fail in eager too: nothing to compare with
        return Outcome("skipped", f"eager PyTorch raises {type(error).__name__}")
    why = output_problem(want)
    if why:
        return Outcome("skipped", why)
    if not same(want, eager_outputs(module, seed=1)):
        return Outcome("skipped", "random: two eager runs differ")
    inputs = module.example_inputs()
    # One pass over the whole batch: the search for a faster micro-batch would compile it several times.
    options = dict(COMPILE_OPTIONS, micro_batch=batch_size(inputs))
    try:
        compiled = wsc.compile(module, inputs, TARGET, model_name=key(op), **options)
        got = compiled(*module.example_inputs())
    except WscError as error:
        return Outcome("refused", str(error).splitlines()[0] if str(error) else type(error).__name__, error=error)
    except Exception as error:
        return Outcome("failed", internal_error(error), error=error)
    problem, err, share = compare(got, want, program_flops(compiled))
    if problem:
        return Outcome("failed", problem, err, share)
    verification = compiled.report["verification"]
    if verification["status"] != "pass":
        return Outcome("failed", f"wsc's verification says {verification['status']} (max abs error "
                                 f"{verification.get('max_abs_err')}, allowed {verification.get('allowed_abs_err')}) "
                                 "though the outputs agree with eager", err, share)
    return Outcome("matched", "", err, share)


def short(message: str) -> str:
    """A refusal without the call site every sample shares."""
    return message.replace(CALL_SITE, "")
