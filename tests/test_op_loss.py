"""cross_entropy and nll_loss of class-index targets: the nll kernels against torch under every tiling, a sum
over a run-time divisor, the cost rows by hand, and losses of every reduction compiled end to end.

The nll kernels pick and negate (one rounding with class weights), so they match torch to an ulp; a mean adds
an fp32 sum of M terms (sqrt(M) ulp of the sum of |terms|) and one division.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_kernels import randn, rng, run_all_tilings

import wsc
from wsc import ops
from wsc.core.errors import WscError
from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.runtime.lowering import compile_kernel

EPS = float(np.finfo(np.float32).eps)


def t64(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).double() if x.dtype.kind == "f" else torch.from_numpy(x)


def log_probs(rows: int, classes: int) -> np.ndarray:
    return torch.log_softmax(torch.from_numpy(randn(rows, classes, scale=3.0)), -1).numpy()


@pytest.mark.parametrize("rows,classes", [(1, 1), (9, 7), (40, 301)])
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_kernels_match_torch_on_every_tiling(rows: int, classes: int, weighted: bool) -> None:
    logp = log_probs(rows, classes)
    targets = rng.integers(0, classes, rows).astype(np.int64)
    targets[::3] = -7  # ignored: any number, even one outside the classes
    weight = (rng.random(classes) + 0.5).astype(np.float32)
    attrs = {"ignore_index": -7, "classes": classes, "weighted": weighted}
    extra = [weight] if weighted else []
    expected = F.nll_loss(t64(logp), t64(targets), t64(weight) if weighted else None, ignore_index=-7,
                          reduction="none").numpy()[:, None]
    run_all_tilings("nll", (rows, 1), [logp, targets, *extra], attrs, expected, atol=0, rtol=EPS)
    kept = np.where(targets != -7, weight[np.where(targets != -7, targets, 0)] if weighted else 1.0, 0.0)
    run_all_tilings("nll_weight", (rows, 1), [targets, *extra], attrs, kept[:, None], atol=0, rtol=0)


def test_a_target_out_of_range_is_an_error() -> None:
    kernel = compile_kernel("nll", (3, 1), [(3, 4), (3,)], {"classes": 4, "ignore_index": -100})
    out = np.zeros((3, 1), np.float32)
    with pytest.raises(ValueError, match=r"target 4 at position 2 is outside \[0, 4\)"):
        kernel(out, [log_probs(3, 4), np.array([0, -100, 4], np.int64)], np.array([[0, 3, 0, 1]], np.int64))
    with pytest.raises(ValueError, match="target -1 at position 0"):
        kernel(out, [log_probs(3, 4), np.array([-1, 0, 0], np.int64)], np.array([[0, 3, 0, 1]], np.int64))


def test_sum_over_a_divisor_of_the_row() -> None:
    x, divisor = randn(6, 50) + 2.0, np.abs(randn(6, 1)) + 0.5
    divisor[0] = 0.0  # a mean over no kept target: 0 / 0 or x / 0, as torch's
    x[0] = 0.0
    expected = (t64(x).sum(-1, keepdim=True) / t64(divisor)).numpy()
    tolerance = 2 * math.sqrt(50) * EPS * float((np.abs(x).sum(-1, keepdims=True) / np.maximum(divisor, 0.5)).max())
    run_all_tilings("sum", (6, 1), [x, divisor], {"row_divisor": True}, expected, atol=tolerance, rtol=0)
    graph = Graph()
    graph.add(Node("x", "input", (), (6, 50), "float32"))
    graph.add(Node("d", "input", (), (6, 1), "float32"))
    node = graph.add(Node("s", "sum", ("x", "d"), (6, 1), "float32", {"row_divisor": True}))
    plan = KernelPlan("s", 6, 1, Cut(2, 1, 3), 6, 1, 0, 50)
    split = ops.kernel("sum").run_k_split(node, plan, [x, divisor], (6, 1), plan.tiles.copy(), compile_kernel, 1)
    np.testing.assert_allclose(split, expected, atol=tolerance, rtol=0)


def test_cost_rows_by_hand() -> None:
    graph = Graph()
    graph.add(Node("logp", "input", (), (10, 30), "float32"))
    graph.add(Node("t", "input", (), (10,), "int64"))
    graph.add(Node("w", "input", (), (30,), "float32"))
    node = graph.add(Node("n", "nll", ("logp", "t", "w"), (10, 1), "float32", {"classes": 30, "weighted": True}))
    nll = ops.kernel("nll")
    assert nll.abi(graph, node) == ((10, 1), [(10, 30), (10,), (30,)])
    # 2 of the tile's 4 rows in flight: a target, a picked log-probability and the output each; every class
    # weight.
    assert nll.sram_bytes(graph, node, Cut(3, 1), 2) == 2 * (8 + 2 * 2) + 30 * 2
    plan = KernelPlan("n", 10, 1, Cut(3, 1), 3, 1, 0)
    assert nll.sram_traffic(graph, node, plan, 2) == (4 * (8 + 2 * 2), 4 * 2)
    counted = graph.add(Node("c", "nll_weight", ("t",), (10, 1), "float32", {"classes": 30}))
    assert ops.kernel("nll_weight").abi(graph, counted) == ((10, 1), [(10,)])
    assert ops.kernel("nll_weight").sram_bytes(graph, counted, Cut(3, 1), 2) == 2 * (8 + 2)


# ---------------------------------------------------------------------------------------------- end to end


class Losses(torch.nn.Module):
    """cross_entropy of every reduction over [N, C] and [N, C, d1, d2] logits, with class weights and an
    ignored class, of an unbatched [C] row, and nll_loss of log-probabilities."""

    def __init__(self, classes: int):
        super().__init__()
        self.register_buffer("weight", torch.rand(classes, generator=torch.Generator().manual_seed(21)) + 0.5)

    def forward(self, x, t, x4, t3):
        return (F.cross_entropy(x, t), F.cross_entropy(x, t, reduction="sum"), F.cross_entropy(x, t, reduction="none"),
                F.cross_entropy(x4, t3, weight=self.weight, ignore_index=2),
                F.cross_entropy(x4, t3, weight=self.weight, reduction="none"),
                F.cross_entropy(x[0], t[0]), F.nll_loss(F.log_softmax(x, 1), t, ignore_index=3))


def test_losses_of_every_reduction_compile_and_match_torch() -> None:
    generator = torch.Generator().manual_seed(22)
    classes = 5
    x, x4 = torch.randn(6, classes, generator=generator) * 3, torch.randn(2, classes, 3, 4, generator=generator)
    t, t3 = torch.randint(0, classes, (6,), generator=generator), torch.randint(0, classes, (2, 3, 4),
                                                                              generator=generator)
    t[1], t3[0, 1] = 3, 2
    module = Losses(classes).eval()
    # The greedy placer: where the kernels sit changes nothing they compute.
    compiled = wsc.compile(module, (x, t, x4, t3), "mesh-16x16", time_limit=0.3, strategy="greedy")
    assert compiled.report["verification"]["status"] == "pass"
    want = module.double()(x.double(), t, x4.double(), t3)
    got = compiled(x, t, x4, t3)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g.double().numpy(), w.numpy(), atol=2 * math.sqrt(24) * EPS * 24 * 10, rtol=0)
    kernels = [n.op for n in compiled.program.graph if n.is_kernel]
    assert kernels.count("nll") == kernels.count("log_softmax") == 7


def test_a_mean_over_no_kept_target_is_nan_as_torch_gives_it() -> None:
    class AllIgnored(torch.nn.Module):
        def forward(self, x, t):
            return F.cross_entropy(x, t, ignore_index=3)

    x, t = torch.randn(2, 5), torch.full((2,), 3)
    assert torch.isnan(AllIgnored()(x, t))
    # Verification counts any NaN as a failure (an uncomputed tile is NaN), so this one is checked here.
    compiled = wsc.compile(AllIgnored(), (x, t), "mesh-16x16", time_limit=0.3, verify=False)
    assert torch.isnan(compiled(x, t))


def test_refusals() -> None:
    x, t = torch.randn(4, 5), torch.randint(0, 5, (4,))

    class Smoothed(torch.nn.Module):
        def forward(self, x, t):
            return F.cross_entropy(x, t, label_smoothing=0.1)

    with pytest.raises(WscError, match=r"aten\.cross_entropy_loss\.default .*label_smoothing \(only 0"):
        wsc.compile(Smoothed(), (x, t), "mesh-16x16", time_limit=0.3)

    class Soft(torch.nn.Module):
        def forward(self, x, t):
            return F.cross_entropy(x, x.softmax(1))

    with pytest.raises(WscError, match=r"aten\.cross_entropy_loss\.default .*float32 targets \(class probab"):
        wsc.compile(Soft(), (x, t), "mesh-16x16", time_limit=0.3)
