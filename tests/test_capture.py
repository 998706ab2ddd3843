"""Capture and legalisation of every op the Cerebras-GPT example uses, checked as IR text and against eager."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_gpt
from torch import nn

from wsc.core.errors import WscError
from wsc.frontend.capture import capture
from wsc.passes.legalize import Legalize, supported_aten_ops


def legal_ops(model, inputs) -> list[str]:
    graph = Legalize().run(capture(model, inputs).graph)
    graph.verify(legal=True)
    return [n.op for n in graph if n.op not in ("input", "param")]


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


x3 = torch.randn(2, 5, 8)
CASES = {
    "linear": (nn.Linear(8, 6), (x3,), ["matmul"]),
    "layer_norm": (nn.LayerNorm(8), (x3,), ["layernorm"]),
    "gelu": (nn.GELU(), (x3,), ["gelu"]),
    "gelu_tanh": (nn.GELU(approximate="tanh"), (x3,), ["gelu"]),
    "embedding": (nn.Embedding(11, 4), (torch.tensor([[1, 2, 10]]),), ["embedding"]),
    "add": (Lambda(lambda a, b: a + b), (x3, torch.randn(5, 8)), ["add"]),
    "mul_scalar": (Lambda(lambda a: a * 0.5), (x3,), ["const", "mul"]),
    "softmax": (Lambda(lambda a: torch.softmax(a, dim=-1)), (x3,), ["softmax"]),
    "split_view_transpose": (
        Lambda(lambda a: a.split(4, dim=2)[1].reshape(2, 5, 2, 2).transpose(1, 2)), (x3,), ["slice", "reshape",
                                                                                           "permute"]),
    "sdpa_causal": (
        Lambda(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
        (torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)),
        ["attention"],
    ),
    "matmul": (Lambda(lambda a, b: a @ b), (torch.randn(3, 4), torch.randn(4, 5)), ["permute", "matmul"]),
    "arange": (Lambda(lambda a: a + torch.arange(8)), (x3,), ["const", "add"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_op_legalises_to_wsc_ops(case):
    model, inputs, expected = CASES[case]
    assert legal_ops(model.eval(), inputs) == expected


def test_gpt_block_ir_text():
    model, inputs = tiny_gpt(layers=1, d_model=8, heads=2, d_ffn=16, vocab=11, seq=3)
    graph = Legalize().run(capture(model, inputs).graph)
    text = graph.summary()
    assert "linear = matmul(layer_norm, p_blocks_0_attn_qkv_weight, p_blocks_0_attn_qkv_bias) : float32[1x3x24]" \
        in text
    assert "scaled_dot_product_attention = attention(transpose, transpose_1, transpose_2) : float32[1x2x3x4]" \
        in text
    assert text.endswith("linear_4 = matmul(layer_norm_2, p_lm_head_weight) : float32[1x3x11]\nreturn linear_4")
    attention = graph["scaled_dot_product_attention"]
    assert attention.attrs == {"scale": 0.5, "causal": True, "group_rows": 3}
    # Both matmuls over the full 3 x 3 square of scores per head (2 x 3 x 3 x 4 each), and the softmax's 5.
    assert attention.flops == 2 * (2 * 2 * 3 * 3 * 4) + 5 * 2 * 3 * 3


def test_attention_unfused_is_scores_softmax_weighted_sum():
    model, inputs = tiny_gpt(layers=1, d_model=8, heads=2, d_ffn=16, vocab=11, seq=3)
    graph = Legalize(fused_attention=False).run(capture(model, inputs).graph)
    text = graph.summary()
    assert "scaled_dot_product_attention_softmax1 = softmax(scaled_dot_product_attention_matmul0) : float32[1x2x3x3]" \
        in text
    probs = graph["scaled_dot_product_attention_softmax1"]
    assert probs.attrs == {"scale": 0.5, "causal": True, "group_rows": 3}
    fused = Legalize().run(capture(model, inputs).graph)
    assert sum(n.flops for n in graph if n.is_kernel) == sum(n.flops for n in fused if n.is_kernel)


def test_capture_records_shapes_flops_and_source_lines():
    model, inputs = tiny_gpt(layers=1, d_model=8, heads=2, d_ffn=16, vocab=11, seq=3)
    graph = Legalize().run(capture(model, inputs).graph)
    qkv = graph["linear"]
    assert qkv.flops == 2 * 3 * 24 * 8 + 3 * 24
    assert qkv.bytes == 4 * (3 * 8 + 24 * 8 + 24 + 3 * 24)
    assert qkv.module == "blocks.0.attn.qkv"
    assert qkv.source.startswith("cerebras_gpt.py:")


def test_symbolic_trace_fallback_matches_export():
    model, inputs = tiny_gpt(layers=1, d_model=8, heads=2, d_ffn=16, vocab=11, seq=3)
    from wsc.frontend.capture import _from_symbolic_trace

    traced = Legalize().run(_from_symbolic_trace(model, inputs).graph)
    exported = Legalize().run(capture(model, inputs).graph)
    kernels = lambda g: [n.op for n in g if n.is_kernel]  # noqa: E731
    assert kernels(traced) == kernels(exported)


def test_unsupported_op_names_op_and_line():
    model = Lambda(lambda a: a.cumsum(dim=-1))
    with pytest.raises(WscError, match=r"unsupported op aten.cumsum.default at test_capture.py:\d+.*wsc ops"):
        legal_ops(model, (x3,))


def test_attention_dropout_is_refused_cleanly():
    model = Lambda(lambda q: F.scaled_dot_product_attention(q, q, q, dropout_p=0.5))
    q = torch.randn(1, 1, 3, 4)
    with pytest.raises(WscError, match="attention dropout"):
        legal_ops(model, (q,))


def test_registry_lists_the_ops_used():
    ops = supported_aten_ops()
    for op in ("aten.linear.default", "aten.layer_norm.default", "aten.scaled_dot_product_attention.default",
               "aten.embedding.default", "aten.gelu.default", "aten.split.Tensor"):
        assert op in ops
