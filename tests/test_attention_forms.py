"""Attention in every form the models use: grouped key/value heads read as shared heads, never copied (sdpa's
`enable_gqa` and Hugging Face's `repeat_kv` chain), key/value batches of 1, masks of every form sdpa takes (bool or
additive, any shape that broadcasts, known at compile time or computed at run time, causal + padding), fused and
unfused, with PyTorch's handling of -inf; decode shapes, head counts and head dims that are not powers of two."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_kernels import randn, run_all_tilings, t
from test_sram_traffic import graph_of, plan_of

import wsc
from wsc import ops
from wsc.core.errors import WscError
from wsc.core.ir import Graph, Node
from wsc.frontend.capture import capture
from wsc.passes.fold_constants import FoldConstants
from wsc.passes.legalize import Legalize
from wsc.passes.sram_traffic import sram_traffic
from wsc.runtime.lowering import compile_kernel

FUSED = pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])


class Attend(torch.nn.Module):
    """sdpa(q, k, v, mask) with sdpa's keywords; `mask` builds the attn_mask from the inputs after q, k, v."""

    def __init__(self, mask=None, **keywords):
        super().__init__()
        self.make_mask, self.keywords = mask, keywords

    def forward(self, q, k, v, *rest):
        mask = self.make_mask(q, k, *rest) if self.make_mask is not None else (rest[0] if rest else None)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **self.keywords)


class Buffered(torch.nn.Module):
    """sdpa with a mask the model carries as a buffer: known at compile time."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)


def tensors(*shapes: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g) for shape in shapes)


def qkv(b: int = 2, heads: int = 6, kv_heads: int = 6, s_q: int = 5, s_k: int = 7, d: int = 8,
        kv_batch: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    kv = kv_batch or b
    return tensors((b, heads, s_q, d), (kv, kv_heads, s_k, d), (kv, kv_heads, s_k, d), seed=seed)


def compile_and_check(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], fused: bool) -> Graph:
    """Compiled, verified and run: the numbers are eager's (float32 sums of a few terms of unit size: 1e-5)."""
    compiled = wsc.compile(model, inputs, "mesh-16x16", time_limit=0.3, fused_attention=fused)
    assert compiled.report["verification"]["status"] == "pass", compiled.report["verification"]
    np.testing.assert_allclose(compiled(*inputs).numpy(), model(*inputs).detach().numpy(), rtol=1e-4, atol=1e-5)
    return compiled.program.graph


def legal(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], fused: bool = True) -> Graph:
    captured = capture(model.eval(), inputs)
    return Legalize(fused_attention=fused).run(FoldConstants().run(captured.graph, captured.weights),
                                               captured.weights)


def the(graph: Graph, op: str) -> Node:
    (node,) = [n for n in graph if n.op == op]
    return node


def source_of(graph: Graph, name: str) -> Node:
    """The node a value comes from, through reshapes (which keep the elements where they are)."""
    node = graph[name]
    while node.op == "reshape":
        node = graph[node.inputs[0]]
    return node


# ------------------------------------------------------------------------------------ the kernel, by itself


@pytest.mark.parametrize(
    "b,heads,kv_heads,kv_batch,m,n,d,dv",
    [(2, 6, 2, 2, 4, 6, 8, 8), (2, 6, 2, 1, 3, 5, 24, 24), (2, 4, 1, 1, 1, 6, 5, 7), (1, 12, 4, 1, 2, 9, 40, 16)],
    ids=["gqa", "gqa_kv_batch_1", "mqa_decode_dv", "gqa_12_heads"],
)
def test_kernel_reads_each_key_value_head_for_its_query_heads(b, heads, kv_heads, kv_batch, m, n, d, dv):
    """Query group g reads key/value group (g // groups) % Gk: the k and v it is given are never repeated."""
    q, k = randn(b, heads, m, d, scale=2.0), randn(kv_batch, kv_heads, n, d, scale=2.0)
    v = randn(kv_batch, kv_heads, n, dv)
    expected = F.scaled_dot_product_attention(t(q), t(k).expand(b, -1, -1, -1), t(v).expand(b, -1, -1, -1),
                                              scale=0.37, enable_gqa=True)
    attrs = {"scale": 0.37, "causal": False, "group_rows": m, "groups": heads // kv_heads}
    inputs = [q.reshape(-1, d), k.reshape(-1, n, d), v.reshape(-1, n, dv)]
    run_all_tilings("attention", (b * heads * m, dv), inputs, attrs, expected.reshape(-1, dv).numpy())


def visible_keys(m: int, n: int, diagonal: int) -> torch.Tensor:
    return torch.arange(n)[None, :] <= torch.arange(m)[:, None] + diagonal


MASK_SHAPES = [(2, 3, 4, 6), (2, 1, 1, 6), (1, 3, 1, 6), (1, 1, 4, 6), (2, 1, 4, 1), (1, 1, 1, 1)]


@pytest.mark.parametrize("shape", MASK_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("form", ["additive", "bool", "bool_as_f32"])
def test_kernel_reads_a_mask_at_its_broadcast_strides(shape, form):
    """Every broadcast of a [B, H, S_q, S_k] mask, as an additive float (with -inf entries), bools, or bools held
    as float 0/1, under a causal diagonal and grouped heads; rows it hides entirely are 0, as in eager."""
    b, heads, kv_heads, m, n, d, diagonal = 2, 3, 1, 4, 6, 8, 1
    q, k, v = randn(b, heads, m, d, scale=2.0), randn(b, kv_heads, n, d, scale=2.0), randn(b, kv_heads, n, d)
    rng = np.random.default_rng(sum(shape))
    seen = rng.random(shape) > 0.4
    seen.reshape(-1, *shape[-2:])[0, 0] = False  # a row (or, broadcast, every row) with every key hidden
    if form == "additive":
        mask = np.where(seen, rng.standard_normal(shape), -np.inf).astype(np.float32)
        torch_mask = t(mask) + torch.where(visible_keys(m, n, diagonal), 0.0, float("-inf"))
    else:
        mask = seen if form == "bool" else seen.astype(np.float32)
        torch_mask = t(seen) & visible_keys(m, n, diagonal)
    expected = F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=torch_mask, scale=0.37, enable_gqa=True)
    attrs = {"scale": 0.37, "causal": True, "group_rows": m, "diagonal": diagonal, "groups": heads // kv_heads,
             "mask": "additive" if form == "additive" else "bool"}
    if form == "bool_as_f32":
        attrs["mask_kind"] = "f32"
    inputs = [q.reshape(-1, d), k.reshape(-1, n, d), v.reshape(-1, n, d), mask]
    run_all_tilings("attention", (b * heads * m, d), inputs, attrs, expected.reshape(-1, d).numpy())


def test_kernel_mask_infinities_are_pytorchs():
    """A row of -inf only is 0 (safe softmax); +inf or NaN in a row makes it NaN; a row of float32's min is
    spread evenly over its keys, as eager gives them."""
    m, n, d = 5, 4, 8
    q, k, v = randn(1, 1, m, d), randn(1, 1, n, d), randn(1, 1, n, d)
    mask = np.zeros((m, n), np.float32)
    mask[0] = -np.inf
    mask[1, 2] = np.inf
    mask[2, 1] = np.nan
    mask[3] = np.finfo(np.float32).min
    expected = F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=t(mask))[0, 0].numpy()
    assert (expected[0] == 0).all() and np.isnan(expected[1:3]).all() and np.isfinite(expected[3:]).all()
    attrs = {"scale": d**-0.5, "causal": False, "group_rows": m, "mask": "additive"}
    run_all_tilings("attention", (m, d), [q.reshape(m, d), k[0], v[0], mask.reshape(1, 1, m, n)], attrs, expected)


@pytest.mark.parametrize("kind", ["bool", "f32"])
def test_mask_bias_kernel(kind):
    seen = np.random.default_rng(3).random((6, 5)) > 0.5
    mask = seen if kind == "bool" else seen.astype(np.float32)
    run_all_tilings("mask_bias", (6, 5), [mask], {"mask_kind": kind} if kind == "f32" else {},
                    np.where(seen, 0.0, -np.inf).astype(np.float32))


def test_kernel_checks():
    with pytest.raises(ValueError, match="not groups=4 query groups per key/value group of 2"):
        compile_kernel("attention", (12, 4), [(12, 4), (2, 5, 4), (2, 5, 4)], {"group_rows": 2, "groups": 4})
    with pytest.raises(ValueError, match="does not broadcast over 2 groups of 4 queries and 5 keys"):
        compile_kernel("attention", (8, 4), [(8, 4), (2, 5, 4), (2, 5, 4), (1, 1, 3, 5)],
                       {"group_rows": 4, "mask": "additive"})
    with pytest.raises(ValueError, match="v has shape"):
        compile_kernel("attention", (8, 4), [(8, 4), (2, 5, 4), (2, 5, 3)], {"group_rows": 4})


# ------------------------------------------------------------------------------------- grouped key/value heads


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Hugging Face's repeat_kv (transformers.integrations.sdpa_attention), as the models call it before sdpa."""
    batch, num_key_value_heads, slen, head_dim = x.shape
    x = x[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return x.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


class RepeatedKV(torch.nn.Module):
    def forward(self, q, k, v):
        groups = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, repeat_kv(k, groups), repeat_kv(v, groups), is_causal=True)


def assert_heads_shared(graph: Graph, fused: bool, kv_shape: tuple[int, ...], groups: int) -> None:
    """Nothing copies a key or value: no expand in the graph, and what reads k and v reads the model's inputs
    (through reshapes, which move nothing)."""
    assert not [n for n in graph if n.op in ("expand", "repeat", "repeat_interleave")]
    if fused:
        node = the(graph, "attention")
        assert node.attrs["groups"] == groups
        readers = [node.inputs[1], node.inputs[2]]
    else:
        matmuls = [n for n in graph if n.op == "matmul"]
        readers = [matmuls[0].inputs[1], graph[matmuls[1].inputs[1]].inputs[0]]  # k, and v under its transpose
    assert [source_of(graph, r).name for r in readers] == ["k", "v"]
    assert all(graph[r].numel == math.prod(kv_shape) for r in readers)


@FUSED
def test_enable_gqa_reads_shared_heads(fused):
    inputs = qkv(heads=6, kv_heads=2)
    graph = compile_and_check(Attend(enable_gqa=True, is_causal=True), inputs, fused)
    assert_heads_shared(graph, fused, (2, 2, 7, 8), groups=3)


@FUSED
def test_the_repeat_kv_chain_is_read_through(fused):
    """x[:, :, None].expand(...).reshape(...) before sdpa: the kernel reads x, the copy goes dead."""
    inputs = qkv(heads=6, kv_heads=2, s_q=7)
    graph = compile_and_check(RepeatedKV(), inputs, fused)
    assert_heads_shared(graph, fused, (2, 2, 7, 8), groups=3)


@FUSED
@pytest.mark.parametrize("kv_heads,gqa", [(2, True), (6, False)], ids=["gqa", "mha"])
def test_keys_and_values_with_a_batch_of_one(fused, kv_heads, gqa):
    """k and v of batch 1 serve every batch row (the unfused form puts the heads first for its matmuls)."""
    graph = compile_and_check(Attend(enable_gqa=gqa), qkv(kv_heads=kv_heads, kv_batch=1), fused)
    assert not [n for n in graph if n.op == "expand"]


@FUSED
@pytest.mark.parametrize("queries", [(4, 3, 8), (1, 4, 3, 8)], ids=["lower_rank", "batch_of_one"])
def test_queries_sdpa_broadcasts_over_the_keys_batch(queries, fused):
    """Queries of a lower rank than the keys, or of a batch of 1, serve every batch row of the keys: the output
    has the keys' batch."""
    graph = compile_and_check(Attend(is_causal=True), tensors(queries, (2, 4, 6, 8), (2, 4, 6, 8), seed=4), fused)
    assert graph[graph.outputs[0]].shape == (2, 4, 3, 8)


def test_hugging_face_llama_shares_its_heads():
    """transformers' Llama with sdpa and 6 query heads over 2 key/value heads: what 5.x emits (repeat_kv before
    sdpa, a causal mask folded to the diagonal) runs as shared heads."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                      attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, ids):
            return self.model(input_ids=ids, use_cache=False).logits

    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    compiled = wsc.compile(Logits(), (ids,), "mesh-16x16", time_limit=0.3)
    assert compiled.report["verification"]["status"] == "pass", compiled.report["verification"]
    graph = compiled.program.graph
    node = the(graph, "attention")
    assert node.attrs["groups"] == 3 and node.attrs["causal"] and len(node.inputs) == 3
    assert [graph[i].shape for i in node.inputs] == [(2, 6, 7, 8), (2, 2, 7, 8), (2, 2, 7, 8)]
    assert not [n for n in graph if n.op == "expand"]


def test_shared_heads_cost_what_they_read():
    """The FLOPs of grouped heads are those of the heads they stand for; the bytes moved count the real k and v."""
    inputs = qkv(heads=6, kv_heads=2)
    grouped = the(legal(Attend(enable_gqa=True), inputs), "attention")
    q, k, v = inputs
    repeated = the(legal(Attend(), (q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1))), "attention")
    assert grouped.flops == repeated.flops == 2 * (2 * 6 * 5 * 7) * (8 + 8) + 5 * (2 * 6 * 5 * 7)
    assert grouped.bytes == 4 * (q.numel() + k.numel() + v.numel() + q.numel())
    assert repeated.bytes - grouped.bytes == 4 * 2 * (3 - 1) * k.numel()


# ------------------------------------------------------------------------------------------------------ masks


def padding(b: int, n: int, hidden: dict[int, slice]) -> torch.Tensor:
    """A [b, n] padding mask (True: a real token), `hidden` batch rows padded as their slices say."""
    mask = torch.ones(b, n, dtype=torch.bool)
    for row, keys in hidden.items():
        mask[row, keys] = False
    return mask


def hf_mask(q: torch.Tensor, k: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """What transformers' sdpa_mask builds from a padding mask: the padding read at (batch, key) by arange
    indices, & the causal pattern, expanded over the batch."""
    b, s_q, s_k = q.shape[0], q.shape[2], k.shape[2]
    batch, keys = torch.arange(b)[:, None, None, None], torch.arange(s_k)[None, None, None, :]
    queries = torch.arange(s_q)[None, None, :, None]
    return ((keys <= queries) & pad[batch, keys]).expand(b, -1, s_q, s_k)


def causal_plus_padding(q: torch.Tensor, k: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
    """An additive causal mask plus an additive padding mask computed from a float attention_mask."""
    causal = torch.full((q.shape[2], k.shape[2]), float("-inf")).triu(1)
    return causal + (am[:, None, None, :] * 1e9 - 1e9)


MASK_FORMS = {
    # name: (model, extra inputs after q, k, v (s_q 5, s_k 7), the kernel's mask input shape or None)
    "bool_padding_input": (Attend(), (padding(2, 7, {1: slice(5, None)})[:, None, None, :],), (2, 1, 1, 7)),
    "float_input": (Attend(), tensors((2, 6, 5, 7), seed=5), (2, 6, 5, 7)),
    "float_head_bias_input": (Attend(), tensors((1, 6, 1, 7), seed=6), (1, 6, 1, 7)),
    "float_padding_computed": (Attend(lambda q, k, am: am[:, None, None, :] * 1e9 - 1e9),
                               (padding(2, 7, {0: slice(0, 3)}).float(),), (2, 1, 1, 7)),
    "bool_buffer_triu": (Buffered(torch.ones(5, 7, dtype=torch.bool).triu()), (), (5, 7)),
    "float_buffer_bias": (Buffered(torch.linspace(-3, 3, 6 * 5 * 7).reshape(6, 5, 7)), (), (6, 5, 7)),
    "causal_plus_float_padding": (Attend(causal_plus_padding), (padding(2, 7, {1: slice(4, None)}).float(),),
                                  (2, 1, 1, 7)),
    "hf_causal_and_bool_padding": (Attend(hf_mask), (padding(2, 7, {1: slice(4, None)}),), (2, 1, 1, 7)),
}


@FUSED
@pytest.mark.parametrize("form", list(MASK_FORMS))
def test_mask_forms(form, fused):
    """Each form against eager. Fused, the kernel takes the mask (or its run-time factor, the causal one being its
    diagonal) as it is, at its broadcast strides; unfused, it is added before the softmax."""
    model, extra, kernel_mask = MASK_FORMS[form]
    graph = compile_and_check(model, qkv() + extra, fused)
    causal = form in ("causal_plus_float_padding", "hf_causal_and_bool_padding")
    if fused:
        node = the(graph, "attention")
        assert [tuple(graph[i].shape) for i in node.inputs[3:]] == [kernel_mask]
    else:
        node = the(graph, "softmax")
        assert node.attrs["scale"] == 1.0 and graph[node.inputs[0]].op in ("add", "permute")
    assert node.attrs["causal"] == causal


@pytest.mark.parametrize("form", ["causal_plus_float_padding", "hf_causal_and_bool_padding"])
def test_a_causal_factor_becomes_the_diagonal(form):
    """causal & padding (or causal + padding): the causal factor, known at compile time, is the kernel's diagonal
    (keys above it cost nothing) and only the padding, [B, 1, 1, S_k], is read at run time."""
    model, extra, _ = MASK_FORMS[form]
    node = the(legal(model, qkv() + extra), "attention")
    assert (node.attrs["causal"], node.attrs["diagonal"]) == (True, 0)  # both are top-left: key j <= query i
    assert node.attrs["mask"] == ("additive" if "float" in form else "bool")


def test_a_mask_that_is_a_causal_pattern_needs_no_mask_input():
    """The diagonal fast path: a tril buffer is the diagonal alone, no mask read at run time."""
    node = the(legal(Buffered(torch.ones(5, 7, dtype=torch.bool).tril(1)), qkv()), "attention")
    assert len(node.inputs) == 3 and "mask" not in node.attrs and node.attrs["diagonal"] == 1


@FUSED
def test_rows_with_every_key_masked_are_zero(fused):
    """Left padding under a causal mask (as a batched decoder gets it) hides every key from the first queries
    of the padded row: eager's safe softmax gives them 0, and so do both forms."""
    pad = padding(2, 7, {1: slice(0, 4)})
    inputs = qkv(s_q=7) + (pad,)
    assert (Attend(hf_mask)(*inputs)[1, :, :4] == 0).all()
    compile_and_check(Attend(hf_mask), inputs, fused)


@FUSED
@pytest.mark.parametrize("scale", [2.5, 1.0])
def test_any_scale_with_a_mask(scale, fused):
    compile_and_check(Attend(scale=scale), qkv() + tensors((2, 1, 5, 7), seed=9), fused)


@FUSED
def test_decode_shape_with_grouped_heads_and_padding(fused):
    """One query over 9 cached keys, 8 query heads over 2 key/value heads, a padding mask."""
    inputs = qkv(heads=8, kv_heads=2, s_q=1, s_k=9) + (padding(2, 9, {0: slice(0, 3)})[:, None, None, :],)
    compile_and_check(Attend(enable_gqa=True), inputs, fused)


@pytest.mark.parametrize("heads,kv_heads,d", [(6, 2, 24), (12, 4, 40), (20, 5, 80), (20, 20, 128)])
def test_head_counts_and_dims_that_are_not_powers_of_two(heads, kv_heads, d):
    inputs = qkv(b=1, heads=heads, kv_heads=kv_heads, s_q=3, s_k=5, d=d)
    compile_and_check(Attend(enable_gqa=kv_heads != heads, is_causal=True), inputs, True)


def test_mask_cost_rows_by_hand():
    """A mask adds a FLOP per score and, per query row and key, one entry read (a byte for bools); a PE holds
    a streamed key's entries for each of its rows (one for all when the mask is the same for every query),
    double-buffered."""
    graph, node = graph_of("attention", (2, 3, 4), (2, 3, 4), (2, 5, 4), (2, 5, 4), (2, 1, 3, 5), mask="additive")
    plan = plan_of(6, 4, 3, 1)  # tiles of 2 query rows
    pairs = 2 * 5
    assert node.flops == 2 * (6 * 5) * (4 + 4) + 6 * (6 * 5)
    assert sram_traffic(graph, node, plan, 2) == (pairs * (4 + 4 + 3) * 2 + pairs * 2, pairs * (4 + 2) * 2)
    op = ops.kernel("attention")
    unmasked = graph_of("attention", (2, 3, 4), (2, 3, 4), (2, 5, 4), (2, 5, 4))
    cut = plan.cut
    assert op.sram_bytes(graph, node, cut, 2) - op.sram_bytes(*unmasked, cut, 2) == 2 * 2 * 2  # 2 rows, fp16
    node.attrs["mask"] = "bool"
    graph["x3"].shape = (2, 1, 1, 5)
    assert op.sram_bytes(graph, node, cut, 2) - op.sram_bytes(*unmasked, cut, 2) == 2 * 1 * 1  # one byte per key
    assert sram_traffic(graph, node, plan, 2)[0] == pairs * (4 + 4 + 3) * 2 + pairs * 1


def test_a_value_width_of_its_own_is_costed_as_such():
    """D = 4 for the scores, Dv = 5 for the weighted sum and the output."""
    graph, node = graph_of("attention", (2, 3, 5), (2, 3, 4), (2, 6, 4), (2, 6, 5))
    pairs = 6 * 6
    assert node.flops == 2 * pairs * (4 + 5) + 5 * pairs
    tile_rows = 2
    held = tile_rows * 4 * 2 + tile_rows * 5 * 4 + tile_rows * 2 * 4 + 2 * (4 + 5) * 2  # q, out (fp32), max/sum, k/v
    assert ops.kernel("attention").sram_bytes(graph, node, plan_of(6, 5, 3, 1).cut, 2) == held


@FUSED
def test_a_bool_mask_computed_by_a_kernel_arrives_as_float(fused):
    """A comparison kernel writes its bools as float 0.0 and 1.0: the kernels read such a mask as bools all the
    same (mask_kind f32)."""
    inputs = qkv() + (padding(2, 7, {1: slice(0, 2)}).float(),)
    graph = compile_and_check(Attend(lambda q, k, am: (am > 0.5)[:, None, None, :]), inputs, fused)
    reader = the(graph, "attention" if fused else "mask_bias")
    assert reader.attrs.get("mask_kind") == "f32" and graph[reader.inputs[-1]].dtype == "bool"


# ---------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "model,inputs,match",
    [
        (Attend(dropout_p=0.1), qkv(), "attention dropout"),
        (Attend(), tensors((2, 3, 4, 5, 8), (2, 1, 4, 6, 8), (2, 1, 4, 6, 8)),
         r"keys and values of batch \[2, 1\] for queries of batch \[2, 3\]"),
        (Attend(), tensors((2, 3, 4, 5, 8), (2, 3, 4, 6, 8), (2, 3, 4, 6, 8)) + (torch.ones(1, 3, 1, 5, 6) > 0,),
         "broadcasts over some but not all of the batch dims"),
    ],
    ids=["dropout", "kv_batch_partly_broadcast", "mask_batch_partly_broadcast"],
)
def test_refusals_are_one_line(model, inputs, match):
    with pytest.raises(WscError, match=match) as info:
        wsc.compile(model, inputs, "mesh-16x16", time_limit=0.3)
    assert "\n" not in str(info.value)
