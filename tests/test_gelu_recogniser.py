"""The tanh GELU spelled out (Hugging Face's NewGELUActivation, "gelu_new": GPT-2, GPT-J) is one gelu kernel
with approximate="tanh", fused into the matmul before it like aten.gelu; a chain that differs in any way (a
constant, an intermediate read again or returned) stays the element-wise kernels it is."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import load_example
from transformers.activations import NewGELUActivation

import wsc
from wsc import api, pipeline
from wsc.core.ir import SOURCE_OPS, Graph
from wsc.frontend.capture import capture
from wsc.options import CompileOptions
from wsc.passes.fold_constants import FoldConstants
from wsc.passes.legalize import Legalize
from wsc.targets import load_target

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TARGET = "mesh-16x16"
FAST = {"time_limit": 0.3, "strategy": "greedy"}


def x_of(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2.0


def legalized(model: torch.nn.Module, inputs: tuple) -> Graph:
    captured = capture(model.eval(), inputs)
    return Legalize().run(FoldConstants().run(captured.graph, captured.weights), captured.weights)


def computed(graph: Graph) -> list[str]:
    """The ops of the graph's nodes in order, with a gelu's approximation and a matmul's epilogue: what the
    golden sequences below are written in (inputs, weights and constants left out)."""
    ops = []
    for node in graph:
        if node.op in SOURCE_OPS:
            continue
        if node.op == "gelu":
            ops.append(f"gelu[{node.attrs['approximate']}]")
        elif node.op == "matmul" and node.attrs.get("epilogue"):
            ops.append(f"matmul+{node.attrs['epilogue']}[{node.attrs['approximate']}]")
        else:
            ops.append(node.op)
    return ops


def compile_and_check(model: torch.nn.Module, inputs: tuple):
    """Compiled through wsc, verified, and its outputs held to eager's."""
    compiled = wsc.compile(model.eval(), inputs, TARGET, **FAST)
    assert compiled.report["verification"]["status"] == "pass", compiled.report["verification"]
    with torch.no_grad():
        want = model(*inputs)
    got = compiled(*inputs)
    if not isinstance(want, tuple):
        got, want = (got,), (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    return compiled


class Mlp(torch.nn.Module):
    """Linear -> NewGELU -> Linear, GPT-2's and GPT-J's MLP."""

    def __init__(self, d: int = 16, hidden: int = 40):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(4)
            self.up, self.down = torch.nn.Linear(d, hidden), torch.nn.Linear(hidden, d)
        self.act = NewGELUActivation()

    def forward(self, x):
        return self.down(self.act(self.up(x)))


# ------------------------------------------------------------------------------------------- recognised


def test_new_gelu_activation_alone_is_one_gelu_kernel():
    x = x_of(3, 7)
    graph = legalized(NewGELUActivation(), (x,))
    assert computed(graph) == ["gelu[tanh]"]  # no pow, mul, add or tanh left: not even a dead one
    (gelu,) = [n for n in graph if n.op == "gelu"]
    assert gelu.inputs == ("input",) and graph.outputs == [gelu.name]
    assert gelu.holds == capture(NewGELUActivation(), (x,)).graph.outputs[0]  # the chain's last value
    compile_and_check(NewGELUActivation(), (x,))


def test_in_an_mlp_the_gelu_is_the_first_matmuls_epilogue():
    x = x_of(2, 5, 16)
    graph = legalized(Mlp(), (x,))
    assert computed(graph) == ["matmul", "gelu[tanh]", "matmul"]
    compiled = compile_and_check(Mlp(), (x,))
    assert computed(compiled.program.graph) == ["matmul+gelu[tanh]", "matmul"]


def test_the_fused_epilogue_computes_the_tanh_form_not_erf(monkeypatch):
    """The fused matmul is held to the spelled-out chain: with erf in its place verification fails (the two
    differ by up to 5e-4 at unit scale, far above float32's rounding)."""
    model, inputs = Mlp().eval(), (x_of(2, 5, 16),)
    compiled = pipeline.compile_model(model, inputs, load_target(TARGET), **FAST)
    (fused,) = [n for n in compiled.program.graph if n.attrs.get("epilogue") == "gelu"]
    options = CompileOptions()
    assert api.verify_compiled(compiled, model, inputs, options)[0]["status"] == "pass"
    monkeypatch.setitem(fused.attrs, "approximate", "none")
    assert api.verify_compiled(compiled, model, inputs, options)[0]["status"] == "fail"


def inner(x, cubic=0.044715, root=SQRT_2_OVER_PI):
    return root * (x + cubic * torch.pow(x, 3.0))


class Forms(torch.nn.Module):
    """The chain in the forms it is taken in: the 0.5 with x, with the product and with 1 + tanh, each operand
    on either side, x ** 3 for pow, and sqrt(2/pi) written to float32's precision (FastGELU's 0.7978845608)."""

    def forward(self, x):
        t = torch.tanh
        return (
            0.5 * x * (1.0 + t(inner(x))),  # NewGELUActivation
            x * 0.5 * (1.0 + t(inner(x))),
            x * (1.0 + t(inner(x))) * 0.5,
            0.5 * (x * (1.0 + t(inner(x)))),
            x * (0.5 * (t(inner(x)) + 1.0)),
            (1.0 + t(inner(x))) * (x * 0.5),
            (t((x ** 3 * 0.044715 + x) * 0.7978845608) + 1) * x * 0.5,
        )


def test_every_form_of_the_chain_is_one_gelu_kernel():
    x = x_of(4, 9, seed=1)
    graph = legalized(Forms(), (x,))
    assert computed(graph) == ["gelu[tanh]"] * 7
    assert [graph[o].op for o in graph.outputs] == ["gelu"] * 7
    compile_and_check(Forms(), (x,))


# ----------------------------------------------------------------------------------------- near misses


class NearMisses(torch.nn.Module):
    """Chains that are not the tanh GELU, or whose intermediates are needed: each stays as it is."""

    def forward(self, x):
        t = torch.tanh
        other_cubic = 0.5 * x * (1.0 + t(inner(x, cubic=0.045)))
        other_root = 0.5 * x * (1.0 + t(inner(x, root=0.79)))
        other_half = 0.6 * x * (1.0 + t(inner(x)))
        square = 0.5 * x * (1.0 + t(SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 2.0))))
        tanh = t(inner(x))
        tanh_returned = 0.5 * x * (1.0 + tanh)
        cube = torch.pow(x, 3.0)
        cube_read_again = 0.5 * x * (1.0 + t(SQRT_2_OVER_PI * (x + 0.044715 * cube)))
        y = x + 1.0
        of_two_values = 0.5 * y * (1.0 + t(inner(x)))  # the outer x is not the inner one
        return other_cubic, other_root, other_half, square, tanh_returned, tanh, cube_read_again + cube, \
            of_two_values


def test_a_chain_that_differs_stays_unfused():
    x = x_of(4, 9, seed=2)
    graph = legalized(NearMisses(), (x,))
    ops = computed(graph)
    assert "gelu[tanh]" not in ops
    assert ops.count("tanh") == 7
    assert ops.count("pow") == 6 and ops.count("square") == 1
    compile_and_check(NearMisses(), (x,))


def test_one_chain_taken_and_its_near_miss_left_in_one_graph():
    class Both(torch.nn.Module):
        def forward(self, x):
            tanh = torch.tanh(inner(x))
            return NewGELUActivation()(x), 0.5 * x * (1.0 + tanh), tanh

    x = x_of(3, 8, seed=3)
    ops = computed(legalized(Both(), (x,)))
    assert ops.count("gelu[tanh]") == 1 and ops.count("tanh") == 1 and ops.count("pow") == 1


# -------------------------------------------------------------------------------------- Hugging Face


hf = load_example("hf_models")


@pytest.mark.parametrize("arch", ["gpt2", "gptj"])
def test_tiny_gpt2_and_gptj_have_one_gelu_per_block_fused_and_verify(arch):
    model = hf.build_model(arch, "tiny", seq=10, batch=2)
    inputs = hf.example_inputs(arch, "tiny", seq=10, batch=2)
    assert getattr(model.config, "activation_function", None) == "gelu_new"
    graph = legalized(model, inputs)
    ops = computed(graph)
    assert "tanh" not in ops and "pow" not in ops
    assert ops.count("gelu[tanh]") == model.config.num_hidden_layers
    compiled = wsc.compile(model, inputs, TARGET, time_limit=0.3, strategy="row-major")
    assert compiled.report["verification"]["status"] == "pass", compiled.report["verification"]
    ops = computed(compiled.program.graph)
    assert "tanh" not in ops and "pow" not in ops and "gelu[tanh]" not in ops
    assert ops.count("matmul+gelu[tanh]") == model.config.num_hidden_layers
