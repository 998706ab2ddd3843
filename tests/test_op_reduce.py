"""Row reductions (sum, mean, var, std, amax, amin): each kernel against torch in float64 under every tiling,
a row split across PEs, the cost rows by hand, and every ATen reduction over every dim combination end to end.

Tolerances follow the arithmetic: an fp32 sum of n terms is off by about sqrt(n) ulp of the sum of |terms|
(the kernel sums in vector lanes, torch pairwise); var and std are two passes, so their error is that of a
sum of n squared deviations, relative to the result. amax and amin are exact.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from test_kernels import SENTINEL, randn, run_all_tilings

import wsc
from wsc import ops
from wsc.core.errors import WscError
from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.runtime.lowering import compile_kernel

EPS = float(np.finfo(np.float32).eps)


def sum_tolerance(x: np.ndarray) -> float:
    """sqrt(n) ulp of the largest row's sum of |terms| (twice, for the rounding of the result itself)."""
    n = x.shape[-1]
    return 2 * math.sqrt(max(n, 1)) * EPS * float(np.abs(x.astype(np.float64)).sum(axis=-1).max(initial=0.0))


def t64(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).double()


SHAPES = [(1, 1), (7, 13), (3, 1000)]
# torch warns of a var over fewer elements than its correction, whose NaN or inf the tests check.
pytestmark = pytest.mark.filterwarnings("ignore:.*degrees of freedom is <= 0:UserWarning")


@pytest.mark.parametrize("rows,n", SHAPES)
def test_sum_and_mean_kernels_match_torch_on_every_tiling(rows: int, n: int) -> None:
    x = randn(rows, n, scale=2.0) + 3.0  # away from 0, so the sums are not small by cancellation
    run_all_tilings("sum", (rows, 1), [x], {}, t64(x).sum(-1, keepdim=True).numpy(), atol=sum_tolerance(x), rtol=0)
    run_all_tilings("mean", (rows, 1), [x], {}, t64(x).mean(-1, keepdim=True).numpy(),
                    atol=sum_tolerance(x) / n, rtol=0)
    # The divisor and root a split row finishes with.
    expected = (t64(x).sum(-1, keepdim=True) / 7.5).sqrt().numpy()
    run_all_tilings("sum", (rows, 1), [x], {"divisor": 7.5, "root": True}, expected, atol=sum_tolerance(x), rtol=0)


@pytest.mark.parametrize("rows,n", SHAPES)
@pytest.mark.parametrize("correction", [0.0, 1.0, 2.5])
def test_var_and_std_kernels_match_torch_on_every_tiling(rows: int, n: int, correction: float) -> None:
    # |mean| >> std: a single pass (sum of squares minus squared sum) would lose every digit in fp32.
    x = randn(rows, n, scale=0.5) + 1000.0
    var = torch.var(t64(x), -1, correction=correction, keepdim=True).numpy()
    tolerance = 4 * (math.sqrt(n) + 2) * EPS * float(np.nanmax(np.abs(var))) if n > correction else 0.0
    attrs = {"correction": correction}
    run_all_tilings("var", (rows, 1), [x], attrs, var, atol=tolerance, rtol=0)
    run_all_tilings("std", (rows, 1), [x], attrs, np.sqrt(var), atol=tolerance, rtol=1e-6)


def test_var_of_too_few_elements_is_nan_or_inf_as_torch_gives_it() -> None:
    x = randn(4, 2)
    for correction in (2.0, 3.0):  # divisor 0: 0 / 0 only when every deviation is 0, else inf
        expected = torch.var(t64(x), -1, correction=correction, keepdim=True).numpy()
        run_all_tilings("var", (4, 1), [x], {"correction": correction}, expected)
    one = randn(3, 1)
    run_all_tilings("var", (3, 1), [one], {"correction": 1.0}, np.full((3, 1), np.nan))


def test_var_with_a_given_center_sums_the_squared_deviations_from_it() -> None:
    x, center = randn(5, 17) + 4.0, randn(5, 1)
    expected = ((t64(x) - t64(center)) ** 2).sum(-1, keepdim=True).numpy()
    run_all_tilings("var", (5, 1), [x, center], {"center": True, "divisor": 1.0}, expected,
                    atol=sum_tolerance((x - center) ** 2), rtol=0)


@pytest.mark.parametrize("op", ["amax", "amin"])
def test_extrema_are_exact_and_propagate_nan(op: str) -> None:
    x = randn(6, 37, scale=10.0)
    x[1, 5] = np.nan  # NaN anywhere in the row: the row's answer is NaN, as torch gives it
    x[2, 0] = np.nan
    x[3] = -np.inf
    x[4, 9] = np.inf
    x[5, 36] = -np.inf
    expected = (torch.amax if op == "amax" else torch.amin)(t64(x), -1, keepdim=True).numpy()
    assert np.isnan(expected[1:3]).all()
    run_all_tilings(op, (6, 1), [x], {}, expected, atol=0, rtol=0)


def test_sum_propagates_nan_and_inf() -> None:
    x = randn(4, 9)
    x[0, 3], x[1, 2], x[2, 1], x[2, 2] = np.nan, np.inf, np.inf, -np.inf
    expected = t64(x).sum(-1, keepdim=True).numpy()
    run_all_tilings("sum", (4, 1), [x], {}, expected, atol=sum_tolerance(np.nan_to_num(x[3:], posinf=0)), rtol=0)


def test_a_tile_with_no_column_writes_nothing() -> None:
    kernel = compile_kernel("sum", (3, 1), [(3, 4)], {})
    out = np.full((3, 1), SENTINEL, dtype=np.float32)
    kernel(out, [randn(3, 4)], np.array([[0, 3, 0, 0], [1, 2, 1, 1]], dtype=np.int64))
    assert np.all(out == SENTINEL)


def reduction_node(op: str, rows: int, n: int, **attrs) -> tuple[Graph, Node]:
    graph = Graph()
    graph.add(Node("x", "input", (), (rows, n), "float32"))
    return graph, graph.add(Node("r", op, ("x",), (rows, 1), "float32", attrs))


@pytest.mark.parametrize("op,attrs,reference", [
    ("sum", {}, lambda x: x.sum(-1)),
    ("mean", {}, lambda x: x.mean(-1)),
    ("var", {"correction": 1.0}, lambda x: x.var(-1)),
    ("std", {"correction": 0.0}, lambda x: x.std(-1, correction=0)),
    ("amax", {}, lambda x: x.amax(-1)),
    ("amin", {}, lambda x: x.amin(-1)),
])
@pytest.mark.parametrize("splits", [2, 3, 5])
def test_a_row_split_across_pes_gives_the_whole_row_answer(op, attrs, reference, splits) -> None:
    rows, n = 5, 1001
    x = randn(rows, n) + 50.0
    graph, node = reduction_node(op, rows, n, **attrs)
    kernel = ops.kernel(op)
    assert kernel.reduction_dim(graph, node) == n
    plan = KernelPlan("r", rows, 1, Cut(2, 1, splits), 2 * splits, 1, 0, n)
    out = kernel.run_k_split(node, plan, [x], (rows, 1), plan.tiles.copy(), compile_kernel, 1)
    expected = reference(t64(x)).numpy()[:, None]
    tolerance = sum_tolerance(x) if op in ("sum", "mean") else 4 * math.sqrt(n) * EPS * float(np.abs(expected).max())
    np.testing.assert_allclose(out, expected, atol=tolerance / (n if op == "mean" else 1), rtol=0)


def test_cost_rows_by_hand() -> None:
    graph, node = reduction_node("var", 10, 300, correction=1.0)
    var, total = ops.kernel("var"), ops.kernel("sum")
    assert var.flops((10, 1), [(10, 300)], {}) == 4 * 3000
    assert total.flops((10, 1), [(10, 300)], {}) == 3000
    assert var.abi(graph, node) == ((10, 1), [(10, 300)])
    # 2 rows in flight (of the tile's 4) of a 150-element slice at 2 bytes, an fp32 result per row, and one
    # for the neighbour's partial.
    assert var.sram_bytes(graph, node, Cut(3, 1, 2), 2) == 2 * 150 * 2 + 2 * (4 + 4)
    assert var.sram_bytes(graph, node, Cut(3, 1, 1), 2) == 2 * 300 * 2 + 2 * 4
    plan = KernelPlan("r", 10, 1, Cut(3, 1, 2), 6, 1, 0, 300)
    assert var.sram_traffic(graph, node, plan, 2) == (2 * 4 * 150 * 2, 4 * 2)  # two passes over the slice
    assert total.sram_traffic(graph, node, plan, 2) == (4 * 150 * 2, 4 * 2)


# ---------------------------------------------------------------------------------------------- end to end


class Reductions(torch.nn.Module):
    """Every reduction of `fn` over every combination of dims, with and without keepdim, as one output each."""

    def __init__(self, fn, rank: int):
        super().__init__()
        self.fn = fn
        self.dims = [list(c) for k in range(1, rank + 1) for c in itertools.combinations(range(-rank, 0), k)]

    def forward(self, x):
        return tuple(self.fn(x, dims, keep) for dims in self.dims for keep in (False, True))


REDUCTIONS = {
    "sum": lambda x, d, k: x.sum(d, keepdim=k),
    "mean": lambda x, d, k: x.mean(d, keepdim=k),
    "amax": lambda x, d, k: x.amax(d, keepdim=k),
    "amin": lambda x, d, k: x.amin(d, keepdim=k),
    "var": lambda x, d, k: x.var(d, keepdim=k),
    "std": lambda x, d, k: x.std(d, correction=0, keepdim=k),
}


def compile_and_check(module: torch.nn.Module, x: torch.Tensor, atol: float) -> wsc.Compiled:
    compiled = wsc.compile(module, (x,), "mesh-16x16", time_limit=0.3)
    assert compiled.report["verification"]["status"] == "pass"
    got, want = compiled(x), module(x.double())
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,),
                    strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g.double().numpy(), w.numpy(), atol=atol, rtol=0)
    return compiled


@pytest.mark.parametrize("names", [("sum", "mean"), ("amax", "amin"), ("var", "std")], ids="-".join)
def test_every_dim_combination_of_a_rank_3_input(names: tuple[str, str]) -> None:
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(3)) + 2.0

    class Both(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = (Reductions(REDUCTIONS[name], 3) for name in names)

        def forward(self, x):
            return self.first(x) + self.second(x)

    compiled = compile_and_check(Both(), x, atol=2 * math.sqrt(60) * EPS * 60 * 5)
    for name in names:
        assert sum(n.op == name for n in compiled.program.graph) == 2 * 7  # one kernel per output


def test_every_dim_combination_of_a_rank_4_input_and_none() -> None:
    x = torch.randn(2, 3, 1, 5, generator=torch.Generator().manual_seed(4)) - 1.0
    module = Reductions(REDUCTIONS["sum"], 4)
    compile_and_check(module, x, atol=2 * math.sqrt(30) * EPS * 30 * 5)

    class Whole(torch.nn.Module):
        def forward(self, x):
            return x.sum(), x.mean(), x.amax(), x.amin(), x.var(), x.std(), x.max(), x.min(), x.sum(dim=[])

    compile_and_check(Whole(), x, atol=2 * math.sqrt(30) * EPS * 30 * 5)


def test_rank_0_and_one_element() -> None:
    class Scalars(torch.nn.Module):
        def forward(self, x):
            s = x.sum()
            return s.sum(), s.mean(0), s.amax(-1, keepdim=True), x[:1, :1].sum(-1), x[:1, :1].var(0, correction=0)

    compile_and_check(Scalars(), torch.randn(2, 3, generator=torch.Generator().manual_seed(5)), atol=1e-6)


def test_var_mean_std_mean_and_max_min_values() -> None:
    class Module(torch.nn.Module):
        def forward(self, x):
            var, mean = torch.var_mean(x, (0, 2), correction=2)
            std, mean2 = torch.std_mean(x, -1, keepdim=True)
            values, _ = x.max(1)
            low = x.min(dim=0, keepdim=True).values
            return var, mean, std, mean2, values, low, torch.var(x, 1, unbiased=False)

    x = torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(6)) * 3
    compiled = compile_and_check(Module(), x, atol=2 * math.sqrt(72) * EPS * 72 * 10)
    assert {n.op for n in compiled.program.graph if n.is_kernel} == {"var", "mean", "std", "amax", "amin"}


def test_a_row_too_long_for_a_pe_is_split_and_verifies() -> None:
    class Module(torch.nn.Module):
        def forward(self, x):
            return x.mean(), x.var(-1), x.amax(-1)

    x = torch.randn(2, 40001, generator=torch.Generator().manual_seed(7)) + 5.0
    compiled = compile_and_check(Module(), x, atol=2 * math.sqrt(80002) * EPS * 80002 * 6 / 80002)
    splits = {compiled.program.graph[name].op: plan.k_splits for layer in compiled.program.layers
              for name, plan in layer.kernels.items()}
    assert min(splits.values()) > 1, splits


def test_refusals() -> None:
    class Indices(torch.nn.Module):
        def forward(self, x):
            return x.max(1)

    with pytest.raises(WscError, match=r"aten\.max\.dim .*the indices of max/min"):
        wsc.compile(Indices(), (torch.randn(2, 3),), "mesh-16x16", time_limit=0.3)

    class Widen(torch.nn.Module):
        def forward(self, x):
            return x.sum(-1, dtype=torch.float64)

    with pytest.raises(WscError, match=r"aten\.sum\.dim_IntList .*a reduction of float32 into float64"):
        wsc.compile(Widen(), (torch.randn(2, 3),), "mesh-16x16", time_limit=0.3)

    class Count(torch.nn.Module):
        def forward(self, ids):
            return ids.sum(-1)

    with pytest.raises(WscError, match=r"aten\.sum\.dim_IntList .*a reduction of int64"):
        wsc.compile(Count(), (torch.ones(2, 3, dtype=torch.int64),), "mesh-16x16", time_limit=0.3)
