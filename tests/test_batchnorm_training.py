"""Batch norm in training mode: the batch's own statistics (mean and biased variance over every dim but the
channels) feed the batchnorm kernel, and the running statistics move towards them where the graph reads them.

Each model is compiled for the mesh and verified against eager PyTorch by wsc; the tests then hold every output
to eager within the error the arithmetic allows (`Truth`): a reduction of n float32 terms is off by about
sqrt(n) ulps of its terms, and the normalisation after it by a few ulps of its own terms.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wsc
from wsc.core.errors import WscError
from wsc.core.ir import Graph, Node, Ref
from wsc.passes.legalize import Legalize

EPS = float(np.finfo(np.float32).eps)
ULPS = 4  # roundings behind each element after the statistics: subtract, scale (root and divide), multiply, add
MARGIN = 2  # both sides of the comparison, wsc and eager, carry the error


def compiled(module: nn.Module, *inputs: torch.Tensor):
    result = wsc.compile(module, inputs, "mesh-16x16", time_limit=0.3, strategy="row-major")
    assert result.report["verification"]["status"] == "pass", result.report["verification"]
    return result


def kernels(result) -> list[str]:
    return sorted(n.op for n in result.program.graph if n.is_kernel)


def eager(module: nn.Module, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The module's outputs from a copy of it as it is now: a training-mode call moves the running statistics,
    and the copy keeps the module's own for the compiled program to read."""
    with torch.no_grad():
        out = copy.deepcopy(module)(*inputs)
    return out if isinstance(out, tuple) else (out,)


def assert_within(got: torch.Tensor, want: torch.Tensor, allowed: torch.Tensor, what: str) -> None:
    error = (got.double() - want.double()).abs()
    worst = float((error / (MARGIN * allowed)).max())
    assert worst <= 1, f"{what}: error {float(error.max()):.3g}, {worst:.3g} times what it may be"


@dataclass
class Truth:
    """Batch norm of x in float64, and the error each value a float32 computation gives may carry. x may itself
    be off by up to `input_error` an element (an earlier batch norm's output)."""

    x: torch.Tensor
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    eps: float = 1e-5
    input_error: float = 0.0

    def __post_init__(self) -> None:
        x = self.x.detach().double()
        self.dims = [d for d in range(x.dim()) if d != 1]
        self.n = x.numel() // x.shape[1]
        self.mean, self.var = x.mean(self.dims), x.var(self.dims, correction=0)
        deviation = (x - self.channel(self.mean)).abs()
        root_n = math.sqrt(self.n)
        self.mean_error = EPS * root_n * x.abs().mean(self.dims) + self.input_error
        # The variance is stationary in the mean: the mean's error moves it only through the input's own.
        self.var_error = EPS * root_n * self.var + 2 * self.input_error * deviation.mean(self.dims)
        weight = self.weight.detach().double() if self.weight is not None else torch.ones_like(self.mean)
        bias = self.bias.detach().double() if self.bias is not None else torch.zeros_like(self.mean)
        scale = weight / torch.sqrt(self.var + self.eps)
        self.output = (x - self.channel(self.mean)) * self.channel(scale) + self.channel(bias)
        size = self.channel(scale.abs())
        self.output_error = (self.channel(scale.abs() * (self.mean_error + self.input_error))
                             + deviation * size * self.channel(self.var_error / (2 * (self.var + self.eps)))
                             + ULPS * EPS * (deviation * size + self.channel(bias.abs())))

    def channel(self, values: torch.Tensor) -> torch.Tensor:
        return values.reshape([1, -1] + [1] * (self.x.dim() - 2))

    def check(self, got: torch.Tensor, want: torch.Tensor, what: str) -> None:
        assert_within(got, want, self.output_error, what)
        assert_within(want, self.output, self.output_error, f"{what} (eager against float64)")

    def running(self, before: torch.Tensor, momentum: float, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A running statistic after the call, (1 - momentum) * before + momentum * the batch's (the variance
        unbiased), in float64, and the error of its float32 computation from `before` as given."""
        unbias = self.n / (self.n - 1) if which == "var" else 1.0
        batch, error = (self.mean, self.mean_error) if which == "mean" else (self.var, self.var_error)
        kept, moved = (1 - momentum) * before.double(), momentum * unbias * batch
        return kept + moved, ULPS * EPS * (kept.abs() + moved.abs()) + abs(momentum) * unbias * error

    def check_running(self, got: torch.Tensor, want: torch.Tensor, before: torch.Tensor, momentum: float,
                      which: str, what: str) -> None:
        value, allowed = self.running(before, momentum, which)
        assert_within(got, want, allowed, what)
        assert_within(want, value, allowed, f"{what} (eager against float64)")


def randn(*shape: int, generator: torch.Generator, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * scale + shift


# --------------------------------------------------------------------------------- F.batch_norm, ranks 2-5


class Functional(nn.Module):
    """F.batch_norm(training=True) on one input four ways: with weight, bias and running statistics, with none
    of them, with a weight only, and with a bias and running statistics (another eps and momentum)."""

    CASES = {"all": ("weight", "bias", "running"), "none": (), "weight": ("weight",), "bias": ("bias", "running")}

    def __init__(self, channels: int, generator: torch.Generator):
        super().__init__()
        for case in self.CASES:
            self.register_parameter(f"{case}_weight", nn.Parameter(randn(channels, generator=generator)))
            self.register_parameter(f"{case}_bias", nn.Parameter(randn(channels, generator=generator, scale=2)))
            self.register_buffer(f"{case}_mean", randn(channels, generator=generator))
            self.register_buffer(f"{case}_var", torch.rand(channels, generator=generator) + 0.5)

    def given(self, case: str, what: str) -> torch.Tensor | None:
        """The case's weight, bias, mean or var (the last two: its running statistics), None when not given."""
        wanted = "running" if what in ("mean", "var") else what
        return getattr(self, f"{case}_{what}") if wanted in self.CASES[case] else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(F.batch_norm(x, *(self.given(case, what) for what in ("mean", "var", "weight", "bias")),
                                  training=True, momentum=0.3 if case == "bias" else 0.1,
                                  eps=1e-3 if case == "bias" else 1e-5)
                     for case in self.CASES)


@pytest.mark.parametrize("shape", [(12, 3), (4, 3, 5), (2, 3, 4, 5), (2, 3, 2, 3, 4)],
                         ids=["rank2", "rank3", "rank4", "rank5"])
def test_functional_batch_norm_in_training_mode_uses_the_batch_statistics(shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(len(shape))
    module = Functional(shape[1], generator)
    x = randn(*shape, generator=generator, scale=2.5) + randn(1, shape[1], *[1] * (len(shape) - 2),
                                                             generator=generator, scale=3)
    result = compiled(module, x)
    # One pair of reductions for the input every call shares, one normalisation kernel per call, and no update
    # of the running statistics, which nothing reads.
    assert kernels(result) == ["batchnorm"] * 4 + ["mean", "var"]
    for case, got, want in zip(Functional.CASES, result(x), eager(module, x), strict=True):
        truth = Truth(x, module.given(case, "weight"), module.given(case, "bias"), 1e-3 if case == "bias" else 1e-5)
        truth.check(got, want, case)


# ------------------------------------------------------------------------------- nn.BatchNorm1d/2d, train()


@pytest.mark.parametrize("make, shape", [(lambda: nn.BatchNorm1d(5), (8, 5)), (lambda: nn.BatchNorm1d(4), (3, 4, 6)),
                                         (lambda: nn.BatchNorm2d(3, eps=1e-3, momentum=0.5), (2, 3, 4, 5))],
                         ids=["bn1d_nc", "bn1d_ncl", "bn2d"])
def test_batch_norm_modules_in_train_mode(make, shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    norm = make().train()
    with torch.no_grad():
        norm.weight.copy_(randn(norm.num_features, generator=generator))
        norm.bias.copy_(randn(norm.num_features, generator=generator))
        norm.running_mean.copy_(randn(norm.num_features, generator=generator, scale=5))
    x = randn(*shape, generator=generator, scale=1.5, shift=-2)
    result = compiled(norm, x)
    assert kernels(result) == ["batchnorm", "mean", "var"]  # the output only: the running update is not computed
    got, (want,) = result(x), eager(norm, x)
    Truth(x, norm.weight, norm.bias, norm.eps).check(got, want, "output")


# ------------------------------------------------------------------------- reading the running statistics


class ReadsRunning(nn.Module):
    """A batch norm called twice (the second call's update starts from the first's), the running statistics
    read by kernels after it and returned."""

    def __init__(self, channels: int, generator: torch.Generator):
        super().__init__()
        self.norm = nn.BatchNorm1d(channels, momentum=0.25)
        with torch.no_grad():
            self.norm.running_mean.copy_(randn(channels, generator=generator))
            self.norm.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = self.norm(x)
        z = self.norm(y * 2 + 1)
        return z, z * self.norm.running_var + self.norm.running_mean, self.norm.running_mean, self.norm.running_var


def test_running_statistics_read_after_the_call_are_the_updated_ones() -> None:
    generator = torch.Generator().manual_seed(5)
    module = ReadsRunning(3, generator).train()
    x = randn(10, 3, generator=generator, scale=2, shift=1)
    result = compiled(module, x)
    assert kernels(result).count("batchnorm") == 2 and kernels(result).count("mean") == 2
    # The verification ran the module eagerly, which moved its running statistics: the compiled program reads
    # the module's weights as they are now, as eager's next call does.
    before = {"mean": module.norm.running_mean.clone(), "var": module.norm.running_var.clone()}
    got, want = result(x), eager(module, x)
    first = Truth(x)
    second = Truth(first.output * 2 + 1, input_error=2 * float(first.output_error.max()))
    second.check(got[0], want[0], "the second call's output")
    after: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for which, got_stat, want_stat in [("mean", got[2], want[2]), ("var", got[3], want[3])]:
        once, once_error = first.running(before[which], 0.25, which)
        twice, allowed = second.running(once, 0.25, which)
        allowed = allowed + 0.75 * once_error
        assert_within(got_stat, want_stat, allowed, f"running {which} after both calls")
        assert_within(want_stat, twice, allowed, f"running {which} after both calls (eager against float64)")
        after[which] = (twice, allowed)
    # z * running_var + running_mean: each factor's error times the other, and the multiply-add's roundings.
    z, (var, var_error), (mean, mean_error) = second.output, after["var"], after["mean"]
    product = z * second.channel(var)
    allowed = (second.output_error * second.channel(var).abs() + z.abs() * second.channel(var_error)
               + second.channel(mean_error) + 2 * EPS * (product.abs() + second.channel(mean).abs()))
    assert_within(got[1], want[1], allowed, "a kernel reading the updated statistics")


# ------------------------------------------------------------------ the ATen ops of decomposed graphs


class AtenOps(nn.Module):
    """The batch norm ops a decomposed graph holds, each output read: the functional one (output, saved mean and
    inverse standard deviation, the updated running statistics), native_batch_norm (its in-place update read
    by nothing) and the one without running statistics."""

    def __init__(self, channels: int, generator: torch.Generator):
        super().__init__()
        self.weight = nn.Parameter(randn(channels, generator=generator))
        self.bias = nn.Parameter(randn(channels, generator=generator))
        for name in ("a", "b"):
            self.register_buffer(f"mean_{name}", randn(channels, generator=generator))
            self.register_buffer(f"var_{name}", torch.rand(channels, generator=generator) + 0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        aten = torch.ops.aten
        functional = aten._native_batch_norm_legit_functional(x, self.weight, self.bias, self.mean_a, self.var_a,
                                                              True, 0.3, 1e-3)
        native = aten.native_batch_norm(x * 2, None, self.bias, self.mean_b, self.var_b, True, 0.2, 1e-5)
        no_stats = aten._native_batch_norm_legit.no_stats(x + 1, self.weight, None, True, 0.1, 1e-5)
        return (*functional, *native, *no_stats)


def test_the_aten_batch_norm_ops_in_training_mode_and_all_their_outputs() -> None:
    generator = torch.Generator().manual_seed(11)
    module = AtenOps(3, generator)
    x = randn(4, 3, 5, generator=generator, scale=2, shift=-1)
    before = {"mean": module.mean_a.clone(), "var": module.var_a.clone()}
    result = compiled(module, x)
    assert kernels(result).count("batchnorm") == 3
    got, want = result(x), eager(module, x)
    cases = [(x, module.weight, module.bias, 1e-3), (x * 2, None, module.bias, 1e-5),
             (x + 1, module.weight, None, 1e-5)]
    outputs = [got[0:5], got[5:8], got[8:11]]
    expected = [want[0:5], want[5:8], want[8:11]]
    for (given, weight, bias, eps), got_op, want_op in zip(cases, outputs, expected, strict=True):
        truth = Truth(given, weight, bias, eps)
        truth.check(got_op[0], want_op[0], "output")
        assert_within(got_op[1], want_op[1], truth.mean_error + EPS * truth.mean.abs(), "saved mean")
        rstd = 1 / torch.sqrt(truth.var + eps)
        assert_within(got_op[2], want_op[2], rstd * (truth.var_error / (2 * (truth.var + eps)) + ULPS * EPS),
                      "saved inverse standard deviation")
    functional = Truth(x, module.weight, module.bias, 1e-3)
    functional.check_running(got[3], want[3], before["mean"], 0.3, "mean", "the functional op's running mean")
    functional.check_running(got[4], want[4], before["var"], 0.3, "var", "the functional op's running var")


# ------------------------------------------------------------------------------------------- refusals


class SavedInEval(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("var", torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._native_batch_norm_legit(x, None, None, self.mean, self.var, False, 0.1, 1e-5)[1] + 1


def test_what_is_refused_is_one_line() -> None:
    with pytest.raises(WscError) as refusal:
        wsc.compile(SavedInEval(), (torch.randn(4, 3),), "mesh-16x16", time_limit=0.3, strategy="row-major")
    message = str(refusal.value)
    assert "\n" not in message and "saved mean and inverse standard deviation are read in eval mode" in message
    # One value per channel: torch's unbiased running variance is 0 / 0. torch.export cannot trace such a call
    # (its shape function divides by zero too), so the graph is built by hand.
    graph = Graph()
    graph.add(Node("x", "input", (), (1, 3), "float32"))
    graph.add(Node("running_var", "param", (), (3,), "float32", {"key": "running_var", "kind": "buffer"}))
    args = (Ref("x"), None, None, None, Ref("running_var"), True, 0.1, 1e-5, False)
    graph.add(Node("bn", "aten.batch_norm.default", ("x", "running_var"), (1, 3), "float32", {"args": args}))
    graph.outputs = ["bn", "running_var"]
    with pytest.raises(WscError, match="a running variance updated from one value per channel") as refusal:
        Legalize().run(graph)
    assert "\n" not in str(refusal.value)


class ReadsItsRunningStatsAfter(torch.nn.Module):
    """A reader of a running stat that involves no input: folding it with the buffer's value before the update
    would be wrong."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(3)

    def forward(self, x):
        return self.norm(x), self.norm.running_mean * 2.0, self.norm.running_var.unsqueeze(-1)


def test_a_running_stat_read_after_the_update_is_not_folded_to_its_old_value():
    model = ReadsItsRunningStatsAfter().train()
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(3)) * 2 + 1
    compiled = wsc.compile(model, (x,), "mesh-16x16", time_limit=0.3, strategy="row-major")
    assert compiled.report["verification"]["status"] == "pass", compiled.report["verification"]
