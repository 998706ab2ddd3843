"""The op table: every op answers every question the stages ask, and an op added in one file goes all the way
through (legalize, partition, place, estimate, run) against its reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import wsc
from wsc import ops
from wsc.ops.base import KernelOp, LayoutOp
from wsc.passes import legalize
from wsc.runtime.reference import run_reference

FIXTURES = Path(__file__).resolve().parent / "op_fixtures"


@pytest.fixture
def negate_op(monkeypatch):
    """tests/op_fixtures/negate.py loaded into the table for one test, then removed again."""
    monkeypatch.setattr(legalize, "_RULES", dict(legalize._RULES))
    spec = importlib.util.spec_from_file_location("negate_fixture_op", FIXTURES / "negate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    ops.unregister("negate_fixture")


class LinearThen(torch.nn.Module):
    def __init__(self, then):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(8, 16)
        self.then = then

    def forward(self, x):
        return self.then(self.linear(x))


def test_an_op_in_one_file_goes_all_the_way_through(negate_op) -> None:
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    compiled = wsc.compile(LinearThen(torch.neg), (x,), "mesh-16x16", time_limit=0.3)
    program = compiled.program
    (node,) = program.graph.nodes_of("negate_fixture")
    assert node.is_kernel and node.flops == 4 * 16
    (layer,) = program.layers
    plan = layer.kernels[node.name]
    assert plan.active_pes >= 1 and node.name in layer.placement.rects
    assert layer.placement and program.estimate["layers"][0]["kernel_seconds"][node.name] > 0
    assert compiled.report["verification"]["status"] == "pass"
    # The compiled program's value is the reference's on the matmul's output.
    linear = compiled.compiled.captured.weights
    hidden = (x @ linear["linear.weight"].T + linear["linear.bias"]).detach().numpy()
    want = np.full(hidden.shape, np.nan, dtype=np.float32)
    run_reference("negate_fixture", want, [hidden], plan.tiles)
    np.testing.assert_allclose(compiled(x).numpy(), want, rtol=1e-6, atol=1e-6)


def test_every_kernel_op_answers_every_question() -> None:
    for name in ops.kernel_names():
        op = ops.kernel(name)
        for method in ("lower", "reference"):
            assert getattr(type(op), method) is not getattr(KernelOp, method), f"{name} has no {method}"
    for name in ops.layout_names():
        assert type(ops.layout_op(name)).move is not LayoutOp.move, f"{name} cannot move data"
    assert {"matmul", "attention", "layernorm", "softmax", "gelu", "add", "mul", "embedding", "relu"} \
        <= set(ops.kernel_names())
    assert {"reshape", "permute", "slice", "concat", "expand", "index", "gather"} <= set(ops.layout_names())


def test_the_table_refuses_a_clash_and_a_node_kind() -> None:
    class OtherMatmul(KernelOp):
        name = "matmul"

    class Param(KernelOp):
        name = "param"

    with pytest.raises(ValueError, match="already in the table"):
        ops.register(OtherMatmul)
    with pytest.raises(ValueError, match="node kind of the IR"):
        ops.register(Param)
    with pytest.raises(KeyError, match="not in the op table"):
        ops.get("conv2d")
