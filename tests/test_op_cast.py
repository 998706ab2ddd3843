"""Casts between the dtypes the host holds (float32, int64, int32, bool): a layout op that converts, exactly as
torch converts; and a Hugging Face decoder given an int64 attention_mask (which it casts to bool) verifies."""

from __future__ import annotations

import pytest
import torch
from conftest import load_example

import wsc
from wsc.core.errors import WscError

FAST = {"time_limit": 0.3, "strategy": "row-major"}


class Casts(torch.nn.Module):
    def forward(self, ids, x):
        as_float = ids.float() * x  # int64 -> float32 into a kernel
        keep = ids.to(torch.bool)  # int64 -> bool: nonzero is True
        truncated = (x * 3).to(torch.int64)  # float32 -> int64 rounds toward zero
        return as_float.masked_fill(~keep, -5.0), truncated, keep.float() + x


def test_casts_convert_as_torch_does():
    ids = torch.tensor([[0, 3, -2, 0, 7]])
    x = torch.tensor([[1.5, -0.7, 2.25, -1.9, 0.3]])
    compiled = wsc.compile(Casts(), (ids, x), "mesh-16x16", **FAST)
    assert compiled.report["verification"]["status"] == "pass"
    assert sum(n.op == "cast" for n in compiled.program.graph) == 4  # .float() twice, .to(bool), .to(int64)
    got, want = compiled(ids, x), Casts()(ids, x)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=0, atol=0)


class HalfCast(torch.nn.Module):
    def forward(self, x):
        return x.half()


def test_a_cast_to_another_float_dtype_is_refused_in_one_line():
    with pytest.raises(WscError) as refusal:
        wsc.compile(HalfCast(), (torch.randn(2, 3),), "mesh-16x16", **FAST)
    assert "\n" not in str(refusal.value)
    assert "a cast from float32 to float16" in str(refusal.value)


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_a_hugging_face_model_with_an_int64_padding_mask_verifies(arch):
    hf = load_example("hf_models")
    model = hf.build_model(arch, "tiny")
    (ids,) = hf.example_inputs(arch, "tiny", seq=9, batch=2)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # the first sequence padded on the left, as a batch of prompts is
    compiled = wsc.compile(model, (ids, mask), "mesh-16x16", **FAST)
    assert compiled.report["verification"]["status"] == "pass", compiled.report["verification"]
    with torch.no_grad():
        kwargs = {} if arch == "bert" else {"use_cache": False}
        want = model(ids, mask, **kwargs)
    got = compiled(ids, mask)
    name = "logits" if arch != "bert" else "last_hidden_state"
    torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-4, atol=1e-4)
