"""Cerebras-GPT in its Hugging Face form: a transformers GPT2LMHeadModel built from the model card's shapes.

Cerebras published the family as GPT2LMHeadModel checkpoints. This file builds the same architecture from a
configuration (no download, ever) with random weights, or loads weights from a local checkpoint directory
you name (safetensors: `model.safetensors`, or shards with `model.safetensors.index.json`):

    wsc compile examples/hf_cerebras_gpt.py --target cs2-sim --model-arg size=111M
    wsc compile examples/hf_cerebras_gpt.py --target cs2-sim --model-arg checkpoint=/path/to/Cerebras-GPT-111M
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from torch import nn


def _card_sizes() -> dict[str, tuple[int, int, int, int]]:
    """size -> (layers, d_model, heads, d_ffn): the model card's table, kept once in cerebras_gpt.py."""
    spec = importlib.util.spec_from_file_location("cerebras_gpt_sizes", Path(__file__).with_name("cerebras_gpt.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.SIZES


SIZES = _card_sizes()


class LogitsOnly(nn.Module):
    """GPT2LMHeadModel returns a ModelOutput; compilers and eager comparisons want the logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False, return_dict=False)[0]


def config(size: str = "111M", **overrides):
    from transformers import GPT2Config

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    n_layer, n_embd, n_head, n_inner = SIZES[size]
    settings = dict(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_inner=n_inner, n_positions=2048,
                    vocab_size=50257, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
                    attn_pdrop=0.0, tie_word_embeddings=True)
    settings.update(overrides)
    return GPT2Config(**settings)


def build_model(size: str = "111M", seq: int = 128, batch: int = 1, checkpoint: str = "", seed: int = 0,
                **overrides) -> nn.Module:
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config(size, **overrides))
    if checkpoint:
        load_checkpoint(model, Path(checkpoint))
    else:
        away_from_identity(model)
    return LogitsOnly(model.eval()).eval()


def away_from_identity(model: nn.Module) -> None:
    """transformers initialises every layer norm to the identity and every bias to zero, which a trained
    model's are not, and under which a compiled norm that ignored its weight would pass for a correct one."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm) and module.weight.device.type != "meta":
                module.weight.copy_(1 + 0.1 * torch.randn_like(module.weight))
                module.bias.copy_(0.1 * torch.randn_like(module.bias))
        for name, p in model.named_parameters():
            if name.endswith(".bias") and p.device.type != "meta" and not p.any():
                p.copy_(0.02 * torch.randn_like(p))


def load_checkpoint(model: nn.Module, folder: Path) -> None:
    """Load safetensors weights from a local folder (one file or an index of shards)."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ValueError(f"no model.safetensors or model.safetensors.index.json in {folder}")
    state = {}
    for name in files:
        state.update(load_file(folder / name))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the token embedding
    if missing or unexpected:
        raise ValueError(f"checkpoint {folder} does not match: missing {missing[:3]}, unexpected {unexpected[:3]}")


def example_inputs(size: str = "111M", seq: int = 128, batch: int = 1, checkpoint: str = "", seed: int = 0,
                   **overrides) -> tuple:
    generator = torch.Generator().manual_seed(seed + 1)
    vocab = int(overrides.get("vocab_size", 50257))
    return (torch.randint(0, vocab, (batch, seq), generator=generator),)
