"""A Cerebras-GPT with tiny shapes, for CLI tests: the example's code, small enough to run in a second."""

import importlib.util
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location(
    "cerebras_gpt_example", Path(__file__).resolve().parents[2] / "examples" / "cerebras_gpt.py"
)
gpt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpt)


def build_model(layers: int = 2, seq: int = 12, batch: int = 1):
    torch.manual_seed(0)
    return gpt.init_weights(gpt.CerebrasGPT(layers, 32, 4, 128, vocab=97, max_positions=64), std=32**-0.5).eval()


def example_inputs(layers: int = 2, seq: int = 12, batch: int = 1):
    return (torch.randint(0, 97, (batch, seq), generator=torch.Generator().manual_seed(1)),)
