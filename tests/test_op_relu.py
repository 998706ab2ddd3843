"""relu: its kernel against torch under every tiling, its cost rows, and a ReLU MLP compiled end to end."""

from __future__ import annotations

import numpy as np
import torch
from test_kernels import randn, run_all_tilings

import wsc
from wsc import ops
from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan


def test_kernel_matches_torch_on_every_tiling_and_keeps_nan() -> None:
    x = randn(7, 13)
    x[0, :3] = [np.nan, -0.0, 0.0]
    expected = torch.relu(torch.from_numpy(x)).numpy()
    run_all_tilings("relu", (7, 13), [x], {}, expected)


def test_cost_rows_are_the_elementwise_defaults() -> None:
    graph = Graph()
    graph.add(Node("x", "input", (), (6, 10), "float32"))
    node = graph.add(Node("r", "relu", ("x",), (6, 10), "float32"))
    relu = ops.kernel("relu")
    assert relu.flops((6, 10), [(6, 10)], {}) == 60
    assert relu.sram_bytes(graph, node, Cut(3, 2), 2) == 2 * (2 * 5) * 2  # input and output tiles of 2 x 5
    plan = KernelPlan("r", 6, 10, Cut(3, 2), 3, 2, 0)
    assert relu.sram_traffic(graph, node, plan, 2) == (2 * 5 * 2, 2 * 5 * 2)


class ReluMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def test_relu_mlp_compiles_and_verifies() -> None:
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(2))
    compiled = wsc.compile(ReluMLP(), (x,), "mesh-16x16", time_limit=0.3)
    assert [n.op for n in compiled.program.graph if n.is_kernel] == ["matmul", "relu", "matmul"]
    assert compiled.report["verification"]["status"] == "pass"
    np.testing.assert_allclose(compiled(x).numpy(), ReluMLP()(x).detach().numpy(), rtol=1e-5, atol=1e-5)
