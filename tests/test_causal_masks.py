"""Causal attention with any query and key lengths (issue 12): PyTorch's `is_causal=True` is top-left aligned
(query i sees keys j <= i), a mask buffer `tril(k=d)` lets query i see keys j <= i + d; the attention and
softmax kernels take that diagonal as an attribute (by default N - M, the bottom-right alignment of a mask
`tril(k=S-L)`). A query that sees no key gives 0, as PyTorch does."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_kernels import randn, run_all_tilings, t

import wsc
from wsc.frontend.capture import capture
from wsc.passes.legalize import Legalize


class Attend(torch.nn.Module):
    """sdpa(q, k, v) with is_causal, or with a mask kept as a buffer (read at compile time)."""

    def __init__(self, is_causal: bool = False, mask: torch.Tensor | None = None):
        super().__init__()
        self.is_causal = is_causal
        self.mask: torch.Tensor | None
        if mask is None:
            self.mask = None
        else:
            self.register_buffer("mask", mask)

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.is_causal)


def qkv(queries: int, keys: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 3, n, 8, generator=g) for n in (queries, keys, keys))


def compile_and_check(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], fused: bool) -> None:
    compiled = wsc.compile(model, inputs, "mesh-16x16", time_limit=0.3, fused_attention=fused)
    assert compiled.report["verification"]["status"] == "pass"
    np.testing.assert_allclose(compiled(*inputs).numpy(), model(*inputs).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "softmax"])
@pytest.mark.parametrize("queries,keys", [(3, 6), (6, 6), (1, 5), (6, 3)])
def test_is_causal_is_top_left_aligned(queries, keys, fused):
    compile_and_check(Attend(is_causal=True), qkv(queries, keys), fused)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "softmax"])
@pytest.mark.parametrize("queries,keys,diagonal", [(4, 6, 2), (4, 6, 0), (4, 6, 1), (6, 4, 1), (4, 6, -1),
                                                   (5, 3, -2), (4, 6, -9)])
def test_a_tril_mask_of_any_diagonal(queries, keys, diagonal, fused):
    """Negative diagonals leave the first queries with no key: those rows are 0, as in eager."""
    mask = torch.ones(queries, keys, dtype=torch.bool).tril(diagonal)
    compile_and_check(Attend(mask=mask), qkv(queries, keys, seed=diagonal + 20), fused)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "softmax"])
def test_an_additive_causal_mask(fused):
    """A float mask: 0 where visible, -inf or a large negative number (as models write it) where not."""
    visible = torch.ones(3, 6, dtype=torch.bool).tril(1)
    mask = torch.zeros(3, 6).masked_fill(~visible, float("-inf"))
    mask[0, -1] = torch.finfo(torch.float32).min
    compile_and_check(Attend(mask=mask[None, None]), qkv(3, 6, seed=3), fused)


def attention_attrs(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], fused: bool = True) -> dict:
    captured = capture(model.eval(), inputs)
    graph = Legalize(fused_attention=fused).run(captured.graph, captured.weights)
    (node,) = [n for n in graph if n.op == ("attention" if fused else "softmax")]
    return dict(node.attrs)


def test_the_diagonal_is_set_only_where_it_is_not_the_default():
    """The default N - M keeps the IR of every square causal attention (and of a `tril(k=S-L)` mask) as it was."""
    square = {"scale": 1 / math.sqrt(8), "causal": True, "group_rows": 5}
    assert attention_attrs(Attend(is_causal=True), qkv(5, 5)) == square
    assert attention_attrs(Attend(is_causal=True), qkv(3, 6))["diagonal"] == 0
    assert attention_attrs(Attend(is_causal=True), qkv(3, 6), fused=False)["diagonal"] == 0
    bottom_right = Attend(mask=torch.ones(3, 6, dtype=torch.bool).tril(3))
    assert attention_attrs(bottom_right, qkv(3, 6)) == {"scale": 1 / math.sqrt(8), "causal": True, "group_rows": 3}
    everything = Attend(mask=torch.ones(3, 6, dtype=torch.bool).tril(5))
    assert attention_attrs(everything, qkv(3, 6))["causal"] is False


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "softmax"])
@pytest.mark.parametrize(
    "mask",
    [
        torch.ones(4, 6, dtype=torch.bool).triu(),
        torch.zeros(4, 6).masked_fill(torch.ones(4, 6, dtype=torch.bool).tril().logical_not(), -1.0),
        torch.full((4, 6), -1e9),
        torch.stack([torch.ones(4, 6, dtype=torch.bool).tril(k) for k in (0, 5, -1)])[None],
    ],
    ids=["triu", "bias", "finite_row", "per_head"],
)
def test_masks_other_than_a_diagonal_are_read_as_they_are(mask, fused):
    """Once refused, now a mask input of the kernels: a triu, a finite bias, a row hidden by finite values only
    (eager spreads it evenly) and a mask that differs between heads all match eager."""
    compile_and_check(Attend(mask=mask), qkv(4, 6), fused)


def visible_keys(m: int, n: int, diagonal: int) -> torch.Tensor:
    return torch.arange(n)[None, :] <= torch.arange(m)[:, None] + diagonal


@pytest.mark.parametrize(
    "g,m,n,d,diagonal",
    [(2, 3, 6, 5, 0), (2, 6, 3, 16, 0), (1, 1, 5, 4, 0), (3, 4, 6, 5, 1), (2, 4, 6, 8, -2), (2, 5, 3, 5, -2),
     (1, 3, 4, 4, -7), (2, 4, 6, 5, 9)],
)
def test_attention_kernel_diagonal(g, m, n, d, diagonal):
    q, k, v = randn(g, m, d, scale=2.0), randn(g, n, d, scale=2.0), randn(g, n, d)
    visible = visible_keys(m, n, diagonal)
    expected = F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=visible, scale=0.37)
    expected[:, ~visible.any(-1)] = 0.0  # a query that sees no key (eager gives 0 too, in torch >= 2.5)
    attrs = {"scale": 0.37, "causal": True, "group_rows": m, "diagonal": diagonal}
    kernel = run_all_tilings("attention", (g * m, d), [q.reshape(g * m, d), k, v], attrs,
                             expected.reshape(g * m, d).numpy())
    out = np.full((g * m, d), np.nan, dtype=np.float32)
    kernel(out, [q.reshape(g * m, d), k, v], np.array([[0, g * m, 0, d]], dtype=np.int64))
    assert np.isfinite(out).all()


@pytest.mark.parametrize(
    "rows,m,n,diagonal", [(6, 3, 6, 0), (12, 6, 3, 0), (5, 1, 5, 0), (8, 4, 6, 1), (8, 4, 6, -2), (10, 5, 3, -2),
                          (6, 3, 4, -7), (8, 4, 6, 9)],
)
def test_softmax_kernel_diagonal(rows, m, n, diagonal):
    x, scale = randn(rows, n, scale=4.0), 0.37
    visible = visible_keys(m, n, diagonal).repeat(rows // m, 1)
    expected = torch.softmax((t(x) * scale).masked_fill(~visible, float("-inf")), dim=-1)
    expected[~visible.any(-1)] = 0.0
    attrs = {"scale": scale, "causal": True, "group_rows": m, "diagonal": diagonal}
    kernel = run_all_tilings("softmax", (rows, n), [x], attrs, expected.numpy())
    out = np.full((rows, n), np.nan, dtype=np.float32)
    kernel(out, [x], np.array([[0, rows, 0, n]], dtype=np.int64))
    assert np.all(out[~visible.numpy()] == 0), "masked probabilities must be exactly 0"
