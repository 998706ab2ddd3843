"""rmsnorm, log_softmax, and the norms and softmaxes legalize brings to them: each kernel against torch in
float64 under every tiling, the cost rows by hand, and modules with random weights compiled end to end.

Tolerances follow the arithmetic: a row statistic is an fp32 sum of n terms (about sqrt(n) ulp of the sum of
|terms|), which reaches every output of the row through a product (rmsnorm: relative error) or a difference
(log_softmax: absolute error in the log-sum).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_kernels import randn, run_all_tilings

import wsc
from wsc import ops
from wsc.core.errors import WscError
from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.runtime.lowering import compile_kernel

EPS = float(np.finfo(np.float32).eps)


def t64(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).double()


@pytest.mark.parametrize("rows,d", [(1, 1), (5, 13), (7, 768)])
@pytest.mark.parametrize("weighted", [True, False])
def test_rmsnorm_kernel_matches_torch_on_every_tiling(rows: int, d: int, weighted: bool) -> None:
    x, w, eps = randn(rows, d, scale=3.0) + 1.5, randn(d), 1e-5
    inputs = [x, w] if weighted else [x]
    expected = F.rms_norm(t64(x), (d,), t64(w) if weighted else None, eps=eps).numpy()
    # Relative: the sum of squares is off by sqrt(d) ulp, its root by half that; then three roundings.
    run_all_tilings("rmsnorm", (rows, d), inputs, {"eps": eps}, expected, atol=1e-30, rtol=(math.sqrt(d) + 4) * EPS)


def test_rmsnorm_eps_is_added_to_the_mean_square() -> None:
    x = randn(3, 8, scale=1e-3)  # mean square ~ 1e-6, so eps = 1e-4 dominates the root
    expected = F.rms_norm(t64(x), (8,), eps=1e-4).numpy()
    run_all_tilings("rmsnorm", (3, 8), [x], {"eps": 1e-4}, expected, atol=1e-30, rtol=8 * EPS)


def test_rmsnorm_checks() -> None:
    with pytest.raises(ValueError, match="attrs need eps"):
        compile_kernel("rmsnorm", (2, 3), [(2, 3)], {})
    with pytest.raises(ValueError, match=r"expected \[2, 3\] and \[3\]"):
        compile_kernel("rmsnorm", (2, 3), [(2, 3), (4,)], {"eps": 1e-6})


def log_softmax_tolerance(n: int, expected: np.ndarray) -> float:
    """The log-sum's error (sqrt(n) ulp of a sum of terms in (0, 1], the largest being 1) plus the rounding of
    the differences, each an ulp of the largest finite output."""
    finite = np.abs(expected[np.isfinite(expected)])
    return (math.sqrt(n) + 2) * EPS * (1.0 + float(finite.max(initial=0.0)))


@pytest.mark.parametrize("rows,n", [(1, 1), (6, 11), (4, 777)])
def test_log_softmax_kernel_matches_torch_on_every_tiling(rows: int, n: int) -> None:
    x = randn(rows, n, scale=5.0) + 20.0  # large logits: exp without the max subtracted would overflow
    x[0, 0] = 200.0
    expected = torch.log_softmax(t64(x), -1).numpy()
    run_all_tilings("log_softmax", (rows, n), [x], {}, expected, atol=log_softmax_tolerance(n, expected), rtol=0)
    scaled = torch.log_softmax(t64(x) * 0.37, -1).numpy()
    run_all_tilings("log_softmax", (rows, n), [x], {"scale": 0.37}, scaled, atol=log_softmax_tolerance(n, scaled),
                    rtol=0)


def test_log_softmax_infinities_and_nan_as_torch_gives_them() -> None:
    x = randn(5, 7)
    x[0] = -np.inf  # a row of -inf: NaN
    x[1, 3] = np.inf  # +inf in the row: NaN
    x[2, 4] = np.nan  # NaN in the row: NaN
    x[3, [1, 5]] = -np.inf  # -inf entries of a finite row: -inf, the others finite
    expected = torch.log_softmax(t64(x), -1).numpy()
    assert np.isnan(expected[:3]).all() and np.isneginf(expected[3, [1, 5]]).all()
    run_all_tilings("log_softmax", (5, 7), [x], {}, expected, atol=log_softmax_tolerance(7, expected), rtol=0)
    with pytest.raises(ValueError, match="no causal mask"):
        compile_kernel("log_softmax", (2, 3), [(2, 3)], {"causal": True})


def kernel_node(op: str, out: tuple[int, ...], *inputs: tuple[int, ...]) -> tuple[Graph, Node]:
    graph = Graph()
    for i, shape in enumerate(inputs):
        graph.add(Node(f"x{i}", "input", (), shape, "float32"))
    return graph, graph.add(Node("k", op, tuple(f"x{i}" for i in range(len(inputs))), out, "float32"))


def test_cost_rows_by_hand() -> None:
    rmsnorm, log_softmax, layernorm = ops.kernel("rmsnorm"), ops.kernel("log_softmax"), ops.kernel("layernorm")
    graph, node = kernel_node("rmsnorm", (6, 10), (6, 10), (10,))
    plan = KernelPlan("k", 6, 10, Cut(3, 2), 3, 2, 0)
    assert rmsnorm.flops((6, 10), [(6, 10), (10,)], {}) == 4 * 60
    assert rmsnorm.sram_bytes(graph, node, Cut(3, 2), 2) == (2 * 2 * 5 + 5) * 2  # x and out tiles, weight columns
    assert rmsnorm.sram_traffic(graph, node, plan, 2) == ((2 * 2 * 5 + 5) * 2, 2 * 5 * 2)
    unweighted, bare = kernel_node("rmsnorm", (6, 10), (6, 10))
    assert rmsnorm.sram_bytes(unweighted, bare, Cut(3, 2), 2) == 2 * 2 * 5 * 2
    assert rmsnorm.sram_traffic(unweighted, bare, plan, 2) == (2 * 2 * 5 * 2, 2 * 5 * 2)
    assert rmsnorm.abi(graph, node) == ((6, 10), [(6, 10), (10,)])
    graph, node = kernel_node("log_softmax", (6, 10), (6, 10))
    assert log_softmax.flops((6, 10), [(6, 10)], {}) == 4 * 60
    assert log_softmax.sram_traffic(graph, node, plan, 2) == (3 * 2 * 5 * 2, 2 * 5 * 2)
    # A norm over several trailing dims reads its [4, 5] scale and shift as [20].
    graph, node = kernel_node("layernorm", (3, 20), (3, 20), (4, 5), (4, 5))
    assert layernorm.abi(graph, node) == ((3, 20), [(3, 20), (20,), (20,)])


# ---------------------------------------------------------------------------------------------- end to end


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Weights and biases away from 1 and 0, so a dropped or swapped one shows."""
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.7 + 0.4)
    return module.eval()


def compile_and_check(module: torch.nn.Module, x: torch.Tensor, rtol: float, atol: float) -> wsc.CompiledModel:
    compiled = wsc.compile(module, (x,), "mesh-16x16", time_limit=0.3)
    assert compiled.report["verification"]["status"] == "pass"
    got, want = compiled(x), module.double()(x.double())
    module.float()
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,),
                    strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g.double().numpy(), w.detach().numpy(), rtol=rtol, atol=atol)
    return compiled


class Norms(torch.nn.Module):
    """RMSNorm and LayerNorm over one, two and three trailing dims, with and without their weights."""

    def __init__(self):
        super().__init__()
        self.rms1, self.rms2 = torch.nn.RMSNorm(5, eps=1e-3), torch.nn.RMSNorm((4, 5))
        self.rms_bare = torch.nn.RMSNorm((3, 4, 5), elementwise_affine=False)
        self.ln1, self.ln2 = torch.nn.LayerNorm(5), torch.nn.LayerNorm((4, 5), bias=False)
        self.ln_bare = torch.nn.LayerNorm((3, 4, 5), elementwise_affine=False)

    def forward(self, x):
        return (self.rms1(x), self.rms2(x), self.rms_bare(x), self.ln1(x), self.ln2(x), self.ln_bare(x),
                F.rms_norm(x, (4, 5), eps=None))


def test_norms_over_trailing_dims_with_random_weights() -> None:
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(12)) * 2 + 1
    compiled = compile_and_check(randomize(Norms()), x, rtol=0, atol=(math.sqrt(60) + 8) * EPS * 10)
    graph = compiled.program.graph
    kernels = [n for n in graph if n.is_kernel]
    assert [n.op for n in kernels] == ["rmsnorm"] * 3 + ["layernorm"] * 3 + ["rmsnorm"]
    assert [n.shape[-1] for n in kernels] == [5, 20, 60, 5, 20, 60, 20]
    assert kernels[-1].attrs["eps"] == float(torch.finfo(torch.float32).eps)  # eps=None: torch's default
    assert kernels[1].attrs["eps"] == float(torch.finfo(torch.float32).eps)  # RMSNorm's own default is None too
    assert kernels[0].attrs["eps"] == 1e-3
    assert len(kernels[2].inputs) == 1  # no weight: none read


class Softmaxes(torch.nn.Module):
    def forward(self, x):
        return tuple(f(x, d) for d in range(-x.dim(), x.dim()) for f in (F.softmax, F.log_softmax))


def test_softmax_and_log_softmax_over_every_dim() -> None:
    x = torch.randn(2, 3, 1, 5, generator=torch.Generator().manual_seed(13)) * 4
    compiled = compile_and_check(Softmaxes(), x, rtol=0, atol=(math.sqrt(5) + 2) * EPS * 20)
    ops_seen = [n.op for n in compiled.program.graph if n.is_kernel]
    assert ops_seen.count("softmax") == ops_seen.count("log_softmax") == 8


def test_softmax_of_rank_0_and_one_element() -> None:
    class Scalars(torch.nn.Module):
        def forward(self, x):
            s = x.sum()
            return s.softmax(0), s.log_softmax(-1), x[:1, :1].softmax(0), x[:1].log_softmax(1)

    compile_and_check(Scalars(), torch.randn(2, 3, generator=torch.Generator().manual_seed(14)), rtol=0, atol=1e-6)


def test_refusals() -> None:
    class Widen(torch.nn.Module):
        def forward(self, x):
            return F.log_softmax(x, -1, dtype=torch.float64)

    with pytest.raises(WscError, match=r"aten\.log_softmax\.int .*a softmax into torch\.float64 from float32"):
        wsc.compile(Widen(), (torch.randn(2, 3),), "mesh-16x16", time_limit=0.3)


# ------------------------------------------------------------------------------- RMSNorm spelled out


def test_hugging_face_llama_rmsnorm_becomes_one_kernel() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(15)) * 2 + 1
    module = randomize(LlamaRMSNorm(16, eps=1e-5))
    compiled = compile_and_check(module, x, rtol=(math.sqrt(16) + 4) * EPS, atol=1e-30)
    (kernel,) = [n for n in compiled.program.graph if n.is_kernel]
    assert kernel.op == "rmsnorm" and kernel.attrs["eps"] == 1e-5 and len(kernel.inputs) == 2


class SpelledOut(torch.nn.Module):
    """The chain in the forms it is recognised in (x * x, no weight, the weight on the right) and in forms it
    must not be: the mean of another tensor's square, the variance read again, a weight that is not [D]."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(5, generator=torch.Generator().manual_seed(16)))
        self.column = torch.nn.Parameter(torch.randn(3, 1, generator=torch.Generator().manual_seed(17)))

    def forward(self, x):
        fused = (x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-3),
                 x * torch.rsqrt(x.pow(2).mean(dim=[2], keepdim=True) + 1e-3) * self.weight)
        variance = x.pow(2).mean(-1, keepdim=True)
        other = (x + 1) * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-3)
        column = self.column * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-3))
        return (*fused, x * torch.rsqrt(variance + 1e-3), variance, other, column)


def test_the_chain_is_one_kernel_only_where_nothing_else_reads_it() -> None:
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(18)) + 0.5
    compiled = compile_and_check(SpelledOut(), x, rtol=0, atol=(math.sqrt(5) + 4) * EPS * 20)
    graph = compiled.program.graph
    norms = [n for n in graph if n.op == "rmsnorm"]
    # The two recognised chains, and the weighted one's mean-then-weight at the column: x * r is one, * column not.
    assert [len(n.inputs) for n in norms] == [1, 2, 1]
    assert {graph[o].op for o in graph.outputs[:2]} == {"rmsnorm"}
    assert sum(n.op == "mean" for n in graph) == 2  # the variance read again, and the mean of x + 1's chain
