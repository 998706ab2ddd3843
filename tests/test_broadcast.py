"""add and mul under every broadcast torch allows (issue 12): each compiles and matches eager, never an internal
error. The kernels take operands that each repeat over the output's leading rows, on either side; legalize brings
every other broadcast to that form with layout ops, and rank 0 to one element. (tests/test_op_binary.py does the
same for the other binary ops and where.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import wsc
from wsc.frontend.capture import capture
from wsc.passes.legalize import Legalize


class Binary(torch.nn.Module):
    def __init__(self, op: str, scalar: float | None = None, first: bool = False):
        super().__init__()
        self.op, self.scalar, self.first = op, scalar, first

    def forward(self, *xs):
        a, b = xs if self.scalar is None else ((self.scalar, xs[0]) if self.first else (xs[0], self.scalar))
        return a + b if self.op == "add" else a * b


SHAPES = [
    ((), ()),  # rank 0: died with IndexError in legalize
    ((), (3, 4)),
    ((3, 4), ()),
    ((1,), ()),
    ((3, 1), (1, 4)),  # both operands smaller than the output
    ((4,), (2, 3, 4)),
    ((2, 3, 4), (4,)),
    ((2, 3, 4), (2, 1, 4)),  # a broadcast in the middle
    ((2, 1, 4), (3, 1)),
    ((1, 3, 1), (2, 1, 4)),
    ((2, 3, 4), (1, 3, 1)),
    ((2, 1, 3, 1), (1, 5, 1, 4)),
    ((2, 3, 4), (2, 3, 1)),
    ((5, 1), (5,)),
    ((2, 3), (2, 3)),
]


def compile_and_check(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    # The whole batch in one pass: micro-batching takes every input whose first dim is the batch as carrying
    # it, which a broadcast operand such as the (5,) of (5, 1) x (5,) does not.
    micro = {"micro_batch": inputs[0].shape[0]} if inputs[0].dim() >= 2 else {}
    # The greedy placer: where the kernels sit changes nothing they compute (as in tests/test_op_unary.py).
    compiled = wsc.compile(model, inputs, "mesh-16x16", time_limit=0.3, strategy="greedy", **micro)
    assert compiled.report["verification"]["status"] == "pass"
    got, want = compiled(*inputs), model(*inputs)
    assert tuple(got.shape) == tuple(want.shape)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("a,b", SHAPES, ids=[f"{a}x{b}" for a, b in SHAPES])
def test_every_broadcast_compiles_and_matches_eager(op, a, b):
    g = torch.Generator().manual_seed(len(a) * 7 + len(b))
    compile_and_check(Binary(op), (torch.randn(a, generator=g), torch.randn(b, generator=g)))


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("shape", [(), (1,), (3, 4)])
@pytest.mark.parametrize("first", [False, True], ids=["scalar_second", "scalar_first"])
def test_a_python_scalar_with_any_rank(op, shape, first):
    compile_and_check(Binary(op, 2.5, first), (torch.randn(shape, generator=torch.Generator().manual_seed(5)),))


def test_the_kernels_see_only_their_own_broadcast():
    """Each add or mul kernel gets operands that repeat over its leading rows, on either side, in the model's
    order; a broadcast the kernels take directly emits exactly one kernel and no layout op, as before."""
    for inputs in [(torch.randn(2, 3, 4), torch.randn(3, 4)), (torch.randn(3, 1), torch.randn(2, 3, 4))]:
        graph = Legalize().run(capture(Binary("add").eval(), inputs).graph)
        assert [n.op for n in graph if n.op not in ("input", "param", "const")] == ["add"]
        assert graph["add"].inputs == tuple(n.name for n in graph.inputs)
    for a, b in SHAPES:
        graph = Legalize().run(capture(Binary("mul").eval(), (torch.randn(a), torch.randn(b))).graph)
        for node in graph.nodes_of("mul"):
            assert len(node.shape) >= 1
            for small in (graph[i].shape for i in node.inputs):
                padded = (1,) * (len(node.shape) - len(small)) + small
                first = next((i for i, d in enumerate(padded[:-1]) if d != 1), len(node.shape) - 1)
                assert padded[first:-1] == node.shape[first:-1] and padded[-1] in (1, node.shape[-1]), (a, b, small)


def test_alpha_compiles_and_matches_eager():
    model = Binary("add")
    model.forward = lambda a, b: torch.add(a, b, alpha=2)  # type: ignore[method-assign]
    compile_and_check(model, (torch.randn(3, 4), torch.randn(4)))
