"""Property tests over random op graphs: hypothesis draws small modules (a DAG of 2 to 6 ops from what wsc
compiles: linear with and without bias, matmul with a weight or between activations, add/sub/mul/div under
broadcasting, relu, gelu exact and tanh, tanh, sigmoid, exp of bounded values, layer_norm, softmax over the
last dim, sum/mean over a dim, reshape, permute, transpose) on shapes of batch 1 to 3 and dims 1 to 17, and
each is compiled for mesh-16x16 with the program's invariants checked after every pass (the pass manager's
`verify`), run through the JIT kernels, and held to verification's derived bound (tolerance 1) against eager
PyTorch, on the capture input, its shuffled copy and a fresh input.

Each module is deterministic: weights seeded, of std 1/sqrt(fan_in), inputs unit normal, layer norm's weight
and bias away from 1 and 0, exp only of tanh's output, and every divisor at least 0.5 from 0 (1.5 + tanh of an
activation, or a seeded weight or number of magnitude 0.5 to 2). A generated graph may be refused, in one line
naming the op; the refusals are counted and must stay a minority.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wsc
from wsc import pipeline
from wsc import verification as checks
from wsc.artifacts import program_json
from wsc.core.errors import WscError
from wsc.runtime.executor import Executor

SETTINGS = settings(deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

Shape = tuple[int, ...]
DIMS = st.one_of(st.sampled_from([1, 2, 3, 5, 7, 11, 13, 17]), st.integers(1, 17))
UNARY = ("relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "exp")
BINARY = ("add", "sub", "mul", "div")
# Names a one-line refusal may give the op by (its ATen name, or the kernel's).
OP_NAMES = ("linear", "addmm", "mm", "bmm", "matmul", "add", "sub", "mul", "div", "relu", "gelu", "tanh", "sigmoid",
            "exp", "layer_norm", "softmax", "sum", "mean", "reshape", "view", "permute", "transpose", "expand")
REFUSAL = re.compile(r"\b(aten\.)?(" + "|".join(OP_NAMES) + r")\b")


@dataclass(frozen=True)
class Op:
    """One op of a case: `kind`, the indices of the values it reads (inputs first, then each op's result) and its
    settings (sizes, dims, which operand is first; a weight's shape)."""

    kind: str
    args: tuple[int, ...]
    attrs: tuple = ()

    def get(self, key: str):
        return dict(self.attrs)[key]


@dataclass(frozen=True)
class Case:
    inputs: tuple[Shape, ...]
    ops: tuple[Op, ...]
    outputs: tuple[int, ...]
    seed: int


def away_from_zero(shape: Shape, g: torch.Generator) -> torch.Tensor:
    """Magnitudes 0.5 to 2, either sign."""
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    return sign * (0.5 + 1.5 * torch.rand(shape, generator=g))


class RandomGraph(torch.nn.Module):
    """The module of a Case: its weights made from the case's seed, its forward the ops in order."""

    def __init__(self, case: Case):
        super().__init__()
        self.case = case
        g = torch.Generator().manual_seed(case.seed)
        self.weights = torch.nn.ParameterList()
        self.slots: list[dict[str, int]] = []
        for op in case.ops:
            slot: dict[str, int] = {}
            for name, tensor in self.make_weights(op, g).items():
                slot[name] = len(self.weights)
                self.weights.append(torch.nn.Parameter(tensor, requires_grad=False))
            self.slots.append(slot)

    @staticmethod
    def make_weights(op: Op, g: torch.Generator) -> dict[str, torch.Tensor]:
        attrs = dict(op.attrs)
        if op.kind == "linear":
            out, fan_in = attrs["weight"]
            made = {"weight": torch.randn(out, fan_in, generator=g) * fan_in**-0.5}
            if attrs["bias"]:
                made["bias"] = torch.randn(out, generator=g) * fan_in**-0.5
            return made
        if op.kind == "matmul_weight":
            fan_in, out = attrs["weight"]
            return {"weight": torch.randn(fan_in, out, generator=g) * fan_in**-0.5}
        if op.kind == "layer_norm":
            shape = attrs["normalized"]
            made = {"weight": away_from_zero(shape, g) * 0.6}  # 0.3 to 1.2 in magnitude, sign either way: not 1
            if attrs["bias"]:
                made["bias"] = away_from_zero(shape, g) * 0.5
            return made
        if op.kind in BINARY and "other" in attrs:
            return {"other": away_from_zero(attrs["other"], g) if op.kind == "div" else
                    torch.randn(attrs["other"], generator=g)}
        return {}

    def forward(self, *inputs: torch.Tensor):
        values = list(inputs)
        for op, slot in zip(self.case.ops, self.slots, strict=True):
            w = {name: self.weights[i] for name, i in slot.items()}
            values.append(apply(op, [values[i] for i in op.args], w))
        outs = tuple(values[i] for i in self.case.outputs)
        return outs[0] if len(outs) == 1 else outs


def apply(op: Op, xs: list[torch.Tensor], w: dict[str, torch.Tensor]) -> torch.Tensor:
    a = xs[0]
    kind = op.kind
    if kind == "linear":
        return F.linear(a, w["weight"], w.get("bias"))
    if kind == "matmul_weight":
        return torch.matmul(a, w["weight"])
    if kind == "matmul":
        b = xs[1].transpose(-1, -2) if op.get("transposed") else xs[1]
        return torch.matmul(a, b) * a.shape[-1] ** -0.5
    if kind in BINARY:
        if "other" in w:
            other = w["other"]
        elif "scalar" in dict(op.attrs):
            other = op.get("scalar")
        else:
            other = xs[1]
            if kind == "div":
                other = 1.5 + torch.tanh(other)
        if kind == "div" and op.get("first"):
            # other / a: the divisor is the activation, so it is moved away from 0 the same way
            return other / (1.5 + torch.tanh(a))
        lhs, rhs = (other, a) if op.get("first") else (a, other)
        return {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}[kind](lhs, rhs)
    if kind == "relu":
        return torch.relu(a)
    if kind == "gelu":
        return F.gelu(a)
    if kind == "gelu_tanh":
        return F.gelu(a, approximate="tanh")
    if kind == "tanh":
        return torch.tanh(a)
    if kind == "sigmoid":
        return torch.sigmoid(a)
    if kind == "exp":
        return torch.exp(torch.tanh(a) * 2.0)
    if kind == "layer_norm":
        return F.layer_norm(a, op.get("normalized"), w["weight"], w.get("bias"))
    if kind == "softmax":
        return torch.softmax(a, dim=-1)
    if kind in ("sum", "mean"):
        reduce = torch.sum if kind == "sum" else torch.mean
        return reduce(a, dim=op.get("dim"), keepdim=op.get("keepdim"))
    if kind == "reshape":
        return a.reshape(op.get("shape"))
    if kind == "permute":
        return a.permute(op.get("dims"))
    if kind == "transpose":
        return a.transpose(*op.get("dims"))
    raise AssertionError(kind)


# ---------------------------------------------------------------------------------------------- the generator


def broadcast(a: Shape, b: Shape) -> Shape | None:
    try:
        return tuple(torch.broadcast_shapes(a, b))
    except RuntimeError:
        return None


def matmul_shape(a: Shape, b: Shape) -> Shape | None:
    if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
        return None
    batch = broadcast(a[:-2], b[:-2])
    return None if batch is None else (*batch, a[-2], b[-1])


ALL = ("linear", "matmul_weight", "matmul", *BINARY, *UNARY, "layer_norm", "softmax", "sum", "mean", "reshape",
       "permute", "transpose")
LAYOUT = ("reshape", "permute", "transpose")


@st.composite
def ops_of(draw, shapes: list[Shape], kinds: tuple[str, ...] = ALL) -> tuple[Op, Shape]:
    """One op of `kinds` reading the values of `shapes` (its operand drawn among them, the latest most likely),
    and its result's shape."""
    i = len(shapes) - 1 - draw(st.integers(0, len(shapes) - 1))
    s = shapes[i]
    kind = draw(st.sampled_from([k for k in kinds if len(s) >= 2 or k not in ("permute", "transpose", "matmul")]))
    if kind == "linear":
        out = draw(DIMS)
        return Op(kind, (i,), (("weight", (out, s[-1])), ("bias", draw(st.booleans())))), (*s[:-1], out)
    if kind == "matmul_weight":
        out = draw(DIMS)
        return Op(kind, (i,), (("weight", (s[-1], out)),)), (*s[:-1], out)
    if kind == "matmul":
        options = [(j, t) for j, b in enumerate(shapes) for t in (False, True)
                   if matmul_shape(s, (*b[:-2], b[-1], b[-2]) if t and len(b) >= 2 else b) is not None]
        if options:
            j, transposed = draw(st.sampled_from(options))
            b = shapes[j]
            b = (*b[:-2], b[-1], b[-2]) if transposed else b
            return Op(kind, (i, j), (("transposed", transposed),)), matmul_shape(s, b)
        kind = "add"  # nothing to multiply with: an add instead
    if kind in BINARY:
        first = draw(st.booleans())
        source = draw(st.sampled_from(["value", "weight", "scalar"]))
        if source == "value":
            partners = [j for j, b in enumerate(shapes) if broadcast(s, b) is not None]
            if not partners:
                return Op(kind, (i,), (("first", first), ("scalar", 1.25))), s
            j = draw(st.sampled_from(partners))
            return Op(kind, (i, j), (("first", first),)), broadcast(s, shapes[j])
        if source == "weight":
            # Each dim kept or made 1, some leading dims maybe dropped: every broadcast of a weight.
            drop = draw(st.integers(0, len(s) - 1))
            shape = tuple(d if draw(st.booleans()) else 1 for d in s[drop:])
            return Op(kind, (i,), (("first", first), ("other", shape))), broadcast(s, shape)
        magnitude = draw(st.sampled_from([0.5, 0.75, 1.25, 2.0]))
        return Op(kind, (i,), (("first", first), ("scalar", magnitude * draw(st.sampled_from([1, -1]))))), s
    if kind in UNARY or kind == "softmax":
        return Op(kind, (i,)), s
    if kind == "layer_norm":
        trailing = draw(st.integers(1, min(2, len(s))))
        normalized = s[-trailing:]
        return Op(kind, (i,), (("normalized", normalized), ("bias", draw(st.booleans())))), s
    if kind in ("sum", "mean"):
        if len(s) < 2:
            return Op("relu", (i,)), s
        dim = draw(st.integers(1, len(s) - 1))
        keepdim = draw(st.booleans())
        out = (*s[:dim], 1, *s[dim + 1:]) if keepdim else (*s[:dim], *s[dim + 1:])
        return Op(kind, (i,), (("dim", dim if draw(st.booleans()) else dim - len(s)), ("keepdim", keepdim))), out
    if kind == "reshape":
        splits = [(d, f) for d in range(1, len(s)) for f in range(2, s[d]) if s[d] % f == 0]
        choices = ["flatten"] if len(s) >= 3 else []
        if splits and len(s) < 4:
            choices.append("split")
        if len(s) < 4:
            choices.append("unsqueeze")
        how = draw(st.sampled_from(choices))
        if how == "flatten":
            d = draw(st.integers(1, len(s) - 2))
            shape = (*s[:d], s[d] * s[d + 1], *s[d + 2:])
        elif how == "split":
            d, f = draw(st.sampled_from(splits))
            shape = (*s[:d], f, s[d] // f, *s[d + 1:])
        else:
            d = draw(st.integers(1, len(s)))
            shape = (*s[:d], 1, *s[d:])
        spelled = tuple(-1 if k == 0 and draw(st.booleans()) else n for k, n in enumerate(shape))
        return Op(kind, (i,), (("shape", spelled),)), shape
    if kind == "permute":
        dims = tuple(draw(st.permutations(range(len(s)))))
        return Op(kind, (i,), (("dims", dims),)), tuple(s[d] for d in dims)
    if kind == "transpose":
        d0, d1 = draw(st.lists(st.integers(0, len(s) - 1), min_size=2, max_size=2, unique=True))
        out = list(s)
        out[d0], out[d1] = out[d1], out[d0]
        return Op(kind, (i,), (("dims", (d0, d1)),)), tuple(out)
    raise AssertionError(kind)


@st.composite
def cases(draw) -> Case:
    """An input [batch, dims...] of rank 2 or 3 (maybe a second one that broadcasts with it, which the first op
    then reads), 2 to 6 ops, and as outputs every result no op reads."""
    batch = draw(st.integers(1, 3))
    first = (batch, *draw(st.lists(DIMS, min_size=1, max_size=2)))
    inputs = [first]
    ops: list[Op] = []
    shapes: list[Shape] = [first]
    if draw(st.booleans()):
        second = (batch, *(d if draw(st.booleans()) else 1 for d in first[1:]))
        inputs.append(second)
        kind = draw(st.sampled_from(BINARY))
        ops.append(Op(kind, (0, 1), (("first", draw(st.booleans())),)))
        shapes += [second, broadcast(first, second)]
    for _ in range(draw(st.integers(2, 6)) - len(ops)):
        op, shape = draw(ops_of(shapes))
        ops.append(op)
        shapes.append(shape)
    read = {j for op in ops for j in op.args}
    outputs = tuple(j for j in range(len(inputs), len(shapes)) if j not in read)
    return Case(tuple(inputs), tuple(ops), outputs, draw(st.integers(0, 2**16)))


# ------------------------------------------------------------------------------------------------- the check


def inputs_of(case: Case, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g) for shape in case.inputs)


def compile_verified(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> wsc.api.CompiledModel:
    """wsc.compile with the program's invariants checked after every pass: the API does not take verify_ir, so
    the pipeline's compile_model it calls is given it."""
    calls: list[bool] = []
    original = pipeline.compile_model

    def with_ir_checks(*args, **kwargs):
        calls.append(True)
        return original(*args, **{**kwargs, "verify_ir": True})

    with mock.patch.object(pipeline, "compile_model", with_ir_checks):
        compiled = wsc.compile(module, inputs, "mesh-16x16", strategy="greedy", time_limit=0.2,
                               micro_batch=inputs[0].shape[0])
    assert calls, "wsc.compile no longer goes through pipeline.compile_model: the IR checks did not run"
    return compiled


def check_case(case: Case) -> bool:
    """Compile, run and verify the case's module; False when wsc refuses it (in one line naming the op)."""
    module = RandomGraph(case).eval()
    inputs = inputs_of(case, case.seed)
    with torch.no_grad():
        module(*inputs)  # the case itself is valid torch
    try:
        compiled = compile_verified(module, inputs)
    except WscError as error:
        message = str(error)
        assert "\n" not in message and REFUSAL.search(message), message
        return False
    verification = compiled.report["verification"]
    assert verification["status"] == "pass", verification
    assert verification["tolerance"] == 1.0
    assert all(entry["status"] == "pass" for entry in verification["inputs"]), verification["inputs"]
    # A fresh input, outside the two verification ran, held to the same bound.
    fresh = inputs_of(case, case.seed + 1)
    got = compiled.flat_outputs(*fresh)
    with torch.no_grad():
        want = module(*fresh)
    want = want if isinstance(want, tuple) else (want,)
    assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in want]
    result = checks.verify_outputs(compiled.program, [t.numpy() for t in want], [t.numpy() for t in got],
                                   tolerance=1.0, weights_dtype="fp32")
    assert result["status"] == "pass", result
    # program.json read back is the same program: the executor computes the same bits from it.
    with tempfile.TemporaryDirectory(prefix="wsc-property-") as tmp:
        compiled.save(tmp)
        loaded = program_json.load(tmp).program
    assert loaded.graph.summary() == compiled.program.graph.summary()
    again = Executor(loaded, compiled.executor().store).run([t.numpy() for t in fresh])
    assert all(np.array_equal(a, b.numpy(), equal_nan=True) for a, b in zip(again, got, strict=True))
    return True


@st.composite
def layout_cases(draw) -> Case:
    """An input of rank 3 or 4 through 2 to 4 reshapes, permutes and transposes (each of the latest value, so
    they compose: a permute of a permute, a reshape of a permute), then maybe one kernel of any kind."""
    shapes: list[Shape] = [(draw(st.integers(1, 3)), *draw(st.lists(DIMS, min_size=2, max_size=3)))]
    ops: list[Op] = []
    for _ in range(draw(st.integers(2, 4))):
        op, shape = draw(ops_of(shapes[-1:], LAYOUT))
        ops.append(Op(op.kind, (len(shapes) - 1,), op.attrs))
        shapes.append(shape)
    if draw(st.booleans()):
        op, shape = draw(ops_of(shapes[-1:], tuple(k for k in ALL if k not in ("matmul", *LAYOUT))))
        ops.append(Op(op.kind, tuple(len(shapes) - 1 for _ in op.args), op.attrs))  # a binary op reads it twice
        shapes.append(shape)
    return Case((shapes[0],), tuple(ops), (len(shapes) - 1,), draw(st.integers(0, 2**16)))


def held_to_a_majority(strategy: st.SearchStrategy[Case], examples: int) -> None:
    """Every example compiles and verifies or is refused in one line; most must compile (wsc refusing every
    graph would otherwise pass). The count is kept across the run's examples."""
    compiled: list[bool] = []

    @settings(SETTINGS, max_examples=examples)
    @given(strategy)
    def one(case: Case) -> None:
        compiled.append(check_case(case))

    one()
    assert compiled and sum(compiled) > len(compiled) / 2, f"only {sum(compiled)} of {len(compiled)} compiled"


def test_random_graphs_compile_run_and_verify() -> None:
    held_to_a_majority(cases(), 18)


def test_chains_of_layout_ops_compile_run_and_verify() -> None:
    held_to_a_majority(layout_cases(), 6)



# ------------------------------------------------------------------------------------------------ regressions

LINEAR = Op("linear", (0,), (("weight", (1, 2)), ("bias", False)))


@pytest.mark.parametrize("ops", [
    (LINEAR, Op("add", (1, 1), (("first", False),))),  # y = x @ W.T; y + y
    (LINEAR, Op("gelu", (1,)), Op("add", (2, 2), (("first", False),))),  # g = gelu(x @ W.T); g + g
], ids=["linear", "linear-gelu"])
def test_add_of_a_matmul_to_itself(ops: tuple[Op, ...]) -> None:
    """y + y stays an add: fusing it as y's residual would read the value the fusion removes."""
    assert check_case(Case(((1, 2),), ops, (len(ops),), seed=0))


def test_the_add_of_a_matmul_and_something_else_fuses_and_verifies() -> None:
    """The cases next to the one above: the matmul's value added to another value made from it fuses."""
    for ops in [(LINEAR, Op("gelu", (1,)), Op("add", (1, 2), (("first", False),))),
                (LINEAR, Op("relu", (1,)), Op("add", (2, 1), (("first", False),))),
                (LINEAR, Op("mul", (1, 1), (("first", False),)))]:
        assert check_case(Case(((2, 2),), ops, (len(ops),), seed=0))
