"""Cerebras-GPT: the GPT-3 style family of the Cerebras-GPT model card, at any of its seven sizes.

Learned position embeddings, pre-LayerNorm blocks, GELU MLP, full causal attention, and an LM head tied
to the token embedding. Weights are random (seeded); no checkpoint is ever downloaded.

    wsc compile examples/cerebras_gpt.py --target cs2-sim --model-arg size=111M --model-arg seq=128
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 50257
MAX_POSITIONS = 2048

# size -> (layers, d_model, heads, d_ffn), from the model card's table.
SIZES = {
    "111M": (10, 768, 12, 3072),
    "256M": (14, 1088, 17, 4352),
    "590M": (18, 1536, 12, 6144),
    "1.3B": (24, 2048, 16, 8192),
    "2.7B": (32, 2560, 32, 10240),
    "6.7B": (32, 4096, 32, 16384),
    "13B": (40, 5120, 40, 20480),
}


class Attention(nn.Module):
    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q = q.view(b, s, self.heads, d // self.heads).transpose(1, 2)
        k = k.view(b, s, self.heads, d // self.heads).transpose(1, 2)
        v = v.view(b, s, self.heads, d // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ffn: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads)
        self.ln_2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, d_ffn)
        self.act = nn.GELU()
        self.fc_proj = nn.Linear(d_ffn, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.fc_proj(self.act(self.fc(self.ln_2(x))))


class CerebrasGPT(nn.Module):
    def __init__(self, layers: int, d_model: int, heads: int, d_ffn: int, vocab: int = VOCAB,
                 max_positions: int = MAX_POSITIONS):
        super().__init__()
        self.wte = nn.Embedding(vocab, d_model)
        self.wpe = nn.Embedding(max_positions, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, d_ffn) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in the model card

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.wte(ids) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def build_model(size: str = "111M", seq: int = 128, batch: int = 1, seed: int = 0) -> nn.Module:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    torch.manual_seed(seed)
    return init_weights(CerebrasGPT(*SIZES[size])).eval()


def init_weights(model: nn.Module, std: float = 0.02) -> nn.Module:
    """GPT-2 style init (std 0.02 for every matrix) keeps activations in the range a trained model has (a
    narrow model needs a wider `std` for that: about 1 / sqrt(d_model)). The
    vectors leave the identity too, as a trained model's have: layernorm weights around 1 and biases around 0
    (std 0.1), linear biases std 0.02; a compiled program that ignored a norm's weight or dropped a bias
    would otherwise compute the same numbers as a correct one. Draws from torch's global generator."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + 0.1 * torch.randn_like(module.weight))
                module.bias.copy_(0.1 * torch.randn_like(module.bias))
            elif isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.copy_(0.02 * torch.randn_like(module.bias))
        for p in model.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=std)
    return model


def example_inputs(size: str = "111M", seq: int = 128, batch: int = 1, seed: int = 0) -> tuple:
    if not 1 <= seq <= MAX_POSITIONS:
        raise ValueError(f"seq must be in 1..{MAX_POSITIONS}, got {seq}")
    generator = torch.Generator().manual_seed(seed + 1)
    return (torch.randint(0, VOCAB, (batch, seq), generator=generator),)
