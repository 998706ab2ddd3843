"""Shared fixtures: a tiny Cerebras-GPT (same code as the example, small shapes) and the test mesh."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(__file__).resolve().parent / "models"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def gpt_module():
    return load_example("cerebras_gpt")


def tiny_gpt(layers: int = 2, d_model: int = 32, heads: int = 4, d_ffn: int = 128, vocab: int = 97,
             seq: int = 12, batch: int = 1):
    gpt = load_example("cerebras_gpt")
    torch.manual_seed(0)
    model = gpt.CerebrasGPT(layers, d_model, heads, d_ffn, vocab=vocab, max_positions=64).eval()
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    return model, (ids,)


@pytest.fixture(scope="session")
def small_target():
    from wsc.targets import load_target

    return load_target("mesh-16x16")


@pytest.fixture(scope="session")
def tiny_out(tmp_path_factory) -> Path:
    """One compile of the tiny GPT on the 16x16 mesh, its output folder shared by the tests that read it."""
    from wsc.cli import main

    folder = tmp_path_factory.mktemp("tiny_out")
    assert main(["compile", str(MODELS / "tiny_gpt.py"), "--target", "mesh-16x16", "--out", str(folder),
                 "--time-limit", "0.3"]) == 0
    return folder
