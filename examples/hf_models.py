"""The models people use, as Hugging Face builds them: any of ten architectures from its config, by name and size.

No download, ever: each model is made from a `transformers` config holding the published shapes, with random
weights (or none: `wsc compile` builds a model too large to hold on the meta device and compiles it from shapes
alone). The model is the `transformers` class as it comes; wsc turns its cache off and takes the logits (or the
hidden states) from the output object it returns.

    wsc compile examples/hf_models.py --target cs2-sim --model-arg arch=llama --model-arg size=8B
    wsc compile examples/hf_models.py --target cs3-sim --model-arg arch=mistral --model-arg size=7B --model-arg seq=2048
    wsc compile examples/hf_models.py --target cs2-sim --model-arg arch=bert --model-arg size=tiny

Every architecture has a `tiny` size: 2 layers with the shapes that catch mistakes (a head count that is not a
power of two, fewer key/value heads than query heads where the architecture has them, partial rotary, an untied
head), small enough to verify in seconds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# arch -> (config class, model class): the classes as `transformers` names them.
CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "gpt-neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"),
    "gptj": ("GPTJConfig", "GPTJForCausalLM"),
    "opt": ("OPTConfig", "OPTForCausalLM"),
    "phi": ("PhiConfig", "PhiForCausalLM"),
    "falcon": ("FalconConfig", "FalconForCausalLM"),
    "bert": ("BertConfig", "BertModel"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
}

# arch -> size -> the config's fields: the published configs of each checkpoint (config.json on its model card),
# the shape fields only. `tiny` is ours.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "llama": {
        "tiny": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                     intermediate_size=88, vocab_size=101, max_position_embeddings=256, tie_word_embeddings=False),
        # Meta-Llama-3-8B and Meta-Llama-3-70B
        "8B": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                   intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                   rms_norm_eps=1e-5, tie_word_embeddings=False),
        "70B": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                    intermediate_size=28672, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                    rms_norm_eps=1e-5, tie_word_embeddings=False),
    },
    "mistral": {
        "tiny": dict(hidden_size=40, num_hidden_layers=2, num_attention_heads=5, num_key_value_heads=1,
                     intermediate_size=72, vocab_size=97, max_position_embeddings=256, sliding_window=None),
        # Mistral-7B-v0.1
        "7B": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                   intermediate_size=14336, vocab_size=32000, max_position_embeddings=32768, rope_theta=10000.0,
                   sliding_window=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
    },
    "qwen2": {
        "tiny": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
                     intermediate_size=80, vocab_size=103, max_position_embeddings=256, tie_word_embeddings=False),
        # Qwen2-7B
        "7B": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                   intermediate_size=18944, vocab_size=152064, max_position_embeddings=131072,
                   rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False),
    },
    "gpt-neox": {
        "tiny": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, intermediate_size=96,
                     vocab_size=101, max_position_embeddings=256, rotary_pct=0.25, tie_word_embeddings=False),
        # Pythia-1.4B and Pythia-6.9B (GPT-NeoX: parallel residual, a quarter of each head rotary)
        "1.4B": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192,
                     vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True),
        "6.9B": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=16384,
                     vocab_size=50432, max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True),
    },
    "gptj": {
        "tiny": dict(n_embd=48, n_layer=2, n_head=6, rotary_dim=4, n_inner=88, vocab_size=101, n_positions=256),
        # GPT-J-6B
        "6B": dict(n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, n_inner=None, vocab_size=50400,
                   n_positions=2048),
    },
    "opt": {
        "tiny": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, ffn_dim=88, vocab_size=101,
                     max_position_embeddings=256, word_embed_proj_dim=48),
        # OPT-6.7B
        "6.7B": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, ffn_dim=16384,
                     vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=4096),
    },
    "phi": {
        "tiny": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, intermediate_size=88,
                     vocab_size=101, max_position_embeddings=256, partial_rotary_factor=0.5),
        # phi-1_5 and phi-2
        "1.3B": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, intermediate_size=8192,
                     vocab_size=51200, max_position_embeddings=2048, partial_rotary_factor=0.5),
        "2.7B": dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, intermediate_size=10240,
                     vocab_size=51200, max_position_embeddings=2048, partial_rotary_factor=0.4),
    },
    "falcon": {
        "tiny": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, vocab_size=101,
                     multi_query=True, parallel_attn=True, bias=False),
        # falcon-7b: one key/value head shared by 71 query heads, attention and MLP in parallel
        "7B": dict(hidden_size=4544, num_hidden_layers=32, num_attention_heads=71, vocab_size=65024,
                   multi_query=True, parallel_attn=True, bias=False),
    },
    "bert": {
        "tiny": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, intermediate_size=88,
                     vocab_size=101, max_position_embeddings=256),
        # bert-base-uncased and bert-large-uncased
        "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     vocab_size=30522, max_position_embeddings=512),
        "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                      vocab_size=30522, max_position_embeddings=512),
    },
    "gpt2": {
        "tiny": dict(n_embd=48, n_layer=2, n_head=6, vocab_size=101, n_positions=256),
        # gpt2 (small) and gpt2-xl
        "124M": dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024),
        "1.5B": dict(n_embd=1600, n_layer=48, n_head=25, vocab_size=50257, n_positions=1024),
    },
}

# Inference settings: no dropout (the wafer step is checked against eager in eval mode), attention through
# scaled_dot_product_attention (the fused attention kernel).
_EVAL = dict(attn_implementation="sdpa")


def config(arch: str = "llama", size: str = "tiny", **overrides: Any):
    import transformers

    if arch not in SIZES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(SIZES)}")
    if size not in SIZES[arch]:
        raise ValueError(f"unknown size {size!r} for {arch}; choose one of {', '.join(SIZES[arch])}")
    config_class = getattr(transformers, CLASSES[arch][0])
    settings = {**SIZES[arch][size], **overrides}
    made = config_class(**settings)
    made._attn_implementation = _EVAL["attn_implementation"]
    return made


def build_model(arch: str = "llama", size: str = "tiny", seq: int = 32, batch: int = 1, seed: int = 0,
                **overrides: Any) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, CLASSES[arch][1])(config(arch, size, **overrides))
    # Norm weights and biases away from 1 and 0 (transformers initialises them to the identity), so a compiled
    # norm that ignored them would not pass for a correct one.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and p.device.type != "meta" and ("norm" in name or "ln" in name):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def example_inputs(arch: str = "llama", size: str = "tiny", seq: int = 32, batch: int = 1, seed: int = 0,
                   **overrides: Any) -> tuple:
    vocab = int(overrides.get("vocab_size", SIZES.get(arch, {}).get(size, {}).get("vocab_size", 100)))
    limit = {**SIZES.get(arch, {}).get(size, {}), **overrides}  # an override of the positions widens the limit
    positions = limit.get("max_position_embeddings", limit.get("n_positions"))
    if positions is not None and not 1 <= seq <= positions:
        raise ValueError(f"seq must be in 1..{positions} for {arch} {size}, got {seq}")
    generator = torch.Generator().manual_seed(seed + 1)
    return (torch.randint(0, vocab, (batch, seq), generator=generator),)
