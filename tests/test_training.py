"""Training with weight streaming: the joint graph compiled, run layer by layer with its gradients streamed out,
AdamW applied in the store, and every step held to torch.optim.AdamW's in lock step."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsc import training
from wsc.cli import main
from wsc.passes import legalize
from wsc.runtime.optimizer import AdamWConfig
from wsc.targets import load_target

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cerebras_gpt_example", ROOT / "examples" / "cerebras_gpt.py")
gpt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpt)

BATCH, SEQ, VOCAB = 2, 16, 97


def tiny_gpt() -> torch.nn.Module:
    torch.manual_seed(0)
    return gpt.init_weights(gpt.CerebrasGPT(2, 32, 4, 128, vocab=VOCAB, max_positions=64), std=32**-0.5)


def batches(steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return training.lm_batches(training.structured_tokens(VOCAB, BATCH * (SEQ + 1) * steps), BATCH, SEQ, steps)


def compiled_for(model: torch.nn.Module, data: list) -> object:
    ids, targets = (torch.from_numpy(a) for a in data[0])
    return training.compile_training(model, ids, targets, load_target("cs2-sim"), strategy="greedy")


@pytest.fixture(scope="module")
def gpt_compiled():
    model = tiny_gpt()
    return model, compiled_for(model, batches(1))


def test_backward_layers_run_in_reverse_and_stream_their_weights_again(gpt_compiled):
    _, compiled = gpt_compiled
    layers = compiled.program.layers
    assert [layer.name for layer in layers] == ["embed", "blocks.0", "blocks.1", "head", "head.backward",
                                                "blocks.1.backward", "blocks.0.backward", "embed.backward"]
    graph = compiled.program.graph
    keys = {layer.name: {graph[w].attrs["key"] for w in layer.weights} for layer in layers}
    for block in ("blocks.0", "blocks.1"):
        assert keys[f"{block}.backward"] and keys[f"{block}.backward"] <= keys[block]
    # one gradient per parameter, the tied embedding / LM head weight twice (its two uses add up in the store)
    captured = compiled.captured
    assert captured.gradients.count("wte.weight") == 2
    assert len(set(captured.gradients)) == len(dict(tiny_gpt().named_parameters()))


def test_gradients_stream_out_layer_by_layer(gpt_compiled, tmp_path, monkeypatch):
    """Each gradient reaches the store in the backward layer that computes it, not at the end of the pass."""
    model, compiled = gpt_compiled
    seen: list[tuple[str, str]] = []
    original = training.Executor.stream_out

    def spying(executor, positions, sink):
        def sink_and_note(position, value):
            seen.append((compiled.captured.gradients[position - 1], executor.current_layer))
            sink(position, value)
        original(executor, positions, sink_and_note)

    monkeypatch.setattr(training.Executor, "stream_out", spying)
    training.train(compiled, batches(1), AdamWConfig(total_steps=1), tmp_path / "opt")
    where = dict(seen)
    assert where["blocks.1.fc.weight"] == "blocks.1.backward"
    assert where["blocks.0.ln_1.weight"] == "blocks.0.backward"
    assert where["wpe.weight"] in ("blocks.0.backward", "embed.backward")


def test_tiny_gpt_matches_torch_adamw_over_three_steps(gpt_compiled, tmp_path):
    model, compiled = gpt_compiled
    config = AdamWConfig(lr=3e-3, warmup_steps=2, total_steps=3)
    run = training.train(compiled, batches(3), config, tmp_path / "opt", reference=model)
    assert run.status == "pass", [(c.step, c.gradients, c.weights) for c in run.checks]
    assert [c.status for c in run.checks] == ["pass"] * 3
    assert run.learning_rates == pytest.approx([config.lr_at(s) for s in (1, 2, 3)])
    assert max(c.gradients["error_ratio"] for c in run.checks) < 0.5
    # the store's weights moved, and the reference model was left as it was
    assert run.losses[0] != run.losses[1]
    torch.testing.assert_close(dict(model.named_parameters())["wpe.weight"],
                               dict(tiny_gpt().named_parameters())["wpe.weight"], rtol=0, atol=0)


def test_a_wrong_layernorm_backward_fails_and_is_located(tmp_path, monkeypatch):
    """The layer norm's input gradient without its weight term: training verification fails at step 1, on a
    gradient, and names a kernel of the layer norm's backward."""
    rule = legalize._RULES["aten.native_layer_norm_backward.default"]

    def without_weight(rw, node):
        if node.attrs.get("index", 0) != 0:
            return rule(rw, node)
        args = list(node.attrs["args"])
        args[5] = None
        return rule(rw, type(node)(**{**node.__dict__, "attrs": {**node.attrs, "args": tuple(args)}}))

    monkeypatch.setitem(legalize._RULES, "aten.native_layer_norm_backward.default", without_weight)
    model = tiny_gpt()
    compiled = compiled_for(model, batches(1))
    run = training.train(compiled, batches(1), AdamWConfig(total_steps=1), tmp_path / "opt", reference=model)
    assert run.status == "fail"
    assert run.checks[0].gradients["status"] == "fail"
    summary = run.summary()
    assert summary["first_failing_step"] == 1 and "gradients" in summary["first_failure"]
    assert summary["share_of_bound"]["gradients"] > 100
    located = run.located
    assert located is not None
    assert located["kind"] == "kernel" and located["wrong"] == "by itself"
    assert located["layer"] == "head.backward" and located["module"] == "ln_f"  # the first norm the backward meets
    assert "native_layer_norm_backward" in located["source"]


def test_fifty_steps_the_loss_falls_and_every_step_matches(tmp_path):
    model = tiny_gpt()
    data = batches(50)
    compiled = compiled_for(model, data)
    run = training.train(compiled, data, AdamWConfig(lr=3e-3, warmup_steps=5, total_steps=50), tmp_path / "o",
                         reference=model)
    failing = [(c.step, part, getattr(c, part)) for c in run.checks for part in
               ("loss", "gradients", "weights", "exp_avg", "exp_avg_sq") if getattr(c, part)["status"] != "pass"]
    assert run.status == "pass", failing[:2]
    assert training.loss_falls(run.losses)
    assert np.mean(run.losses[-5:]) < 0.7 * np.mean(run.losses[:5])


def test_tiny_llama_matches_torch_adamw(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # norms away from the identity
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    data = batches(2)
    compiled = compiled_for(model, data)
    run = training.train(compiled, data, AdamWConfig(lr=3e-3, total_steps=2), tmp_path / "o", reference=model)
    assert run.status == "pass", [(c.step, c.gradients, c.weights) for c in run.checks]


def test_wsc_train_writes_its_training_report(tmp_path, capsys):
    out = tmp_path / "train"
    code = main(["train", str(ROOT / "tests" / "models" / "tiny_gpt.py"), "--target", "cs2-sim", "--steps", "2",
                 "--strategy", "greedy", "--out", str(out)])
    said = capsys.readouterr()
    assert code == 0, said.err
    report = json.loads((out / "report.json").read_text())
    section = report["training"]
    assert section["status"] == "pass" and section["steps"] == 2 and len(section["loss"]) == 2
    assert len(section["learning_rate"]) == 2 and section["predicted_step_seconds"] > 0
    assert section["tokens_per_second"] > 0
    assert (out / "optimizer" / "master.safetensors").is_file()
    assert "verification pass" in said.out


@pytest.mark.parametrize("argv, says", [
    (["--steps", "0"], "--steps 0"),
    (["--lr", "-1"], "--lr -1"),
    (["--data", "/nonexistent.npy"], "--data /nonexistent.npy"),
])
def test_wsc_train_refuses_bad_input_in_one_line(tmp_path, capsys, argv, says):
    out = tmp_path / "train"
    code = main(["train", str(ROOT / "tests" / "models" / "tiny_gpt.py"), "--target", "cs2-sim", "--out", str(out),
                 *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and says in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_wsc_train_refuses_an_out_folder_holding_other_files(tmp_path, capsys):
    out = tmp_path / "train"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["train", str(ROOT / "tests" / "models" / "tiny_gpt.py"), "--target", "cs2-sim", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--out" in err and len(err.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine"
