"""Convolutions (im2col feeding the matmul), pooling and batch norm: each against torch in float64, with
tolerances from the arithmetic, their cost rows, refusals, and a small CNN compiled end to end.

The legal graph is run on the host node by node (layout ops moved, every kernel JIT-compiled and run over an
uneven tiling of its output), which checks the rules, the gather and the kernels without placing anything.
One model holds many cases, so it is captured once.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_kernels import randn, run_all_tilings, tilings
from torch import nn

import wsc
from wsc import ops
from wsc.core.errors import WscError
from wsc.core.ir import Graph, Node
from wsc.core.program import Cut, KernelPlan
from wsc.frontend.capture import capture
from wsc.passes.legalize import Legalize
from wsc.runtime.executor import kernel_attrs
from wsc.runtime.lowering import compile_kernel

EPS = float(np.finfo(np.float32).eps)


class Each(nn.Module):
    """Applies its i-th module to its i-th input: many cases in one capture."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.cases = nn.ModuleList(modules)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(m(x) for m, x in zip(self.cases, xs, strict=True))


class Call(nn.Module):
    def __init__(self, fn, **kwargs):
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, **self.kwargs)


def run_legal(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[Graph, list[np.ndarray]]:
    """The legal graph of `model` and its outputs, computed node by node on the host."""
    captured = capture(model, inputs)
    graph = Legalize().run(captured.graph)
    env: dict[str, np.ndarray] = {n.name: x.numpy() for n, x in zip(graph.inputs, inputs, strict=True)}
    for node in graph:
        if node.op == "param":  # a filter may be viewed in another shape: the store's elements in that shape
            env[node.name] = captured.weights[node.attrs["key"]].detach().numpy().reshape(node.shape)
        elif node.op == "const":
            env[node.name] = node.attrs["value"]
        elif ops.is_layout(node.op):
            env[node.name] = ops.layout_op(node.op).move(node, *(env[i] for i in node.inputs))
        elif node.op != "input":
            op = ops.kernel(node.op)
            out_shape, in_shapes = op.abi(graph, node)
            args = [np.ascontiguousarray(env[i], dtype=np.float32).reshape(s)
                    for i, s in zip(node.inputs, in_shapes, strict=True)]
            out = np.full(out_shape, np.nan, dtype=np.float32)
            rows, cols = ops.output_view(node.shape)
            compile_kernel(node.op, out_shape, in_shapes, kernel_attrs(node))(
                out, args, tilings(rows, cols)["uneven_shuffled"])
            env[node.name] = out.reshape(node.shape)
    return graph, [env[o] for o in graph.outputs]


def kernel_behind(graph: Graph, name: str) -> Node:
    """The kernel whose value `name` is, through layout ops."""
    node = graph[name]
    while ops.is_layout(node.op):
        node = graph[node.inputs[0]]
    return node


def in_float64(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return copy.deepcopy(module).double()(x.double()).numpy()


# ---------------------------------------------------------------------------------------------- convolution

class AtenConvolution(nn.Module):
    """The ATen op a decomposed graph holds for every convolution."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 4, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.convolution(x, self.weight, None, [1, 2], [0, 1], [1, 1], False, [0, 0], 1)


class ComputedFilter(AtenConvolution):
    """A filter that is not a parameter as it stands: the matmul reads it through a reshape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * 0.5, padding=1, groups=1)


# (name, module, input shape): every stride, padding, dilation, groups and bias the rule distinguishes.
CONVS = [
    ("3x3_pad1_bias", nn.Conv2d(3, 8, 3, padding=1), (2, 3, 9, 10)),
    ("3x5_stride2x1_pad1x2", nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2), bias=False), (2, 4, 9, 11)),
    ("dilation2_stride2_bias", nn.Conv2d(4, 6, 3, stride=2, dilation=2, bias=True), (1, 4, 13, 12)),
    ("groups2_same_bias", nn.Conv2d(4, 8, 3, padding="same", groups=2), (2, 4, 7, 8)),
    ("even_same_pads_after", nn.Conv2d(4, 4, (4, 2), padding="same", dilation=(1, 3), bias=False), (1, 4, 9, 10)),
    ("depthwise_x2_stride2_bias", nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=6), (2, 6, 9, 9)),
    ("depthwise", nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), (1, 6, 8, 7)),
    ("1x1_bias", nn.Conv2d(8, 16, 1), (2, 8, 5, 6)),
    ("1x1_stride2", nn.Conv2d(8, 16, 1, stride=2, bias=False), (1, 8, 7, 6)),
    ("7x7_stride2_pad3", nn.Conv2d(3, 5, 7, stride=2, padding=3, bias=False), (1, 3, 17, 16)),
    ("valid_bias", nn.Conv2d(4, 6, 3, padding="valid"), (2, 4, 6, 7)),
    ("stride3_over_kernel2", nn.Conv2d(4, 6, 2, stride=3, padding=1, groups=2, bias=False), (1, 4, 10, 11)),
    ("unbatched", nn.Conv2d(3, 4, 3, padding=1), (3, 6, 5)),
    ("conv1d_groups2_dilated_bias", nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2), (2, 4, 15)),
    ("conv1d_depthwise_same", nn.Conv1d(4, 4, 5, padding="same", groups=4, bias=False), (2, 4, 9)),
    ("conv3d_bias", nn.Conv3d(2, 4, (2, 3, 3), stride=(1, 2, 2), padding=1), (1, 2, 4, 6, 5)),
    ("aten_convolution", AtenConvolution(), (1, 4, 6, 7)),
    ("computed_filter", ComputedFilter(), (2, 4, 5, 6)),
]


def conv_error_bound(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    """sqrt(K) ulps of sum |x| |w| (+ |bias|) for each output, K = C/groups * prod(kernel) products: the
    rounding of a K-term fp32 dot product, summed in any order."""
    absolute = copy.deepcopy(module).double()
    with torch.no_grad():
        for p in absolute.parameters():
            p.abs_()
        bound = absolute(x.double().abs()).numpy()
    k = math.prod(module.weight.shape[1:])
    return 2 * math.sqrt(k) * EPS * bound


def test_convolutions_match_torch_over_stride_padding_dilation_groups_and_bias() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    inputs = tuple(torch.randn(shape, generator=generator) for _, _, shape in CONVS)
    model = Each([m for _, m, _ in CONVS]).eval()
    graph, outputs = run_legal(model, inputs)
    for (name, module, _), x, got in zip(CONVS, inputs, outputs, strict=True):
        want = in_float64(module, x)
        assert got.shape == want.shape, name
        np.testing.assert_array_less(np.abs(got - want), conv_error_bound(module, x) + 1e-30, err_msg=name)
    gathers = [graph[m.inputs[0]].op for m in graph.nodes_of("matmul")]
    assert gathers.count("permute") == 1 and gathers.count("im2col") == len(CONVS) - 1  # 1x1: no windows to gather
    kernels = [n.op for n in graph if n.is_kernel]
    # One matmul per convolution, and an add for each grouped one with a bias (the matmul's bias is one row).
    assert kernels.count("matmul") == len(CONVS)
    assert kernels.count("add") == 3
    assert kernels.count("mul") == 1  # the computed filter's
    assert set(kernels) == {"matmul", "add", "mul"}


def test_conv_cost_rows_count_the_convolution_and_its_filter_is_the_matmul_weight() -> None:
    torch.manual_seed(0)
    conv, grouped = nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.Conv2d(6, 12, (3, 1), groups=3, bias=False)
    x = torch.randn(2, 6, 9, 8)
    graph = Legalize().run(capture(Each([conv, grouped]).eval(), (x, x)).graph)
    dense, by_group = graph.nodes_of("matmul")
    k = 6 * 3 * 3
    assert dense.flops == 2 * (2 * 5 * 4) * 8 * k + 2 * 5 * 4 * 8  # the conv's multiply-adds, and its bias
    assert by_group.flops == 2 * (2 * 7 * 8) * 12 * (6 // 3 * 3)
    for node, shape, key in [(dense, (8, k), "cases.0.weight"), (by_group, (3, 4, 6), "cases.1.weight")]:
        filt = graph[node.inputs[1]]
        assert filt.op == "param" and filt.shape == shape and filt.attrs["key"] == key
    # A PE holds the filter's columns over K, as a linear layer's weight, in either mode, beside two rows of
    # the im2col'd input in flight, their fp32 partial sums and the bias's columns.
    matmul, cut, size = ops.kernel("matmul"), Cut(2, 2), 2
    tr, tc = math.ceil(2 * 5 * 4 / 2), 8 // 2
    held = 2 * k * size + 2 * tc * 4 + k * tc * size + tc * size
    assert matmul.sram_bytes(graph, dense, cut, size) == matmul.sram_bytes(graph, dense, cut, size, True) == held
    assert graph[dense.inputs[0]].op == "im2col" and graph[dense.inputs[0]].shape == (1, tr * 2, k)


def test_a_filter_shared_by_two_convolutions_is_one_weight() -> None:
    conv = nn.Conv2d(3, 4, 3)
    graph = Legalize().run(capture(Each([conv, conv]).eval(), (torch.randn(1, 3, 5, 5), torch.randn(1, 3, 6, 6))).graph)
    assert [n.shape for n in graph.params if n.attrs["key"].endswith("weight")] == [(4, 27)]


# ---------------------------------------------------------------------------------------------------- pooling

POOLS = [
    ("max_3x3_s2_pad1", nn.MaxPool2d(3, 2, 1), (2, 3, 9, 10)),
    ("max_ceil_dilated", nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True), (1, 3, 10, 11)),
    ("max_2x3_stride_default", nn.MaxPool2d((2, 3)), (1, 2, 7, 9)),
    ("max_with_unread_indices", Call(lambda x: F.max_pool2d(x, 2, return_indices=True)[0]), (1, 2, 6, 5)),
    ("max1d", nn.MaxPool1d(3, 2, 1, ceil_mode=True), (2, 3, 10)),
    ("max_unbatched", nn.MaxPool2d(2), (3, 6, 6)),
    ("avg_pad_counted", nn.AvgPool2d(3, 2, 1), (2, 3, 9, 10)),
    ("avg_pad_not_counted_ceil", nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (1, 3, 10, 9)),
    ("avg_ceil_counted", nn.AvgPool2d(2, 2, ceil_mode=True), (1, 2, 7, 9)),
    ("avg_divisor_override", nn.AvgPool2d(3, 1, 1, divisor_override=5), (1, 2, 6, 6)),
    ("avg1d_not_counted", nn.AvgPool1d(4, 3, 2, count_include_pad=False), (2, 3, 11)),
    ("adaptive_global", nn.AdaptiveAvgPool2d(1), (2, 5, 7, 6)),
    ("adaptive_uneven", nn.AdaptiveAvgPool2d((3, 4)), (1, 3, 7, 10)),
    ("adaptive_upsampling", nn.AdaptiveAvgPool2d((5, 2)), (1, 2, 3, 4)),
    ("adaptive1d", nn.AdaptiveAvgPool1d(4), (2, 3, 9)),
    ("adaptive_unbatched", nn.AdaptiveAvgPool2d((2, 3)), (3, 5, 7)),
]


def test_pools_match_torch() -> None:
    generator = torch.Generator().manual_seed(2)
    inputs = tuple(torch.randn(shape, generator=generator) for _, _, shape in POOLS)
    inputs[0][0, 0, 1, 2] = float("nan")  # a window holding NaN pools to NaN, as in torch
    graph, outputs = run_legal(Each([m for _, m, _ in POOLS]).eval(), inputs)
    for (name, module, _), x, got, out in zip(POOLS, inputs, outputs, graph.outputs, strict=True):
        want = in_float64(module, x)
        assert got.shape == want.shape, name
        if name.startswith("max"):
            np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=name)  # a max is exact
        else:
            # window - 1 fp32 additions of |x| at most, and the divide: sqrt(window) ulps of the mean of |x|.
            window = kernel_behind(graph, out).attrs["window"]
            bound = 2 * math.sqrt(window) * EPS * in_float64(module, x.abs()) + EPS * np.abs(want)
            np.testing.assert_array_less(np.abs(got - want), bound + 1e-30, err_msg=name)
    assert np.isnan(outputs[0][0, 0, 0, 1]) and np.isnan(outputs[0][0, 0, 1, 1])
    # A global pool has the channels as its columns, as the linear head that reads it has its classes.
    assert kernel_behind(graph, graph.outputs[11]).shape == (2, 1, 1, 5)


def test_pool_kernel_on_every_tiling_and_its_cost_rows() -> None:
    windows = randn(6, 5, 9)
    windows[2, 3, 4] = np.nan
    run_all_tilings("pool", (6, 5), [windows], {"mode": "max", "window": 9}, np.max(windows, axis=-1), atol=0, rtol=0)
    divisors = (np.arange(10, dtype=np.float32).reshape(2, 5) % 4 + 1)
    expected = windows.astype(np.float64).sum(-1) / np.tile(divisors, (3, 1))
    run_all_tilings("pool", (6, 5), [windows, divisors], {"mode": "mean", "window": 9}, expected)
    run_all_tilings("pool", (6, 5), [windows], {"mode": "mean", "window": 9, "divisor": 9.0},
                    windows.astype(np.float64).mean(-1))
    graph = Graph()
    graph.add(Node("w", "input", (), (2, 3, 5, 9), "float32"))
    graph.add(Node("d", "const", (), (1, 5), "float32"))
    node = graph.add(Node("p", "pool", ("w", "d"), (2, 3, 5), "float32", {"mode": "mean", "window": 9}))
    pool = ops.kernel("pool")
    assert pool.flops((2, 3, 5), [(2, 3, 5, 9), (1, 5)], node.attrs) == 30 * 9
    assert pool.sram_bytes(graph, node, Cut(3, 1), 2) == (2 * 5 * 9 + 2 * 5 + 2 * 5) * 2
    plan = KernelPlan("p", 6, 5, Cut(3, 1), 3, 1, 0)
    assert pool.sram_traffic(graph, node, plan, 2) == ((2 * 5 * 9 + 2 * 5) * 2, 2 * 5 * 2)
    with pytest.raises(ValueError, match="mode"):
        compile_kernel("pool", (6, 5), [(6, 5, 9)], {"mode": "min", "window": 9})


# ------------------------------------------------------------------------------------------------- batch norm


def random_norm(norm: nn.Module, generator: torch.Generator) -> nn.Module:
    """Running statistics and affine parameters drawn away from their initial 0 and 1."""
    with torch.no_grad():
        norm.running_mean.uniform_(-2, 2, generator=generator)
        norm.running_var.uniform_(0.2, 3, generator=generator)
        if norm.affine:
            norm.weight.uniform_(-1.5, 1.5, generator=generator)
            norm.bias.uniform_(-2, 2, generator=generator)
    return norm.eval()


NORMS = [
    ("bn2d", lambda: nn.BatchNorm2d(5), (2, 5, 4, 3)),
    ("bn2d_no_affine_eps", lambda: nn.BatchNorm2d(4, affine=False, eps=1e-3), (1, 4, 3, 6)),
    ("bn1d_on_nc", lambda: nn.BatchNorm1d(7), (3, 7)),
    ("bn1d_on_ncl", lambda: nn.BatchNorm1d(3), (2, 3, 11)),
    ("bn3d", lambda: nn.BatchNorm3d(2), (1, 2, 3, 4, 5)),
    ("legit_no_training", lambda: NoTraining(3), (2, 3, 4, 4)),
]


class NoTraining(nn.BatchNorm2d):
    """The ATen op that post-dispatch graphs (a decomposed export) hold for eval-mode batch norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._native_batch_norm_legit_no_training(
            x, self.weight, self.bias, self.running_mean, self.running_var, 0.1, self.eps)[0]


def test_batch_norms_match_torch() -> None:
    generator = torch.Generator().manual_seed(3)
    norms = [random_norm(make(), generator) for _, make, _ in NORMS]
    inputs = tuple(torch.randn(shape, generator=generator) * 2 + 1 for _, _, shape in NORMS)
    graph, outputs = run_legal(Each(norms).eval(), inputs)
    assert [n.op for n in graph if n.is_kernel] == ["batchnorm"] * len(NORMS)
    for (name, _, _), norm, x, got in zip(NORMS, norms, inputs, outputs, strict=True):
        want = in_float64(norm, x)
        shape = [1, -1] + [1] * (x.dim() - 2)
        with torch.no_grad():
            scale = ((norm.weight if norm.affine else 1) / torch.sqrt(norm.running_var + norm.eps)).double()
            shift = norm.bias.double().abs().reshape(shape) if norm.affine else 0
            # A subtract, the channel's scale (sqrt, divide), a multiply and an add: a few ulps of each term.
            terms = (x.double() - norm.running_mean.double().reshape(shape)).abs() * scale.abs().reshape(shape) + shift
        np.testing.assert_array_less(np.abs(got - want), 4 * EPS * terms.numpy() + 1e-30, err_msg=name)


def test_batchnorm_kernel_takes_any_operand_absent_and_its_cost_rows() -> None:
    x = randn(6, 4, scale=3.0)  # [N, C, H, W] = [2, 3, 1, 4] viewed as [6, 4]: the channel is (row // 1) % 3
    mean, var, weight, bias = randn(3), np.abs(randn(3)) + 0.1, randn(3), randn(3)
    channel = np.arange(6) % 3
    for operands in [("mean", "var", "weight", "bias"), ("mean", "var"), ("var", "bias"), ()]:
        given = {"mean": mean, "var": var, "weight": weight, "bias": bias}
        value = {k: (given[k] if k in operands else np.full(3, v, np.float32))
                 for k, v in {"mean": 0.0, "var": 1.0, "weight": 1.0, "bias": 0.0}.items()}
        expected = ((x - value["mean"][channel, None]) / np.sqrt(value["var"][channel, None] + 1e-5)
                    * value["weight"][channel, None] + value["bias"][channel, None])
        attrs = {"eps": 1e-5, "channels": 3, "inner": 4, "operands": operands}
        run_all_tilings("batchnorm", (6, 4), [x] + [given[k] for k in operands], attrs, expected)
    graph = Graph()
    graph.add(Node("x", "input", (), (2, 8, 4, 5), "float32"))
    for name in ("m", "v"):
        graph.add(Node(name, "param", (), (8,), "float32"))
    attrs = {"eps": 1e-5, "channels": 8, "inner": 20, "operands": ("mean", "var")}
    node = graph.add(Node("bn", "batchnorm", ("x", "m", "v"), (2, 8, 4, 5), "float32", attrs))
    norm = ops.kernel("batchnorm")
    assert norm.flops((2, 8, 4, 5), [(2, 8, 4, 5), (8,), (8,)], attrs) == 3 * 320
    # A tile of 16 rows x 5 of the [64, 5] view spans 16 / 4 rows per channel + 1 channels (it may straddle);
    # two of its rows are in flight, in and out.
    assert norm.sram_bytes(graph, node, Cut(4, 1), 2) == (2 * 2 * 5 + 2 * 5) * 2
    plan = KernelPlan("bn", 64, 5, Cut(4, 1), 4, 1, 0)
    assert norm.sram_traffic(graph, node, plan, 2) == ((16 * 5 + 2 * 16) * 2, 16 * 5 * 2)


# ----------------------------------------------------------------------------------------------------- refusals




class IndicesRead(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, indices = F.max_pool2d(x, 2, return_indices=True)
        return values, indices.float()


class Transposed(AtenConvolution):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.convolution(x, self.weight[:3, :2], None, [1, 1], [0, 0], [1, 1], True, [0, 0], 1)


@pytest.mark.parametrize("model,why", [
    (IndicesRead(), "aten.max_pool2d_with_indices.default at .*: its indices are read; only its first output"),
    (Transposed(), "aten.convolution.default at .*: a transposed convolution"),
], ids=["max_pool_indices_read", "transposed_convolution"])
def test_refusals_are_one_line_naming_the_case(model, why) -> None:
    with pytest.raises(WscError, match=f"^unsupported use of {why}") as error:
        Legalize().run(capture(model, (torch.randn(1, 3, 4, 4),)).graph)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------- end to end


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.norm = random_norm(nn.BatchNorm2d(8), torch.Generator().manual_seed(4))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.average = nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.norm(self.conv(x))))
        x = self.average(self.depthwise(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_a_small_cnn_compiles_and_verifies() -> None:
    model, x = SmallCNN().eval(), torch.randn(2, 3, 20, 18, generator=torch.Generator().manual_seed(5))
    compiled = wsc.compile(model, (x,), "mesh-16x16", time_limit=0.3)
    assert compiled.report["verification"]["status"] == "pass"
    assert [n.op for n in compiled.program.graph if n.is_kernel] == [
        "matmul", "batchnorm", "relu", "pool", "matmul", "add", "pool", "pool", "matmul"]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(compiled(x).numpy(), want, rtol=1e-5, atol=1e-5)
