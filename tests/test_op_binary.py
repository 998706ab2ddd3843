"""The binary and ternary element-wise ops: their kernels against torch under every tiling (NaN, inf and -0.0
included), every broadcast of their operands end to end (both orders, Python numbers on either side, rank 0 to 4),
a bool mask handed to a kernel as bool, their cost rows, and what legalize refuses, in one line.

Tolerances: add, sub, mul, div, maximum, minimum, where, the comparisons and the rounded divisions are exact
(IEEE rounds each once, as torch does); pow is within 2 ulp (C's powf and torch's vector pow are each within
one of the true power); an alpha is one fused multiply-add, exact against float64, and torch's scalar loop
(a + alpha * b, rounded twice) is within 2 eps of |a| + |alpha * b| of it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_broadcast import SHAPES
from test_kernels import SENTINEL, rng, run_all_tilings

import wsc
from wsc import ops
from wsc.core.errors import WscError
from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.frontend.capture import capture
from wsc.passes.legalize import Legalize
from wsc.passes.legalize.elementwise import suffix_broadcast
from wsc.runtime.lowering import compile_kernel

EPS32 = float(np.finfo(np.float32).eps)
SPECIALS = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, -1.0, 2.0, -3.5, 0.5], np.float32)


def values(*shape: int) -> np.ndarray:
    """Unit normal values, the first elements replaced by NaN, infinities, zeros of both signs and small
    integers (shuffled, so each operand pairs them differently)."""
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    count = min(flat.size, len(SPECIALS))
    flat[:count] = rng.permutation(SPECIALS)[:count]
    return x


def spread(x: np.ndarray, rows: int, cols: int) -> torch.Tensor:
    """An operand [Rk, Ck] at every element of [rows, cols] as the kernels read it, (r % Rk, c % Ck)."""
    return torch.from_numpy(np.broadcast_to(x[np.arange(rows) % x.shape[0]], (rows, cols)).copy())


def assert_same_floats(got: np.ndarray, want: np.ndarray) -> None:
    """Equal values, NaN where want has NaN, and zeros of want's sign."""
    np.testing.assert_array_equal(got, want)
    zeros = want == 0
    np.testing.assert_array_equal(np.signbit(got[zeros]), np.signbit(want[zeros]), err_msg="sign of a zero")


def run_once(op: str, out_shape, inputs, attrs) -> np.ndarray:
    kernel = compile_kernel(op, out_shape, [x.shape for x in inputs], attrs)
    out = np.full(out_shape, SENTINEL, np.float32)
    kernel(out, inputs, np.array([[0, out_shape[0], 0, out_shape[1]]], np.int64))
    return out


# -------------------------------------------------------------------------------------------------- kernels

TORCH_OPS = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
    "maximum": torch.maximum, "minimum": torch.minimum, "pow_tensor": torch.pow,
    "eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge,
    "logical_and": torch.logical_and, "logical_or": torch.logical_or, "logical_xor": torch.logical_xor,
}
# Operand forms [Ra, Ca] and [Rb, Cb] of a [6, 13] output: full, a row over the rows, a value per row, a scalar,
# a block of rows repeated, on either side and with neither operand full.
FORMS = [((6, 13), (6, 13)), ((6, 13), (1, 13)), ((1, 13), (6, 13)), ((3, 1), (6, 13)), ((6, 13), (2, 13)),
         ((1, 1), (6, 13)), ((6, 13), (1, 1)), ((6, 1), (1, 13)), ((1, 1), (1, 1)), ((2, 13), (3, 1))]


@pytest.mark.parametrize("op", sorted(TORCH_OPS))
@pytest.mark.parametrize("a_shape,b_shape", FORMS, ids=[f"{a}x{b}" for a, b in FORMS])
def test_binary_kernels_match_torch_on_every_tiling(op, a_shape, b_shape):
    a, b = values(*a_shape), values(*b_shape)
    if op == "pow_tensor":  # bases of both signs, exponents of both kinds (integers, fractions)
        a, b = a * 2, np.where(rng.random(b.shape) < 0.5, np.round(b * 3), b * 3).astype(np.float32)
    expected = TORCH_OPS[op](spread(a, 6, 13), spread(b, 6, 13)).to(torch.float32).numpy()
    exact = op != "pow_tensor"
    run_all_tilings(op, (6, 13), [a, b], {}, expected, atol=0, rtol=0 if exact else 2 * EPS32)
    if exact and op not in ("maximum", "minimum"):  # torch leaves the sign of max(-0.0, 0.0) to its code path
        assert_same_floats(run_once(op, (6, 13), [a, b], {}), expected)


def test_pow_follows_torch_on_every_special_case():
    """Negative bases to integer and fractional powers, 0 ** 0, 1 ** NaN, NaN ** 0, (-0) ** odd, (-1) ** inf,
    overflow and underflow: each pair against torch, exactly (these results are exact or infinite)."""
    pairs = [(-8, 1 / 3), (-2, 3), (-0.0, 3), (0, -1), (-0.0, -1), (0, 0), (-0.0, -3), (2, 0.5), (math.inf, -1),
             (-math.inf, 3), (math.nan, 0), (1, math.nan), (-1, math.inf), (-1, 0.5), (0, -2), (-0.0, -2),
             (-2.5, 2), (3, 40), (1e10, 5), (10, -50), (-math.inf, -2), (math.inf, 0), (-1, -math.inf)]
    a = np.array([[p[0] for p in pairs]], np.float32)
    b = np.array([[p[1] for p in pairs]], np.float32)
    expected = torch.pow(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert_same_floats(run_once("pow_tensor", a.shape, [a, b], {}), expected)
    run_all_tilings("pow_tensor", a.shape, [a, b], {}, expected, atol=0, rtol=0)


@pytest.mark.parametrize("op", ["add", "sub"])
@pytest.mark.parametrize("alpha", [2.5, -0.3, 0.0])
def test_alpha_is_one_fused_multiply_add(op, alpha):
    a, b = values(6, 13), values(1, 13)
    alpha32 = np.float64(np.float32(alpha))  # torch rounds alpha to the tensors' dtype
    sign = 1 if op == "add" else -1
    with np.errstate(invalid="ignore"):
        exact = (a.astype(np.float64) + sign * alpha32 * spread(b, 6, 13).double().numpy()).astype(np.float32)
    run_all_tilings(op, (6, 13), [a, b], {"alpha": float(alpha32)}, exact, atol=0, rtol=0)
    got = run_once(op, (6, 13), [a, b], {"alpha": float(alpha32)})
    eager = TORCH_OPS[op](torch.from_numpy(a), spread(b, 6, 13), alpha=alpha).numpy()
    finite = np.isfinite(eager)
    with np.errstate(invalid="ignore"):
        bound = 2 * EPS32 * (np.abs(a) + np.abs(alpha32 * spread(b, 6, 13).numpy()))
        assert np.all(np.abs(got - eager)[finite] <= bound[finite])
    np.testing.assert_array_equal(got[~finite], eager[~finite])


@pytest.mark.parametrize("rounding", ["floor", "trunc"])
def test_rounded_division_matches_torch_exactly(rounding):
    pairs = [(7, 2), (-7, 2), (7, -2), (-7, -2), (0, 3), (-0.0, 3), (0, -3), (1, 0), (-1, 0), (0, 0), (5.5, -0.0),
             (math.inf, 2), (-math.inf, 2), (2, math.inf), (-2, math.inf), (3, -math.inf), (math.nan, 1),
             (1, math.nan), (1e30, 1e-30), (-1e30, 1e-30), (0.3, 0.1), (-0.3, 0.1), (1, 0.1), (6, 3), (-6, 3),
             (1e-38, 3e38), (-1e-38, 3e38), (16777217, 3), (2.5, 0.5), (-2.5, 0.5), (0.7, -0.1), (4, 1e-40),
             # (a - fmod(a, b)) / b rounds to just off the integer: -120.0000076, 896.9999389
             (1.5139237642288208, -0.012646019458770752), (-258.5725402832031, -0.28806808590888977)]
    a = np.array([[p[0] for p in pairs]], np.float32)
    b = np.array([[p[1] for p in pairs]], np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    # torch's vector loop and its scalar loop (a tensor shorter than a vector) agree on every pair
    expected = torch.div(ta, tb, rounding_mode=rounding).numpy()
    one_by_one = np.array([[torch.div(ta[0, i], tb[0, i], rounding_mode=rounding).item() for i in range(len(pairs))]],
                          np.float32)
    assert_same_floats(one_by_one, expected)
    assert_same_floats(run_once("div", a.shape, [a, b], {"rounding": rounding}), expected)
    run_all_tilings("div", a.shape, [a, b], {"rounding": rounding}, expected, atol=0, rtol=0)
    randoms = values(6, 13) * 10, values(1, 13)
    expected = torch.div(torch.from_numpy(randoms[0]), spread(randoms[1], 6, 13), rounding_mode=rounding).numpy()
    run_all_tilings("div", (6, 13), list(randoms), {"rounding": rounding}, expected, atol=0, rtol=0)


def test_logical_not_reads_nan_as_true_and_either_zero_as_false():
    x = np.array([[np.nan, 0.0, -0.0, 2.0, -np.inf]], np.float32)
    expected = torch.logical_not(torch.from_numpy(x)).float().numpy()
    run_all_tilings("logical_not", x.shape, [x], {}, expected, atol=0, rtol=0)


WHERE_FORMS = [((6, 13), (6, 13), (6, 13)), ((6, 1), (1, 13), (1, 1)), ((1, 13), (6, 13), (3, 1)),
               ((1, 1), (6, 1), (6, 13)), ((2, 13), (1, 1), (1, 1)), ((6, 13), (3, 13), (1, 13))]


@pytest.mark.parametrize("kind", ["f32", "bool"])
@pytest.mark.parametrize("shapes", WHERE_FORMS, ids=[str(s) for s in WHERE_FORMS])
def test_where_copies_the_chosen_value_bit_for_bit(kind, shapes):
    """cond as float 0/1 (a kernel's or a constant's) or as numpy bool (a model's input), every operand in each
    broadcast form; NaN, inf and -0.0 are copied, never computed."""
    c_shape, a_shape, b_shape = shapes
    cond = rng.random(c_shape) < 0.5
    a, b = values(*a_shape), values(*b_shape)
    held = cond if kind == "bool" else cond.astype(np.float32)
    expected = torch.where(spread(cond, 6, 13), spread(a, 6, 13), spread(b, 6, 13)).numpy()
    attrs = {"kinds": [kind, "f32", "f32"]} if kind == "bool" else {}
    run_all_tilings("where", (6, 13), [held, a, b], attrs, expected, atol=0, rtol=0)
    assert_same_floats(run_once("where", (6, 13), [held, a, b], attrs), expected)


def test_a_bool_operand_is_read_as_bool_and_only_as_declared():
    mask = rng.random((6, 13)) < 0.5
    x = values(6, 13)
    expected = torch.logical_and(torch.from_numpy(mask), torch.from_numpy(x)).float().numpy()
    run_all_tilings("logical_and", (6, 13), [mask, x], {"kinds": ["bool", "f32"]}, expected, atol=0, rtol=0)
    kernel = compile_kernel("logical_and", (6, 13), [(6, 13), (6, 13)], {"kinds": ["bool", "f32"]})
    with pytest.raises(ValueError, match="dtype float32, expected bool"):
        kernel(np.zeros((6, 13), np.float32), [mask.astype(np.float32), x], np.array([[0, 6, 0, 13]], np.int64))


def test_the_kernels_check_their_shapes_and_kinds():
    for in_shapes, attrs, message in [
        ([(6, 13), (4, 13)], {}, "does not broadcast"),  # 4 rows do not repeat over 6
        ([(6, 13), (6, 2)], {}, "does not broadcast"),
        ([(6, 13)], {}, "2 inputs"),
        ([(6, 13), (6, 13)], {"kinds": ["bool"]}, "kinds"),
        ([(6, 13), (6, 13)], {"kinds": ["i64", "f32"]}, "kinds"),
    ]:
        with pytest.raises(ValueError, match=message):
            compile_kernel("sub", (6, 13), in_shapes, attrs)
    with pytest.raises(ValueError, match="rounding"):
        compile_kernel("div", (6, 13), [(6, 13), (6, 13)], {"rounding": "round"})


# ------------------------------------------------------------------------------------------------ cost rows


def test_cost_rows():
    graph = Graph()
    graph.add(Node("x", "input", (), (6, 10), "float32"))
    graph.add(Node("row", "input", (), (10,), "float32"))
    graph.add(Node("col", "input", (), (6, 1), "bool"))
    graph.add(Node("one", "const", (), (1,), "float32", {"value": np.ones(1, np.float32)}))
    where = graph.add(Node("w", "where", ("col", "x", "one"), (6, 10), "float32"))
    sub = graph.add(Node("s", "sub", ("row", "x"), (6, 10), "float32"))
    assert ops.kernel("sub").flops((6, 10), [(10,), (6, 10)], {}) == 60
    assert ops.kernel("where").flops((6, 10), [(6, 1), (6, 10), (1,)], {}) == 60
    assert ops.kernel("pow_tensor").flops((6, 10), [(6, 10), (6, 10)], {}) == 17 * 60
    assert ops.kernel("div").flops((6, 10), [(6, 10), (1,)], {"rounding": "floor"}) == 8 * 60
    cut, plan = Cut(3, 2), KernelPlan("w", 6, 10, Cut(3, 2), 3, 2, 0)
    # SRAM: a 2 x 5 tile per tensor operand (the scalar sits in a register) and the output tile
    assert ops.kernel("where").sram_bytes(graph, where, cut, 2) == 3 * (2 * 5) * 2
    assert ops.kernel("sub").sram_bytes(graph, sub, cut, 2) == 3 * (2 * 5) * 2
    # traffic: one value per row of the condition, the full tile of x, nothing for the scalar; the output once
    assert ops.kernel("where").sram_traffic(graph, where, plan, 2) == ((2 + 2 * 5) * 2, 2 * 5 * 2)
    assert ops.kernel("sub").sram_traffic(graph, sub, plan, 2) == (2 * (2 * 5) * 2, 2 * 5 * 2)
    assert ops.kernel("where").abi(graph, where) == ((6, 10), [(6, 1), (6, 10), (1, 1)])
    assert ops.kernel("sub").abi(graph, sub) == ((6, 10), [(1, 10), (6, 10)])


# --------------------------------------------------------------------------------------------- end to end


# Every pass, the run and the verification, but a placer that does not search: what is tested here is the numbers.
COMPILE = {"time_limit": 0.3, "strategy": "row-major", "router": "xy"}


class Lambda(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def compile_and_check(fn, *inputs: torch.Tensor, run_on: tuple[torch.Tensor, ...] | None = None):
    """Compile fn on `inputs` (verified against eager), then run it on `run_on` (special values, which the
    verification's max-error rule cannot take) and compare with eager exactly."""
    model = Lambda(fn)
    micro = {"micro_batch": inputs[0].shape[0]} if inputs[0].dim() >= 2 else {}
    compiled = wsc.compile(model, inputs, "mesh-16x16", **COMPILE, **micro)
    assert compiled.report["verification"]["status"] == "pass"
    run_on = run_on or inputs
    got, want = compiled(*run_on), model(*run_on)
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert tuple(g.shape) == tuple(w.shape) and g.dtype == w.dtype  # a comparison's bool comes back as bool
        assert_same_floats(g.to(torch.float32).numpy(), w.to(torch.float32).numpy())
    return compiled


def tensors(*shapes, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, generator=g) for s in shapes)


def special(*shapes, seed: int = 0) -> tuple[torch.Tensor, ...]:
    np_rng = np.random.default_rng(seed)
    out = []
    for s in shapes:
        x = np_rng.standard_normal(s).astype(np.float32)
        flat = x.reshape(-1)
        flat[: min(flat.size, 3)] = np_rng.permutation(SPECIALS)[: min(flat.size, 3)]
        out.append(torch.from_numpy(x))
    return tuple(out)


def sub_div(a, b):
    return a - b, b - a, a / b, b / a, torch.sub(a, b, alpha=2), torch.rsub(a, b), a // b


# Besides test_broadcast's forms: dims 1 and 2 repeated before dim 0 is not, which moves three dims in a cycle
# (its inverse is not itself).
SUB_DIV_SHAPES = [*SHAPES, ((2, 1, 1, 5), (2, 3, 4, 5))]


@pytest.mark.parametrize("a,b", SUB_DIV_SHAPES, ids=[f"{a}x{b}" for a, b in SUB_DIV_SHAPES])
def test_sub_and_div_under_every_broadcast_keep_their_order(a, b):
    """Both orders of each broadcast, rank 0 to 4: the operand order survives the move to the kernels' form."""
    compiled = compile_and_check(sub_div, *tensors(a, b), run_on=special(a, b, seed=1))
    for node in compiled.program.graph:
        if node.op in ("sub", "div"):
            assert all(suffix_broadcast(compiled.program.graph[i].shape, node.shape) for i in node.inputs)


@pytest.mark.parametrize("shape", [(), (1,), (5,), (3, 4), (2, 1, 3), (2, 3, 1, 2)])
def test_python_numbers_on_either_side(shape):
    def scalars(x):
        return (x - 2.5, 2.5 - x, x / 4, torch.div(3.0, x), torch.sub(1.5, x), torch.rsub(x, 2, alpha=3),
                torch.ops.aten.add.Scalar(x, 2.0, 0.5), torch.ops.aten.sub.Scalar(x, 2.0),
                torch.ops.aten.mul.Scalar(x, -0.5), torch.ops.aten.div.Scalar(x, -2.0), torch.add(x, 1, alpha=-2),
                torch.where(x > 0, 1.0, x), torch.where(x > 0, x, -0.0), torch.where(x > 0, 2.0, -1.0), x // 0.5)

    compile_and_check(scalars, *tensors(shape), run_on=special(shape, seed=2))


WHERE_SHAPES = [
    ((), (), ()),
    ((3, 4), (3, 4), (3, 4)),
    ((3, 4), (), (4,)),
    ((), (3, 4), (3, 1)),
    ((2, 1, 4), (3, 1), (2, 3, 4)),
    ((2, 1, 4), (1, 3, 4), (2, 3, 1)),  # no order of the dims serves all three: one is materialised
    ((1, 3, 1), (2, 1, 4), ()),
    ((2, 1, 3, 1), (1, 5, 1, 4), (5, 3, 4)),
    ((3, 4, 5), (2, 1, 1, 5), ()),
]


@pytest.mark.parametrize("shapes", WHERE_SHAPES, ids=[str(s) for s in WHERE_SHAPES])
def test_where_under_every_broadcast_of_its_three_operands(shapes):
    c, a, b = shapes

    def where(cond, x, y):
        return torch.where(cond > 0, x, y), torch.where(cond <= 0, y, x).masked_fill(cond > 1, -7.0)

    compile_and_check(where, *tensors(c, a, b), run_on=special(c, a, b, seed=3))


def test_a_bool_mask_input_reaches_the_kernel_as_bool():
    x, mask = torch.randn(2, 3, 4), torch.rand(3, 1) > 0.5
    compiled = compile_and_check(lambda x, m: (torch.where(m, x, 0.5), x.masked_fill(~m, -1.0), m & (x > 0)),
                                 x, mask, run_on=(special((2, 3, 4))[0], mask))
    kinds = [n.attrs.get("kinds") for n in compiled.program.graph if n.op == "where"]
    assert ["bool", "f32", "f32"] in kinds


def test_tril_triu_and_masked_fill_keep_inf_and_nan():
    def masks(x, y):
        z = x * y  # computed at run time: a where, not a folded constant
        return torch.tril(z), torch.triu(z, 1), torch.tril(z, -2), torch.triu(z, -1), \
            z.masked_fill(torch.ones(5, 7, dtype=torch.bool).tril(), -1e4), \
            z.masked_fill(y > 0, torch.tensor(7.0))

    inputs = tensors((2, 5, 7), (5, 7))
    x = torch.randn(2, 5, 7)
    x[0, 0, :4] = torch.tensor([np.inf, np.nan, -np.inf, -0.0])
    x[1, 4, 5:] = torch.tensor([np.nan, np.inf])
    compiled = compile_and_check(masks, *inputs, run_on=(x, torch.ones(5, 7)))
    assert [compiled.program.graph[name].op for name in ("tril", "triu", "tril_1", "triu_1")] == ["where"] * 4


def test_clamp_maximum_minimum_pow_and_comparisons():
    def family(a, b, c):
        return torch.clamp(a, b, c), torch.clamp(a, min=b), torch.clamp(a, max=c), torch.maximum(a, b), \
            torch.minimum(b, a), torch.max(a, c), torch.pow(a * a + 0.5, b), a == b, a != c, a < 0.5, \
            b >= a, torch.logical_or(a > 0, c), torch.logical_not(a), (a > 0) | (b > 0), ~(b > 0)

    compile_and_check(family, *tensors((2, 3, 4), (3, 1), (4,)), run_on=special((2, 3, 4), (3, 1), (4,), seed=4))


def test_alpha_add_matches_eager_within_a_rounding():
    model = Lambda(lambda a, b: (torch.add(a, b, alpha=0.3), torch.sub(b, a, alpha=-1.7)))
    a, b = tensors((4, 9), (9,))
    compiled = wsc.compile(model, (a, b), "mesh-16x16", **COMPILE, micro_batch=4)
    assert compiled.report["verification"]["status"] == "pass"
    for got, want, scale in zip(compiled(a, b), model(a, b), (a.abs() + 0.3 * b.abs(), b.abs() + 1.7 * a.abs()),
                                strict=True):
        assert torch.all((got - want).abs() <= 2 * EPS32 * scale)


# ---------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("fn,message", [
    (lambda ids: ids + 1, "an operand of int64"),
    (lambda ids: ids & 1, "bitwise ops on int"),
    (lambda ids: ids == 3, "an operand of int64"),
])
def test_refusals_are_one_line(fn, message):
    with pytest.raises(WscError, match=message) as info:
        wsc.compile(Lambda(fn), (torch.tensor([[1, 2, 3]]),), "mesh-16x16", **COMPILE)
    assert "\n" not in str(info.value)


def test_legalize_keeps_the_kernels_form_without_layout_ops_where_none_is_needed():
    for fn, inputs in [(lambda a, b: b - a, (torch.randn(2, 3, 4), torch.randn(3, 4))),
                       (lambda a, b: torch.where(a > 0, b, 1.0), (torch.randn(3, 1), torch.randn(3, 4)))]:
        graph = Legalize().run(capture(Lambda(fn).eval(), inputs).graph)
        assert not [n.op for n in graph if ops.is_layout(n.op)]


class LinearThenAdd(torch.nn.Module):
    def __init__(self, alpha: float):
        super().__init__()
        torch.manual_seed(0)
        self.linear, self.alpha = torch.nn.Linear(6, 8), alpha

    def forward(self, x, z):
        return torch.add(x, self.linear(z), alpha=self.alpha)


@pytest.mark.parametrize("alpha,z_rows,fused", [(1, 4, True), (2.5, 4, False), (1, 1, False)],
                         ids=["residual", "alpha", "broadcast_matmul_output"])
def test_only_a_plain_add_of_two_full_operands_is_a_matmul_residual(alpha, z_rows, fused):
    """A residual epilogue adds its operand once, at the matmul's own shape: an add with an alpha, or one that
    broadcasts the matmul's output, stays an add kernel."""
    x, z = tensors((4, 8), (z_rows, 6))
    model = LinearThenAdd(alpha).eval()
    compiled = wsc.compile(model, (x, z), "mesh-16x16", **COMPILE, micro_batch=4)
    assert compiled.report["verification"]["status"] == "pass"
    kernels = {n.op: n for n in compiled.program.graph if n.is_kernel}
    assert bool(kernels["matmul"].attrs.get("residual")) == fused and ("add" not in kernels) == fused
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x, z).numpy(), model(x, z).numpy(), rtol=1e-5, atol=1e-5)
