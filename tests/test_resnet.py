"""examples/resnet.py: the nets of the paper (their parameter counts), the model-file protocol, weights away from
identity, and a tiny bottleneck ResNet compiled, run and verified end to end, one streaming layer per block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_example
from torch import nn

import wsc
from wsc.core.errors import WscError
from wsc.frontend.meta import empty_weights
from wsc.frontend.modelfile import build

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "resnet.py"
resnet = load_example("resnet")

# torchvision's resnet18 .. resnet152 at 1000 classes: the same layers have the same parameters.
PARAMETERS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


@pytest.mark.parametrize("depth", sorted(PARAMETERS))
def test_each_depth_has_the_papers_parameters_and_a_module_per_block(depth) -> None:
    with empty_weights():  # shapes only, as `wsc compile` builds it first
        model = resnet.build_model(depth=depth)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[depth]
    blocks = [name for name, m in model.named_modules() if isinstance(m, (resnet.BasicBlock, resnet.Bottleneck))]
    per_stage = resnet.DEPTHS[depth][1]
    assert blocks == [f"layer{s + 1}.{i}" for s, count in enumerate(per_stage) for i in range(count)]


def test_the_model_file_takes_its_options_and_refuses_bad_ones() -> None:
    model, (x,), args = build(str(EXAMPLE), {"depth": 18, "width": 0.25, "image": 40, "batch": 3, "classes": 7})
    assert x.shape == (3, 3, 40, 40) and args["depth"] == 18
    assert model.fc.out_features == 7 and model.conv1.out_channels == 16
    assert model(x).shape == (3, 7)
    for bad in ({"depth": 20}, {"width": 0}, {"image": 16}):
        with pytest.raises(WscError, match=next(iter(bad))):
            build(str(EXAMPLE), bad)


def test_batch_norms_are_away_from_identity_and_activations_keep_their_scale() -> None:
    model = resnet.build_model(depth=18, width=0.25, image=32, classes=10)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        assert not torch.allclose(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))
        assert not torch.allclose(norm.weight, torch.ones_like(norm.weight))
        assert not torch.allclose(norm.bias, torch.zeros_like(norm.bias))
    assert not model.training
    with torch.no_grad():
        logits = model(*resnet.example_inputs(image=32))
    assert 0.1 < logits.abs().max().item() < 100  # neither vanished nor blown up through the blocks


def test_a_tiny_bottleneck_resnet_compiles_verifies_and_streams_a_block_per_layer() -> None:
    torch.manual_seed(0)
    model = resnet.ResNet("bottleneck", (2, 1), width=1 / 8, classes=10)  # an identity and a projection block
    resnet.randomise(model, image=32, seed=0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # The greedy placer: what is held here (the layers, their kernels and weights, the values) does not depend on
    # where the kernels sit; cpsat places convolutions in tests/test_op_conv.py's small CNN.
    compiled = wsc.compile(model, (x,), "mesh-16x16", time_limit=0.3, strategy="greedy")
    assert compiled.report["verification"]["status"] == "pass"
    program = compiled.program
    assert [layer.name for layer in program.layers] == [
        "embed", "layer1.0", "layer1.1", "layer2.0", "head"]
    graph = program.graph

    def kernels(layer) -> list[str]:
        return [graph[n].op for n in layer.nodes if graph[n].is_kernel]

    layers = {layer.name: layer for layer in program.layers}
    assert kernels(layers["embed"]) == ["matmul", "batchnorm", "relu", "pool"]
    # A block: three convolutions with their norms and ReLUs, the residual add; the first also its projection.
    assert sorted(kernels(layers["layer1.1"])) == sorted(["matmul", "batchnorm", "relu"] * 3 + ["add"])
    for name in ("layer1.0", "layer2.0"):
        assert sorted(kernels(layers[name])) == sorted(["matmul", "batchnorm"] * 4 + ["relu"] * 3 + ["add"])
    assert kernels(layers["head"]) == ["pool", "matmul"]
    # Each block streams its own filters (as [OC, K]: the norms' vectors are 1-D), each the weight of a matmul.
    for layer in program.layers[1:-1]:
        filters = [graph[w] for w in layer.weights if len(graph[w].shape) == 2]
        assert len(filters) == kernels(layer).count("matmul")
        assert all(f.attrs["key"].startswith(layer.name + ".") and f.attrs["key"].endswith(".weight") for f in filters)
        assert all([graph[u].op for u in graph.users(f.name)] == ["matmul"] for f in filters)
    with torch.no_grad():
        want = model(x).numpy()
    # Ten convolutions deep, each off by sqrt(K) ulps (K <= 576) of its outputs' scale.
    np.testing.assert_allclose(compiled(x).numpy(), want, rtol=0, atol=1e-4 * np.abs(want).max())
