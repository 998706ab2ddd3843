"""The unary element-wise ops: each kernel against torch under every tiling, special values included; their
accuracy where a naive form would lose it; their FLOP rows; their legalize rules through small models compiled
end to end; and the cases the rules refuse.

Tolerance: rtol 1e-6 (about 8 ulp of float32), against torch's float32 result and the float64 reference alike.
atol is the smallest normal float32, below which float32 holds fewer significant bits than rtol asks for
(exp(-100), softplus of a large negative, sigmoid where torch's exp(-x) overflows), except for silu, see there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_kernels import randn, run_all_tilings

import wsc
from wsc import ops
from wsc.core.errors import WscError
from wsc.core.ir import Graph, Node
from wsc.core.program import Cut
from wsc.runtime.lowering import compile_kernel

RTOL = 1e-6
TINY = float(np.finfo(np.float32).tiny)
# torch's silu is x / (1 + exp(-x)): for x < -88.7 exp(-x) overflows and it returns -0.0 where |silu| is up to
# 88.7 * exp(-88.7) < 3e-37, which the float64 reference keeps. The kernel computes torch's form.
SILU_ATOL = 3e-37
INF, NAN = math.inf, math.nan
SPECIALS = np.array([
    [NAN, INF, -INF, 0.0, -0.0, 1e-5, -1e-5, 100.0, -100.0, 1e-30, 89.0, -89.0, 0.625],
    [0.6249, 0.6251, 1.0, -1.0, 2.0, -2.0, 0.5, 20.0, -20.0, 1e4, -1e4, 3.4e38, -1.0 + 1e-6],
], dtype=np.float32)


def inputs(positive: bool = False, shape: tuple[int, int] = (7, 13)) -> np.ndarray:
    """Random values of both signs (or positive but for the special rows) with the special values in the first
    rows: NaN, ±inf, ±0, tiny, overflowing, and the points where emit_tanh changes form."""
    x = randn(*shape, scale=3.0)
    if positive:
        x = np.abs(x)
    rows, cols = min(shape[0], len(SPECIALS)), min(shape[1], SPECIALS.shape[1])
    x[:rows, :cols] = SPECIALS[:rows, :cols]
    return x


def check(op: str, attrs: dict, torch_fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray,
          atol: float = TINY) -> None:
    """The kernel and its reference against torch under every tiling, and the sign of each zero torch returns."""
    expected = torch_fn(torch.from_numpy(x)).numpy()
    kernel = run_all_tilings(op, x.shape, [x], attrs, expected, atol=atol, rtol=RTOL)
    out = np.empty_like(x)
    kernel(out, [x], np.array([[0, x.shape[0], 0, x.shape[1]]], np.int64))
    zeros = expected == 0
    np.testing.assert_array_equal(np.signbit(out[zeros]), np.signbit(expected[zeros]), err_msg=f"{op}: sign of 0")


FUNCTIONS = {  # op: (torch, inputs positive apart from the special rows)
    "neg": (torch.neg, False), "abs": (torch.abs, False), "exp": (torch.exp, False), "log": (torch.log, True),
    "log1p": (torch.log1p, False), "expm1": (torch.expm1, False), "sqrt": (torch.sqrt, True),
    "rsqrt": (torch.rsqrt, True), "reciprocal": (torch.reciprocal, False), "square": (torch.square, False),
    "sin": (torch.sin, False), "cos": (torch.cos, False), "tanh": (torch.tanh, False), "erf": (torch.erf, False),
    "sigmoid": (torch.sigmoid, False),
}


@pytest.mark.parametrize("op", sorted(FUNCTIONS))
def test_function_matches_torch_on_every_tiling(op: str) -> None:
    torch_fn, positive = FUNCTIONS[op]
    check(op, {}, torch_fn, inputs(positive))


@pytest.mark.parametrize("shape", [(1, 1), (1, 13), (3, 37)])
def test_functions_on_odd_shapes(shape: tuple[int, int]) -> None:
    for op in ("tanh", "log1p", "rsqrt"):
        torch_fn, positive = FUNCTIONS[op]
        check(op, {}, torch_fn, inputs(positive, shape))


def test_silu_matches_torch_and_is_never_nan_for_finite_input() -> None:
    x = inputs()
    x[2, :5] = [-88.0, -88.7, -95.0, -103.0, -1e30]
    check("silu", {}, F.silu, x, atol=SILU_ATOL)


@pytest.mark.parametrize("beta,threshold", [(1.0, 20.0), (2.0, 10.0), (0.5, 1.0), (-1.0, 3.0)])
def test_softplus(beta: float, threshold: float) -> None:
    x = inputs()
    x[2, :3] = [-50.0, threshold / beta, np.nextafter(np.float32(threshold / beta), np.float32(INF))]
    check("softplus", {"beta": beta, "threshold": threshold}, lambda t: F.softplus(t, beta, threshold), x)


@pytest.mark.parametrize("slope", [0.01, 0.2, -0.5])
def test_leaky_relu(slope: float) -> None:
    check("leaky_relu", {"negative_slope": slope}, lambda t: F.leaky_relu(t, slope), inputs())


@pytest.mark.parametrize("alpha,scale,input_scale", [(1.0, 1.0, 1.0), (1.3, 1.1, 0.7), (0.4, 1.0, 2.5)])
def test_elu(alpha: float, scale: float, input_scale: float) -> None:
    attrs = {"alpha": alpha, "scale": scale, "input_scale": input_scale}
    check("elu", attrs, lambda t: torch.ops.aten.elu(t, alpha, scale, input_scale), inputs())


@pytest.mark.parametrize("bounds", [{"min": -1.0, "max": 0.5}, {"min": 0.25}, {"max": -0.3}, {"min": 2.0, "max": -1.0},
                                    {"min": NAN}, {"min": -1.0, "max": NAN}, {"min": 0.0, "max": INF}])
def test_clamp(bounds: dict) -> None:
    check("clamp", bounds, lambda t: torch.clamp(t, bounds.get("min"), bounds.get("max")), inputs())


@pytest.mark.parametrize("exponent", [3.0, -3.0, 7.0, -2.0, 0.0, 2.5, -1.5, 1.0 / 3.0, 1e-3, 40.0])
def test_pow_of_tensor(exponent: float) -> None:
    check("pow", {"exponent": exponent}, lambda t: t ** exponent, inputs())


@pytest.mark.parametrize("base", [2.0, -2.0, 0.5, 0.0, 1.0, math.e, -0.5])
def test_pow_of_number(base: float) -> None:
    check("pow", {"base": base}, lambda t: base ** t, inputs())


# What torch defines at the edges, held exactly (bit for bit, the sign of zero included).
EDGES = [
    ("rsqrt", {}, 0.0, INF), ("rsqrt", {}, -0.0, -INF), ("rsqrt", {}, -1.0, NAN), ("log", {}, 0.0, -INF),
    ("log", {}, -1.0, NAN), ("sqrt", {}, -0.0, -0.0), ("sqrt", {}, -4.0, NAN), ("sigmoid", {}, -100.0, 0.0),
    ("sigmoid", {}, 100.0, 1.0), ("exp", {}, 89.0, INF), ("exp", {}, -INF, 0.0), ("tanh", {}, 30.0, 1.0),
    ("tanh", {}, -30.0, -1.0), ("tanh", {}, -INF, -1.0), ("tanh", {}, -0.0, -0.0), ("abs", {}, -0.0, 0.0),
    ("neg", {}, 0.0, -0.0), ("clamp", {"min": 0.0, "max": 1.0}, NAN, NAN), ("silu", {}, -100.0, -0.0),
    ("silu", {}, -1e30, -0.0), ("log1p", {}, -1.0, -INF), ("log1p", {}, INF, INF), ("log1p", {}, -0.0, -0.0),
    ("expm1", {}, INF, INF), ("expm1", {}, -INF, -1.0), ("expm1", {}, -0.0, -0.0), ("erf", {}, -INF, -1.0),
    ("pow", {"exponent": 3.0}, -2.0, -8.0), ("pow", {"exponent": 2.5}, -2.0, NAN), ("pow", {"exponent": 0.0}, NAN, 1.0),
    ("pow", {"base": 1.0}, NAN, 1.0), ("softplus", {"beta": 1.0, "threshold": 20.0}, -INF, 0.0),
]


@pytest.mark.parametrize("op,attrs,x,want", EDGES)
def test_edge_values_are_torchs(op: str, attrs: dict, x: float, want: float) -> None:
    kernel = compile_kernel(op, (1, 1), [(1, 1)], attrs)
    out = np.empty((1, 1), np.float32)
    kernel(out, [np.full((1, 1), x, np.float32)], np.array([[0, 1, 0, 1]], np.int64))
    np.testing.assert_array_equal(out, np.float32(want))
    if want == 0:
        assert np.signbit(out[0, 0]) == np.signbit(want), f"{op}({x}) = {out[0, 0]}, not {want}"


def run_kernel(op: str, x: np.ndarray, attrs: dict | None = None) -> np.ndarray:
    x = x.reshape(1, -1)
    kernel = compile_kernel(op, x.shape, [x.shape], attrs or {})
    out = np.empty_like(x)
    kernel(out, [x], np.array([[0, 1, 0, x.shape[1]]], np.int64))
    return out[0]


def ulps(got: np.ndarray, exact: np.ndarray) -> float:
    """The largest error in units of the last place of the exact value, rounded to float32."""
    return float(np.max(np.abs(got - exact) / np.spacing(np.abs(exact).astype(np.float32))))


TINY_TO_LARGE = np.concatenate([np.geomspace(1e-30, 10.0, 4001), -np.geomspace(1e-30, 10.0, 4001)]).astype(np.float32)


@pytest.mark.parametrize("op,exact", [("tanh", np.tanh), ("log1p", np.log1p), ("expm1", np.expm1)])
def test_relative_accuracy_near_zero(op: str, exact: Callable[[np.ndarray], np.ndarray]) -> None:
    """tanh(1e-5), log1p(1e-7), expm1(-1e-20): exact forms cancel near 0, these keep a few ulp relative."""
    x = TINY_TO_LARGE[TINY_TO_LARGE > -1] if op == "log1p" else TINY_TO_LARGE
    assert ulps(run_kernel(op, x), exact(x.astype(np.float64))) <= 3


def test_tanh_is_within_two_ulp_across_its_forms() -> None:
    x = np.linspace(-12.0, 12.0, 96_001, dtype=np.float32)
    assert ulps(run_kernel("tanh", x), np.tanh(x.astype(np.float64))) <= 2


def test_flop_rows() -> None:
    shape = (6, 10)
    rows = {"neg": 1, "abs": 1, "exp": 1, "tanh": 1, "rsqrt": 2, "sigmoid": 4, "silu": 4, "softplus": 5,
            "leaky_relu": 2, "elu": 4, "pow": 1}
    for op, per_element in rows.items():
        assert ops.kernel(op).flops(shape, [shape], {}) == 60 * per_element, op
    clamp = ops.kernel("clamp")
    assert clamp.flops(shape, [shape], {"min": 0.0}) == 60
    assert clamp.flops(shape, [shape], {"min": 0.0, "max": 1.0}) == 120
    graph = Graph()
    graph.add(Node("x", "input", (), shape, "float32"))
    node = graph.add(Node("s", "sigmoid", ("x",), shape, "float32"))
    assert ops.kernel("sigmoid").sram_bytes(graph, node, Cut(3, 2), 4) == 2 * (2 * 5) * 4  # input, output tiles


ATEN_RULES = [f"aten.{op}.default" for op in (
    "neg", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "reciprocal", "square", "sin", "cos", "tanh", "erf",
    "sigmoid", "silu", "abs", "clamp", "clamp_min", "clamp_max", "hardtanh", "relu6", "softplus", "leaky_relu",
    "elu", "selu", "celu")] + ["aten.pow.Tensor_Scalar", "aten.pow.Scalar"]


def test_wsc_ops_lists_the_rules_and_kernels(capsys: pytest.CaptureFixture[str]) -> None:
    from wsc.cli import main

    assert main(["ops"]) == 0
    listing = capsys.readouterr().out
    lines = {line.split()[0]: line for line in listing.splitlines() if line.startswith("  ")}
    for op in ATEN_RULES:
        assert "refuses: tensors other than float32" in lines[op], op
    for op in ("neg", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "reciprocal", "square", "sin", "cos", "tanh",
               "erf", "sigmoid", "silu", "abs", "clamp", "softplus", "leaky_relu", "elu", "pow"):
        assert op in lines, op


# ------------------------------------------------------------------------------------------- end to end


def compile_and_run(model: torch.nn.Module, x: torch.Tensor, rtol: float = RTOL, atol: float = 0.0) -> list[str]:
    """Compile, check the verification passed and every output is eager's; return the kernels, in order. The
    greedy placer places a few dozen kernels at once, and placement is not what these tests protect."""
    compiled = wsc.compile(model, (x,), "mesh-16x16", time_limit=0.3, strategy="greedy")
    assert compiled.report["verification"]["status"] == "pass", compiled.report["verification"]
    with torch.no_grad():
        expected = model(x)
    got = compiled(x)
    for out, want in zip(*((v,) if isinstance(v, torch.Tensor) else v for v in (got, expected)), strict=True):
        np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=rtol, atol=atol)
    return [n.op for n in compiled.program.graph if n.is_kernel]


# A matmul sums in another order than torch's: its float32 rounding (~1e-6 of the sums here) reaches the output.
AFTER_MATMUL = {"rtol": 1e-5, "atol": 1e-5}


class Lambda(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


class Gated(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(16, 16)

    def forward(self, x):
        return torch.sigmoid(self.lin(x)) * torch.exp(-x.abs())


class SiluMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = torch.nn.Linear(16, 48), torch.nn.Linear(48, 16)

    def forward(self, x):
        return self.down(F.silu(self.up(x)))


class Transcendental(torch.nn.Module):
    def forward(self, x):
        a = x.abs()
        return (torch.tanh(x), torch.sin(x), torch.cos(x), torch.erf(x), torch.expm1(-torch.square(x)), torch.log(a),
                torch.sqrt(a), torch.rsqrt(a), torch.reciprocal(x), torch.log1p(a))


class Parametric(torch.nn.Module):
    def forward(self, x):
        a = x.abs()
        return (F.softplus(x, 2.0, 5.0), F.leaky_relu(x, 0.2), F.elu(x, 1.3), F.selu(x), F.celu(x, 0.5),
                F.hardtanh(x, -0.5, 0.5), F.relu6(x), x.clamp(-1, 1), x.clamp(min=0.1), x.clamp(max=0.2),
                torch.clamp_min(x, -0.3), torch.clamp_max(x, 0.3),
                x ** 3, a ** 2.5, x ** 2, a ** 0.5, x ** 1 * 2.0, x ** -1, a ** -0.5, 2.0 ** x)


def test_gated_linear_with_exp_of_abs() -> None:
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(2))
    assert compile_and_run(Gated(), x, **AFTER_MATMUL) == ["matmul", "sigmoid", "abs", "neg", "exp", "mul"]


def test_silu_mlp() -> None:
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(3))
    assert compile_and_run(SiluMLP(), x, **AFTER_MATMUL) == ["matmul", "silu", "matmul"]


def test_transcendental_chain_on_a_rank_4_input() -> None:
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(4)) + 0.05
    kernels = compile_and_run(Transcendental(), x)
    for op in ("tanh", "sin", "cos", "erf", "expm1", "square", "neg", "abs", "log", "sqrt", "rsqrt", "reciprocal",
               "log1p"):
        assert op in kernels, op


def test_parametric_ops_and_pow_exponents() -> None:
    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(5)) * 4.0
    kernels = compile_and_run(Parametric(), x)
    assert kernels.count("softplus") == kernels.count("leaky_relu") == 1
    assert kernels.count("elu") == 3  # elu, selu, celu
    assert kernels.count("clamp") == 7  # hardtanh, relu6, clamp x3, clamp_min, clamp_max
    # x ** 2 is square, ** 0.5 sqrt, ** -1 reciprocal, ** -0.5 rsqrt, ** 1 x itself; the others (3, 2.5, 2 ** x)
    # are pow.
    assert [kernels.count(op) for op in ("square", "sqrt", "reciprocal", "rsqrt", "pow")] == [1, 1, 1, 1, 3]


@pytest.mark.parametrize("shape", [(), (5,)])
def test_rank_0_and_1_inputs(shape: tuple[int, ...]) -> None:
    x = torch.full(shape, 0.7) if not shape else torch.linspace(-2.0, 2.0, shape[0])
    assert compile_and_run(Lambda(lambda x: torch.tanh(x) ** 3), x) == ["tanh", "pow"]


# ---------------------------------------------------------------------------------------------- refusals


def refusal(model: torch.nn.Module, *args: torch.Tensor) -> str:
    with pytest.raises(WscError) as error:
        wsc.compile(model, args, "mesh-16x16", time_limit=0.3)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_integer_tensors_are_refused_by_name() -> None:
    ids = torch.arange(6).reshape(2, 3)
    message = refusal(Lambda(lambda i: torch.neg(i) + 1), ids)
    assert message.startswith("unsupported use of aten.neg.default at test_op_unary.py:")
    assert message.endswith(": on int64 tensors (the kernels compute float32); `wsc ops` lists what is supported")


def test_celu_with_alpha_0_is_refused() -> None:
    message = refusal(Lambda(lambda x: F.celu(x, 0.0)), torch.randn(2, 3))
    assert "unsupported use of aten.celu.default" in message and "celu with alpha 0" in message
