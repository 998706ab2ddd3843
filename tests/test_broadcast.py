"""add and mul under every broadcast torch allows (issue 12): each compiles and matches eager, never an internal
error. The kernels take a full first operand and a second that repeats over its leading rows; legalize brings
every other broadcast to that form with layout ops, and rank 0 to one element."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import wsc
from wsc.core.errors import WscError
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
    compiled = wsc.compile(model, inputs, "mesh-16x16", time_limit=0.3, **micro)
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
    """Each add or mul kernel gets a full first operand and a second that repeats over its leading rows; a
    broadcast the kernels take directly emits exactly one kernel and no layout op, as before."""
    inputs = (torch.randn(2, 3, 4), torch.randn(3, 4))
    graph = Legalize().run(capture(Binary("add").eval(), inputs).graph)
    assert [n.op for n in graph if n.op not in ("input", "param", "const")] == ["add"]
    for a, b in SHAPES:
        graph = Legalize().run(capture(Binary("mul").eval(), (torch.randn(a), torch.randn(b))).graph)
        for node in graph.nodes_of("mul"):
            full, small = (graph[i].shape for i in node.inputs)
            assert full == node.shape and len(node.shape) >= 1
            padded = (1,) * (len(full) - len(small)) + small
            first = next((i for i, d in enumerate(padded[:-1]) if d != 1), len(full) - 1)
            assert padded[first:-1] == full[first:-1] and padded[-1] in (1, full[-1]), (a, b, small, full)


def test_alpha_is_still_refused_in_one_line():
    model = Binary("add")
    model.forward = lambda a, b: torch.add(a, b, alpha=2)  # type: ignore[method-assign]
    with pytest.raises(WscError, match="alpha") as info:
        wsc.compile(model, (torch.randn(3, 4), torch.randn(4)), "mesh-16x16", time_limit=0.3)
    assert "\n" not in str(info.value)
