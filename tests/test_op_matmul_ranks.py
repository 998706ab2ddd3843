"""Matrix products in every rank combination torch allows (passes/legalize/linear_algebra.py): matmul of vectors,
matrices and batches broadcasting in any leading dims, mm, bmm, mv, dot, outer, inner, linear, addmm, addmv and
baddbmm with alpha, beta and any broadcastable bias, and einsum contractions; compiled, run, and held to the
float64 product within sqrt(K) ulp of sum |a||b| (the kernel's fp32 dot products), plus one ulp for each
rounding a scaling factor or a bias adds. x @ W.T reads W itself, a weight of its layer."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wsc
from wsc.core.errors import WscError
from wsc.core.ir import Graph
from wsc.core.program import DTYPE_SIZE
from wsc.frontend.capture import capture
from wsc.passes.fold_constants import FoldConstants
from wsc.passes.legalize import Legalize

EPS = float(np.finfo(np.float32).eps)


class Product(nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor], **weights: torch.Tensor):
        super().__init__()
        self.fn = fn
        for name, value in weights.items():
            self.register_parameter(name, nn.Parameter(value))

    def forward(self, *xs):
        return self.fn(self, *xs)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + 11 * len(shape) + sum(shape)))


def legal(model: nn.Module, inputs: tuple) -> Graph:
    captured = capture(model.eval(), inputs)
    return Legalize().run(FoldConstants().run(captured.graph, captured.weights), captured.weights)


def check(model: nn.Module, inputs: tuple, k: int, roundings: int = 0,
          exact: Callable[..., torch.Tensor] | None = None, scale: Callable[..., torch.Tensor] | None = None):
    """Compile and run; |got - exact| <= (sqrt(K) + roundings) ulp of `scale` (default: the product of the
    operands' magnitudes, the model run in float64 on |inputs| and |weights|)."""
    # The whole batch in one pass: a second operand whose first dim happens to equal the batch carries none.
    micro = {"micro_batch": inputs[0].shape[0]} if inputs[0].dim() >= 2 else {}
    # The greedy placer: where the kernels sit changes nothing they compute (as in tests/test_op_unary.py).
    compiled = wsc.compile(model, inputs, "mesh-16x16", time_limit=0.3, strategy="greedy", **micro)
    assert compiled.report["verification"]["status"] == "pass", compiled.report["verification"]
    got = compiled(*inputs)
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        want = (exact or model64)(*(x.double() for x in inputs))
        if scale is None:
            for p in model64.parameters():
                p.abs_()
            magnitude = model64(*(x.double().abs() for x in inputs))
        else:
            magnitude = scale(*(x.double() for x in inputs))
    assert got.shape == want.shape and got.dtype == torch.float32
    bound = (math.sqrt(k) + roundings) * EPS * magnitude.numpy()
    error = np.abs(got.numpy().astype(np.float64) - want.numpy())
    assert (error <= bound).all(), float((error - bound).max())
    return compiled


MATMUL_SHAPES = [
    ((5,), (5,)),  # dot
    ((1,), (1,)),
    ((5,), (5, 3)),  # vector-matrix
    ((4, 5), (5,)),  # matrix-vector
    ((2, 3, 4, 5), (5,)),
    ((5,), (2, 5, 3)),  # one row for every batch
    ((1, 5), (5, 1)),
    ((4, 5), (5, 3)),
    ((2, 4, 5), (5, 3)),  # a 2-D second operand takes any leading dims
    ((3, 1, 4, 5), (1, 5, 2)),
    ((4, 5), (2, 5, 3)),  # the first operand repeats over the batch
    ((2, 4, 5), (2, 5, 3)),
    ((2, 1, 4, 5), (3, 5, 6)),  # both broadcast
    ((2, 3, 4, 5), (3, 5, 6)),  # 4-D x 3-D
    ((2, 3, 4, 5), (2, 1, 5, 6)),  # the second repeats over the last batch dim only
    ((1, 3, 1, 7), (2, 1, 7, 1)),
]


@pytest.mark.parametrize("a,b", MATMUL_SHAPES, ids=[f"{a}x{b}" for a, b in MATMUL_SHAPES])
def test_matmul_of_every_rank(a, b):
    check(Product(lambda m, x, y: x @ y), (randn(*a), randn(*b, seed=1)), k=a[-1])


@pytest.mark.parametrize("a,b", [((2, 4, 5), (5, 3)), ((3, 2, 4, 5), (2, 5, 3)), ((5,), (5, 3))],
                         ids=["2-D weight", "3-D weight", "vector input"])
def test_matmul_by_a_weight(a, b):
    check(Product(lambda m, x: torch.matmul(x, m.w), w=randn(*b, seed=1)), (randn(*a),), k=a[-1])


def test_folding_the_batch_into_rows_copies_nothing():
    """A second operand that repeats over the first's last batch dims is a reshape away (no expand); only a
    broadcast the kernel cannot take is materialised."""
    def expands(a, b):
        return len(legal(Product(lambda m, x, y: x @ y), (randn(*a), randn(*b))).nodes_of("expand"))

    assert expands((2, 4, 5), (5, 3)) == 0
    assert expands((2, 3, 4, 5), (2, 1, 5, 6)) == 0
    assert expands((3, 1, 4, 5), (1, 5, 2)) == 0
    assert expands((5,), (2, 5, 3)) == 0
    assert expands((4, 5), (2, 5, 3)) == 1
    assert expands((2, 1, 4, 5), (3, 5, 6)) == 2


@pytest.mark.parametrize("name,fn,shapes,k", [
    ("mm", torch.mm, ((4, 5), (5, 3)), 5),
    ("bmm", torch.bmm, ((2, 4, 5), (2, 5, 3)), 5),
    ("mv", torch.mv, ((4, 5), (5,)), 5),
    ("dot", torch.dot, ((6,), (6,)), 6),
    ("outer", torch.outer, ((4,), (3,)), 1),
    ("inner", torch.inner, ((2, 4, 5), (3, 5)), 5),
], ids=lambda v: v if isinstance(v, str) else "")
def test_named_products(name, fn, shapes, k):
    check(Product(lambda m, x, y: fn(x, y)), (randn(*shapes[0]), randn(*shapes[1], seed=2)), k=k)


# -------------------------------------------------------------------------------------------- scaled, biased

BIASES = [(), (1,), (3,), (1, 3), (4, 1), (4, 3)]


@pytest.mark.parametrize("bias", BIASES, ids=[str(b) for b in BIASES])
def test_addmm_with_alpha_beta_and_any_bias(bias):
    alpha, beta = 0.7, -1.3
    model = Product(lambda m, c, x: torch.addmm(c, x, m.w, beta=beta, alpha=alpha), w=randn(5, 3, seed=1))
    w = model.w.detach().double()
    c, x = randn(*bias, seed=3), randn(4, 5)
    check(model, (c, x), k=5, roundings=2, exact=lambda c, x: beta * c + alpha * (x @ w),
          scale=lambda c, x: abs(beta) * c.abs() + abs(alpha) * (x.abs() @ w.abs()))


def test_addmm_with_beta_zero_ignores_the_bias_nan_included():
    model = Product(lambda m, x: torch.addmm(torch.full((4, 3), float("nan")), x, m.w, beta=0), w=randn(5, 3))
    w = model.w.detach().double()
    check(model, (randn(4, 5),), k=5, exact=lambda x: x @ w, scale=lambda x: x.abs() @ w.abs())


def test_addmm_unscaled_row_bias_is_the_kernels_bias():
    """bias + x @ w (Hugging Face's Conv1D) is one matmul with its bias: no scaling, no residual."""
    model = Product(lambda m, x: torch.addmm(m.b, x, m.w), w=randn(5, 3), b=randn(3))
    graph = legal(model, (randn(4, 5),))
    (node,) = graph.nodes_of("matmul")
    assert node.attrs == {"bias": True} and not graph.nodes_of("mul")
    check(model, (randn(4, 5),), k=5, roundings=1)


@pytest.mark.parametrize("bias", [(2, 4, 3), (3,), (4, 1), ()], ids=str)
def test_baddbmm(bias):
    alpha, beta = 1.5, 0.25
    c, x, y = randn(*bias, seed=3), randn(2, 4, 5), randn(2, 5, 3, seed=1)
    model = Product(lambda m, x, y, c: torch.baddbmm(c, x, y, beta=beta, alpha=alpha))
    check(model, (x, y, c), k=5, roundings=2, exact=lambda x, y, c: beta * c + alpha * (x @ y),
          scale=lambda x, y, c: beta * c.abs() + alpha * (x.abs() @ y.abs()))


def test_addmv():
    model = Product(lambda m, c, x, v: torch.addmv(c, x, v, beta=2.0, alpha=0.5))
    check(model, (randn(4, seed=3), randn(4, 5), randn(5, seed=1)), k=5, roundings=2)


@pytest.mark.parametrize("x,w,bias", [((5,), (3, 5), True), ((2, 4, 5), (3, 5), False), ((1,), (1, 1), True)],
                         ids=["vector input", "no bias", "one element"])
def test_linear(x, w, bias):
    model = Product(lambda m, x: F.linear(x, m.w, m.b if bias else None), w=randn(*w, seed=1),
                    b=randn(*w[:-1], seed=2))
    check(model, (randn(*x),), k=x[-1], roundings=int(bias))


# --------------------------------------------------------------------------------------------------- einsum

EINSUMS = [  # equation, the operands' shapes, K (the elements each output sums)
    ("bij,bjk->bik", (2, 3, 4), (2, 4, 5), 4),
    ("ij,kj->ik", (3, 4), (5, 4), 4),
    ("bhqd,bhkd->bhqk", (2, 3, 4, 5), (2, 3, 6, 5), 5),
    ("...ij,jk->...ik", (2, 3, 4), (4, 5), 4),
    ("ij,j->i", (3, 4), (4,), 4),
    ("i,j->ij", (3,), (4,), 1),
    ("bik,bkj->jbi", (2, 3, 4), (2, 4, 5), 4),  # the output permuted
    ("ij,jk", (3, 4), (4, 2), 4),  # an implicit output
    ("bij,bjk->bik", (1, 3, 4), (4, 4, 2), 4),  # a batch dim broadcast
    ("abk,kcb->acb", (2, 3, 4), (4, 5, 3), 4),  # a batch dim not first, several kept dims
    ("bkl,lkn->bn", (2, 3, 4), (4, 3, 5), 12),  # two summed dims
    ("ij,j->i", (3, 4), (1,), 4),  # a summed dim of 1 broadcasts
    ("ji->ij", (3, 4), None, 1),
]


@pytest.mark.parametrize("equation,a,b,k", EINSUMS, ids=[e[0] for e in EINSUMS])
def test_einsum_contractions(equation, a, b, k):
    inputs = (randn(*a),) if b is None else (randn(*a), randn(*b, seed=1))
    check(Product(lambda m, *xs: torch.einsum(equation, *xs)), inputs, k=k)


# ------------------------------------------------------------------------------------------- a weight as it is

class TransposedWeight(nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return x @ self.w.T


def test_x_at_w_t_reads_the_weight_itself():
    """numpy_T's transpose and the matmul's own cancel: W is the matmul's second input, a weight of its layer,
    and the kernel is planned and costed exactly as a Linear with that weight (pipelined: the weight resident)."""
    w, x = randn(24, 40, seed=1), randn(2, 8, 40)
    compiled = check(TransposedWeight(w), (x,), k=40)
    graph = compiled.program.graph
    (node,) = graph.nodes_of("matmul")
    assert graph[node.inputs[1]].op == "param" and graph[node.inputs[1]].attrs["key"] == "w"
    assert not graph.nodes_of("permute")
    layer = next(layer for layer in compiled.program.layers if node.name in layer.kernels)
    assert node.inputs[1] in layer.weights

    linear = nn.Linear(40, 24, bias=False)
    linear.weight.data.copy_(w)
    plans = []
    for model in (TransposedWeight(w), linear):
        program = wsc.compile(model, (x,), "mesh-16x16", mode="pipelined", time_limit=0.3, verify=False).program
        (mm,) = program.graph.nodes_of("matmul")
        plan = next(layer.kernels[mm.name] for layer in program.layers if mm.name in layer.kernels)
        size = DTYPE_SIZE[program.dtype]
        # The weight's tile k x tc stays on its PE (the weight itself, not a copy of its transpose).
        tr, tc = math.ceil(plan.rows / plan.cut.row_blocks), math.ceil(plan.cols / plan.cut.col_blocks)
        k = math.ceil(40 / plan.cut.k_splits)
        partials = 2 * tc * 4 if plan.cut.k_splits > 1 else 0
        assert plan.sram_bytes_per_pe == min(tr, 2) * (k * size + tc * 4) + k * tc * size + partials
        plans.append((plan.cut, plan.h, plan.w, plan.sram_bytes_per_pe, mm.flops, mm.bytes))
    assert plans[0] == plans[1]


def test_a_weight_stored_k_by_n_is_transposed_once():
    graph = legal(Product(lambda m, x: x @ m.w.T.T, w=randn(5, 4)), (randn(3, 5),))  # three transposes: one is left
    (node,) = graph.nodes_of("permute")
    assert graph[node.inputs[0]].op == "param" and graph.nodes_of("matmul")[0].inputs[1] == node.name


# -------------------------------------------------------------------------------------------------- refusals

def test_inner_with_a_scalar_is_refused():
    with pytest.raises(WscError, match="inner with a scalar operand"):
        legal(Product(lambda m, x, y: torch.inner(x, y)), (randn(3), randn()))
