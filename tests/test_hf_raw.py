"""A Hugging Face model as it comes (GPT2LMHeadModel from its config, random weights): captured with its cache
off, its logits taken from the model output object, verified against eager. Issue 12: its DynamicCache output
made capture fail, with a refusal cut mid-sentence that blamed data-dependent control flow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import wsc
from wsc.core.errors import WscError
from wsc.frontend.capture import capture

transformers = pytest.importorskip("transformers")

# The greedy placer: where the kernels sit changes nothing they compute.
FAST = {"time_limit": 0.3, "strategy": "greedy"}
SHAPE = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=64)


def gpt2(**config) -> nn.Module:
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**SHAPE, **config)).eval()


def ids(batch: int = 1, seq: int = 12) -> torch.Tensor:
    return torch.randint(0, 97, (batch, seq), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("batch", [1, 2])
def test_raw_gpt2_lm_head_model_compiles_and_verifies(batch):
    # gpt2's own activation, gelu_new, is recognised as one tanh GELU; gelu_pytorch_tanh is the same function as one op.
    model, inputs = gpt2(activation_function="gelu_pytorch_tanh"), (ids(batch),)
    compiled = wsc.compile(model, inputs, "mesh-16x16", **FAST)
    assert compiled.report["verification"]["status"] == "pass", compiled.report["verification"]
    assert compiled.report["model"]["layers"] == 4  # embedding, the two blocks of transformer.h, the head
    assert [n.name for n in compiled.program.graph.inputs] == ["input_ids"]  # use_cache is not an input
    with torch.no_grad():
        expected = model(*inputs).logits
    returned = compiled(*inputs)
    assert type(returned) is type(model(*inputs))  # the model's own output object
    out = returned.logits
    assert out.shape == expected.shape == (batch, 12, 97)
    assert (out - expected).abs().max() < 1e-3


def test_raw_gpt2_with_its_own_activation_is_past_the_cache():
    """With gelu_new, what stops it (if anything) is an op, named; never its output object."""
    model = gpt2()
    try:
        compiled = wsc.compile(model, (ids(),), "mesh-16x16", **FAST)
    except WscError as refusal:
        assert "unsupported op aten." in str(refusal) and "Cache" not in str(refusal)
    else:
        assert compiled.report["verification"]["status"] == "pass"


class Holder:
    def __init__(self, x):
        self.x = x


class ReturnsAnObject(nn.Module):
    def forward(self, x):
        return x * 2.0, Holder(x)


def test_an_output_that_is_not_a_tensor_is_named_not_blamed_on_control_flow():
    with pytest.raises(WscError) as refusal:
        capture(ReturnsAnObject(), (torch.randn(2, 3),))
    message = str(refusal.value)
    assert "its output holds an object of class Holder" in message
    assert "data-dependent" not in message and "\n" not in message


class FailsLoudly(nn.Module):
    def forward(self, x):
        raise ValueError("The first sentence of a long complaint " + "goes on " * 30 + "and ends here. "
                         "The second sentence " + "also goes on " * 20 + "and ends here too.")


def test_a_tracer_message_is_never_cut_mid_sentence():
    with pytest.raises(WscError) as refusal:
        capture(FailsLoudly(), (torch.randn(2, 3),))
    message = str(refusal.value)
    # A first sentence too long for the one line is not cut there: the line names the error's type, and the
    # details (--debug) quote the sentence whole.
    assert message.startswith("the model fails on its example inputs (float32[2, 3]): ValueError; give inputs")
    assert "\n" not in message and len("error: " + message) < 160
    quoted = refusal.value.details.splitlines()[0].removeprefix("eager: ")
    assert quoted.startswith("ValueError: The first sentence") and quoted.endswith("and ends here.")
    assert len(quoted) > 300  # a first sentence longer than the quote limit is kept whole
