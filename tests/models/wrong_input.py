"""A Cerebras-GPT whose example inputs have the wrong dtype (float token ids): the compile must say so."""

import importlib.util
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location(
    "cerebras_gpt_example", Path(__file__).resolve().parents[2] / "examples" / "cerebras_gpt.py"
)
gpt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpt)


def build_model():
    return gpt.CerebrasGPT(1, 32, 4, 128, vocab=97, max_positions=64).eval()


def example_inputs():
    return (torch.rand(1, 12),)
