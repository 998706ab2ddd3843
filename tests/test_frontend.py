"""Front ends: Hugging Face GPT-2, a nanoGPT-style module, .pt2 files, the Python API, torch.compile; each
verified against eager PyTorch. Also the Cerebras-GPT family's sizes and the FLOPs counted from the graph."""

from __future__ import annotations

import pytest
import torch
from conftest import load_example, tiny_gpt
from torch.utils.flop_counter import FlopCounterMode

import wsc
from wsc.core.errors import WscError
from wsc.frontend.meta import empty_weights

# The front ends are what is tested: where the kernels sit changes nothing they compute nor the step the
# stream sets, so the greedy placer places them (cpsat, routing every candidate, takes about a second).
FAST = {"time_limit": 0.3, "strategy": "greedy"}

# Compiled against eager on the tiny GPT: about 1e-6 apart when right; a wrong tile, mask or scale moves
# them by far more.
CLOSE = 1e-4


def assert_verified(compiled: wsc.CompiledModel) -> None:
    v = compiled.report["verification"]
    assert v["status"] == "pass", v
    assert v["max_abs_err"] <= CLOSE


def test_hugging_face_gpt2_compiles_and_verifies(small_target):
    pytest.importorskip("transformers")
    hf = load_example("hf_cerebras_gpt")
    model = hf.build_model("111M", n_layer=2, n_embd=32, n_head=4, n_inner=128, vocab_size=211)
    inputs = hf.example_inputs(seq=16, vocab_size=211)
    compiled = wsc.compile(model, inputs, small_target, **FAST)
    assert_verified(compiled)
    assert compiled.report["model"]["layers"] == 4  # embedding, two blocks, head: the HF module paths
    ops = [n.op for n in compiled.program.graph if n.is_kernel]
    assert ops.count("attention") == 2 and "embedding" in ops  # the mask computation was folded away


def test_hugging_face_checkpoint_folder_loads(tmp_path):
    pytest.importorskip("transformers")
    from safetensors.torch import save_file

    hf = load_example("hf_cerebras_gpt")
    shape = dict(n_layer=1, n_embd=32, n_head=4, n_inner=64, vocab_size=101)
    source = hf.build_model("111M", seed=3, **shape)
    state = {k: v.contiguous() for k, v in source.model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, tmp_path / "model.safetensors")
    loaded = hf.build_model("111M", checkpoint=str(tmp_path), seed=4, **shape)
    ids = hf.example_inputs(seq=8, vocab_size=101)
    with torch.no_grad():
        assert torch.equal(loaded(*ids), source(*ids))


def test_nanogpt_style_module_with_mask_buffer(small_target):
    nano = load_example("nanogpt")
    args = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=300, block_size=64, seq=24)
    model, inputs = nano.build_model(**args), nano.example_inputs(**args)
    compiled = wsc.compile(model, inputs, small_target, **FAST)
    assert_verified(compiled)
    attention = [n for n in compiled.program.graph if n.op == "attention"]
    assert len(attention) == 2 and all(n.attrs["causal"] for n in attention)  # the tril buffer is the causal mask
    keys = {n.attrs["key"] for n in compiled.program.graph.params}
    assert not any(k.endswith(".attn.bias") for k in keys)  # the mask is not streamed as a weight


def test_nanogpt_without_weights_still_sees_its_mask():
    nano = load_example("nanogpt")
    with empty_weights():
        model = nano.build_model(n_layer=1, n_embd=32, n_head=2, vocab_size=300, seq=16)
    compiled = wsc.compile(model, nano.example_inputs(vocab_size=300, seq=16), "mesh-16x16", **FAST)
    assert compiled.report["verification"]["status"] == "skipped"
    assert "meta device" in compiled.report["verification"]["note"]
    with pytest.raises(WscError, match="compiled without weights"):
        compiled(*nano.example_inputs(vocab_size=300, seq=16))


def test_pt2_file_compiles_and_verifies(tmp_path, capsys):
    from wsc.cli import main

    model, inputs = tiny_gpt(layers=1)
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, inputs), path)
    code = main(["compile", str(path), "--target", "mesh-16x16", "--out", str(tmp_path / "out"),
                 "--time-limit", "0.3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verification  pass" in out
    import json

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["capture"] == "torch.export"
    assert report["model"]["file"].endswith("tiny.pt2")


def test_python_api_returns_tensors_and_checks_inputs(small_target):
    model, inputs = tiny_gpt(layers=1, batch=2, seq=6)
    compiled = wsc.compile(model, inputs, small_target, **FAST)
    assert_verified(compiled)
    ids = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(7))
    out = compiled(ids)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 6, 97)
    with torch.no_grad():
        assert (out - model(ids)).abs().max() < CLOSE
    with pytest.raises(WscError, match=r"input 0 is int64\[2, 7\] but the model was compiled for int64\[2, 6\]"):
        compiled(torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(WscError, match=r"input 0 is int32\[2, 6\]"):
        compiled(ids.int())
    with pytest.raises(WscError, match="takes 1 inputs, got 2"):
        compiled(ids, ids)
    assert compiled.report["simulation"]["step_seconds"] > 0


def test_torch_compile_backend(small_target):
    import wsc.backend

    model, inputs = tiny_gpt(layers=1)
    calls = []
    inner = wsc.backend.make_backend(small_target, verify=True, **FAST)

    def counting(gm, example_inputs):
        calls.append(gm)
        return inner(gm, example_inputs)

    with torch.no_grad():
        out = torch.compile(model, backend=counting)(*inputs)
        expected = model(*inputs)
    assert len(calls) == 1
    assert (out - expected).abs().max() < CLOSE
    assert not torch.equal(out, expected)  # computed by wsc's kernels, not by eager PyTorch


def test_backend_is_registered_by_name():
    from torch._dynamo import list_backends

    assert "wsc" in list_backends(exclude_tags=())


CARD_PARAMS = {"111M": 111e6, "256M": 256e6, "590M": 590e6, "1.3B": 1.3e9, "2.7B": 2.7e9, "6.7B": 6.7e9,
               "13B": 13e9}


@pytest.mark.parametrize("size", list(CARD_PARAMS))
def test_every_size_matches_the_card(size, gpt_module):
    with empty_weights():
        model = gpt_module.build_model(size)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / CARD_PARAMS[size] - 1) < 0.03


def test_flops_counted_from_the_graph_match_torch_flop_counter(small_target):
    """Matmul FLOPs from the wsc graph equal PyTorch's own count, forward and forward + backward. PyTorch's
    counter has no formula for the CPU attention kernel, so attention (4 S^2 d per layer) is added by hand."""
    model, inputs = tiny_gpt(layers=2, d_model=32, seq=12)
    compiled = wsc.compile(model, inputs, small_target, verify=False, **FAST)
    graph = compiled.program.graph
    matmul = sum(2 * n.numel * graph[n.inputs[0]].shape[-1] for n in graph if n.op == "matmul")
    fused = [n for n in graph if n.op == "attention"]
    attention = 2 * 4 * 12**2 * 32  # both layers' two attention matmuls (the fused kernel's multiply-adds)
    assert sum(n.flops for n in fused) == attention + 2 * 5 * 4 * 12**2  # ... and the softmax between them
    matmul += attention
    with FlopCounterMode(display=False) as forward:
        model(*inputs)
    assert matmul == forward.get_total_flops() + attention
    model.train()
    with FlopCounterMode(display=False) as training:
        model(*inputs).sum().backward()
    report = compiled.report["model"]
    tokens = report["tokens_per_step"]
    assert report["flops_per_token"] * tokens == sum(n.flops for n in graph if n.is_kernel)
    # Training matmul work is three times the forward's; the report's count is the same rule over all ops.
    assert training.get_total_flops() == 3 * (matmul - attention)
    assert report["train_flops_per_token"] == pytest.approx(3 * report["flops_per_token"], rel=0.05)


def test_long_sequence_and_batch_compile_for_cs2():
    model, inputs = tiny_gpt(layers=1, d_model=64, heads=4, d_ffn=256, batch=2, seq=2048, vocab=128)
    model.wpe = torch.nn.Embedding(2048, 64)
    # Greedy placement (FAST): the report's step and bound are cpsat's to the bit (the stream sets them), and
    # cpsat's routing of 4,096 tokens' lanes for every candidate on the wafer took seconds.
    compiled = wsc.compile(model, inputs, "cs2-sim", verify=False, **FAST)
    assert compiled.report["model"]["tokens_per_step"] == 4096
    assert compiled.report["simulation"]["step_seconds"] >= compiled.report["simulation"]["bound_seconds"]
