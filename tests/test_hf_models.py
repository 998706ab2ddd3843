"""Hugging Face models as they come, each architecture at its `tiny` size (2 layers with odd shapes: head counts
that are not powers of two, fewer key/value heads, partial rotary, untied heads), verified against eager through
the API, the command line and torch.compile; each decoder block one streaming layer; the compiled model returns the
model's own output object."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT, load_example

import wsc
from wsc import cli
from wsc.backend import make_backend

hf = load_example("hf_models")
ARCHS = list(hf.SIZES)
FAST = {"time_limit": 0.3, "strategy": "row-major"}
SEQ, BATCH = 10, 2


def tiny(arch: str):
    model = hf.build_model(arch, "tiny", seq=SEQ, batch=BATCH)
    return model, hf.example_inputs(arch, "tiny", seq=SEQ, batch=BATCH)


def main_output(out):
    """The tensor the architecture is judged by: the logits, or BERT's last hidden state."""
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def blocks(model: torch.nn.Module) -> int:
    return model.config.num_hidden_layers


@pytest.mark.parametrize("arch", ARCHS)
def test_api_verifies_and_returns_the_models_output_object(arch):
    model, inputs = tiny(arch)
    compiled = wsc.compile(model, inputs, "mesh-16x16", **FAST)
    assert compiled.report["verification"]["status"] == "pass", compiled.report["verification"]
    # The embedding, one layer per block of the model's ModuleList, and the head (final norm, LM head or pooler).
    names = [layer.name for layer in compiled.program.layers]
    assert len(names) == blocks(model) + 2, names
    returned = compiled(*inputs)
    with torch.no_grad():
        expected = model(*inputs, use_cache=False) if arch != "bert" else model(*inputs)
    assert type(returned) is type(expected)
    assert returned.keys() == expected.keys()
    got, want = main_output(returned), main_output(expected)
    assert got.shape == want.shape
    scale = max(1.0, want.abs().max().item())
    assert (got - want).abs().max().item() <= compiled.report["verification"]["tolerance"] * scale


# The command line adds the same code for every architecture (the model file's --model-arg, the report's origin,
# the folder's files) to the compile the API test runs for each: a decoder and the encoder, whose outputs differ.
@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_command_line_verifies(arch, tmp_path, capsys):
    out = tmp_path / arch
    code = cli.main(["compile", str(ROOT / "examples" / "hf_models.py"), "--target", "mesh-16x16",
                     "--model-arg", f"arch={arch}", "--model-arg", "size=tiny", "--model-arg", f"seq={SEQ}",
                     "--model-arg", f"batch={BATCH}", "--out", str(out), "--time-limit", "0.3",
                     "--strategy", "row-major"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["status"] == "pass"
    assert report["model"]["args"]["arch"] == arch


@pytest.mark.parametrize("arch", ARCHS)
def test_torch_compile_verifies(arch):
    model, inputs = tiny(arch)
    graphs = []
    inner = make_backend("mesh-16x16", verify=True, **FAST)  # a graph that differs from eager raises

    def counting(gm, example_inputs):
        graphs.append(gm)
        return inner(gm, example_inputs)

    compiled = torch.compile(model, backend=counting)
    with torch.no_grad():
        kwargs = {} if arch == "bert" else {"use_cache": False}
        got, want = main_output(compiled(*inputs, **kwargs)), main_output(model(*inputs, **kwargs))
    assert graphs, "nothing was compiled by wsc"
    assert got.shape == want.shape
    assert not torch.equal(got, want)  # computed by wsc's kernels, not eagerly
    assert (got - want).abs().max().item() <= 1e-3 * max(1.0, want.abs().max().item())
