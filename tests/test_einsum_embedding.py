"""einsum beyond one batched matmul (sums within an operand, diagonals, three operands) and embedding lookups
with max_norm (passes/legalize/linear_algebra.py, passes/legalize/embedding.py): compiled, run, verified, and
held to float64 within the error their float32 arithmetic allows; the cases they refuse, in one line."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wsc
from wsc.core.errors import WscError
from wsc.frontend.capture import capture
from wsc.passes.fold_constants import FoldConstants
from wsc.passes.legalize import Legalize

EPS = float(np.finfo(np.float32).eps)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + 7 * len(shape) + sum(shape)))


def compiled(model: nn.Module, inputs: tuple) -> wsc.CompiledModel:
    result = wsc.compile(model, inputs, "mesh-16x16", time_limit=0.3, strategy="row-major")
    assert result.report["verification"]["status"] == "pass", result.report["verification"]
    return result


def refusal(model: nn.Module, inputs: tuple) -> str:
    captured = capture(model.eval(), inputs)
    with pytest.raises(WscError) as info:
        Legalize().run(FoldConstants().run(captured.graph, captured.weights), captured.weights)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------------ einsum

class Einsum(nn.Module):
    def __init__(self, equation: str):
        super().__init__()
        self.equation = equation

    def forward(self, *xs):
        return torch.einsum(self.equation, *xs)


# equation, operand shapes, ulps: each float32 sum of n terms (a sum within an operand, or a matmul's dot
# product) is off by at most sqrt(n) ulp of the sum of their magnitudes, and a diagonal moves values exactly;
# a chain adds its products' bounds.
EINSUMS = [
    ("i->", [(5,)], math.sqrt(5)),
    ("ij->i", [(3, 4)], math.sqrt(4)),
    ("ijk->ki", [(2, 3, 4)], math.sqrt(3)),  # a sum, then a permute
    ("i...->...", [(3, 3)], math.sqrt(3)),
    ("ii->i", [(4, 4)], 0),
    ("ii->", [(4, 4)], math.sqrt(4)),  # the trace: a diagonal, then a sum
    ("iji->j", [(3, 4, 3)], math.sqrt(3)),
    ("iji->j", [(1, 3, 1)], 0),
    ("iii->i", [(3, 3, 3)], 0),
    ("bii,bj->bij", [(2, 3, 3), (2, 4)], 1),  # a diagonal inside a two-operand product
    ("ij,k->i", [(3, 4), (5,)], math.sqrt(4) + math.sqrt(5) + 1),  # each operand sums its own, then one product
    ("...ik,...j->ij", [(1, 2, 3), (3,)], math.sqrt(3) + 1),  # the ellipsis and k held by the first alone
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)], math.sqrt(3) + math.sqrt(4)),
    ("ij,jk,k->", [(2, 3), (3, 4), (4,)], math.sqrt(3) + math.sqrt(8)),
]


@pytest.mark.parametrize("equation,shapes,ulps", EINSUMS, ids=[f"{e[0]} {e[1]}" for e in EINSUMS])
def test_einsum(equation, shapes, ulps):
    inputs = tuple(randn(*s, seed=i) for i, s in enumerate(shapes))
    got = compiled(Einsum(equation), inputs)(*inputs)
    want = torch.einsum(equation, *(x.double() for x in inputs))
    magnitude = torch.einsum(equation, *(x.double().abs() for x in inputs))
    assert got.shape == want.shape and got.dtype == torch.float32
    error = (got.double() - want).abs()
    assert (error <= ulps * EPS * magnitude).all(), float((error - ulps * EPS * magnitude).max())


def test_a_diagonal_is_a_strided_slice():
    captured = capture(Einsum("ii->i"), (randn(4, 4),))
    graph = Legalize().run(captured.graph, captured.weights)
    assert [n.op for n in graph if n.op != "input"] == ["reshape", "slice"]
    assert graph.nodes_of("slice")[0].attrs["step"] == 5


def test_einsum_of_integers_is_refused_in_one_line():
    message = refusal(Einsum("ij->i"), (torch.arange(6).reshape(2, 3),))
    assert "aten.einsum.default" in message and "int64" in message


# -------------------------------------------------------------------------------------------------- max_norm

class Table(nn.Module):
    def __init__(self, weight: torch.Tensor, **options):
        super().__init__()
        self.table = nn.Embedding.from_pretrained(weight.clone(), freeze=False, **options)

    def forward(self, ids):
        return self.table(ids)


class Lookup(nn.Module):
    """F.embedding of a table the model takes as its input."""

    def __init__(self, **options):
        super().__init__()
        self.options = options

    def forward(self, ids, weight):
        return F.embedding(ids, weight, **self.options)


def renormed(weight: torch.Tensor, ids: torch.Tensor, max_norm: float, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's renorm of the looked-up rows in float64, and each element's magnitude |row| * scale."""
    rows = weight.double()[ids]
    norm = rows.norm(p, dim=-1, keepdim=True)
    scale = torch.where(norm > max_norm, max_norm / (norm + 1e-7), torch.ones_like(norm))
    return rows * scale, rows.abs() * scale


IDS = torch.tensor([[1, 2, 3, 3], [7, 0, 2, 5]])
NORMS = [(1.0, 2.0), (1.0, 1.0), (0.5, math.inf), (1.5, 3.0), (100.0, 2.0)]  # the last renorms no row


@pytest.mark.parametrize("max_norm,p", NORMS, ids=[f"max_norm={m} p={p}" for m, p in NORMS])
def test_embedding_with_max_norm(max_norm, p):
    """The norm is a sum of D terms (sqrt(D) ulp, and a p-th root keeps its relative error or shrinks it); the
    add, the division, the product and a power or root cost an ulp or so each."""
    weight = randn(8, 6) * 2
    options = {"max_norm": max_norm, "norm_type": p}
    model = Table(weight, **options)
    got = compiled(copy.deepcopy(model), (IDS,))(IDS)
    want, magnitude = renormed(weight, IDS, max_norm, p)
    bound = (math.sqrt(weight.shape[1]) + 8) * EPS * magnitude
    assert got.shape == want.shape
    assert ((got.double() - want).abs() <= bound).all()
    if max_norm < 100:
        assert not torch.allclose(got, weight[IDS])  # rows were renormed, not merely looked up
    got = compiled(Lookup(**options), (IDS, weight.clone()))(IDS, weight.clone())
    assert ((got.double() - want).abs() <= bound).all()


def test_embedding_with_max_norm_of_one_id():
    weight, ids = randn(8, 6) * 2, torch.tensor(3)
    got = compiled(Lookup(max_norm=1.0), (ids, weight.clone()))(ids, weight.clone())
    want, magnitude = renormed(weight, ids, 1.0, 2.0)
    assert ((got.double() - want).abs() <= (math.sqrt(6) + 8) * EPS * magnitude).all()


class AlsoReadsTheTable(Table):
    def forward(self, ids):
        return self.table(ids) + self.table.weight[0]


class OtherIds(Table):
    def forward(self, ids, other=None):
        return self.table(ids) + F.embedding(ids if other is None else other, self.table.weight)


@pytest.mark.parametrize("model,why", [
    (AlsoReadsTheTable(randn(8, 6), max_norm=1.0), "aten.select.int reads the table it renorms in place"),
    (OtherIds(randn(8, 6), max_norm=1.0), "aten.embedding.default reads the table it renorms in place"),
    (Table(randn(8, 6), max_norm=1.0, norm_type=0.0), "norm_type 0.0"),
], ids=["another reader", "a lookup of other ids", "norm_type 0"])
def test_max_norm_refusals_are_one_line(model, why):
    message = refusal(model, (IDS, IDS.flip(0)) if isinstance(model, OtherIds) else (IDS,))
    assert "aten.embedding_renorm_.default" in message and why in message
