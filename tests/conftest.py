"""Shared fixtures: a tiny Cerebras-GPT (same code as the example, small shapes) and the test mesh."""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
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


@pytest.fixture(scope="session")
def gpt_captured(gpt_module):
    """Cerebras-GPT of a size, built without weights and captured at its example inputs (sequences of `seq`
    tokens, `batch` of them): each (size, seq, batch) traced once a session, as tracing 13B's 40 blocks takes
    seconds. A capture is only read by the passes (legalize builds a new graph), so it can be mapped again."""
    from wsc.frontend.capture import capture
    from wsc.frontend.meta import empty_weights

    made = {}

    def captured(size: str, seq: int = 128, batch: int = 1):
        if (size, seq, batch) not in made:
            with empty_weights():
                model = gpt_module.build_model(size, seq=seq, batch=batch)
            made[size, seq, batch] = capture(model, gpt_module.example_inputs(size, seq=seq, batch=batch))
        return made[size, seq, batch]

    return captured


def tiny_gpt(layers: int = 2, d_model: int = 32, heads: int = 4, d_ffn: int = 128, vocab: int = 97,
             seq: int = 12, batch: int = 1):
    gpt = load_example("cerebras_gpt")
    torch.manual_seed(0)
    # Matrices of std 1 / sqrt(d_model): activations of about unit scale, which exercise every kernel's range
    # (GELU's curve, softmax's spread) as a trained model's do; 0.02 would leave them near zero at d_model 32.
    model = gpt.init_weights(gpt.CerebrasGPT(layers, d_model, heads, d_ffn, vocab=vocab, max_positions=64),
                             std=d_model**-0.5).eval()
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    return model, (ids,)


# A target whose PEs hold so little that the tiny GPT's MLP down projection splits its K across PEs.
SMALL_PE_TARGET = """\
name: small-pe
description: PEs with 2 KB free, so the MLP's down projection must split K across PEs
mesh: {rows: 64, cols: 64}
pe:
  sram_bytes: 10240
  flops_per_cycle: {fp16: 8, fp32: 2}
clock_hz: 850.0e+6
fabric: {link_bytes_per_cycle: 4, hop_latency_cycles: 1, colors: 24}
io: {stream_bytes_per_second: 150.0e+9}
"""


@contextmanager
def derived(plan, **values):
    """A plan whose derived tables (tiles, k_bounds) are replaced for the duration: a plan cannot hold a table
    that disagrees with its cut, so this writes past the derivation, to show the executor (and verification)
    run exactly the tables the plan hands them."""
    saved = {name: getattr(plan, name) for name in values}
    vars(plan).update(values)
    try:
        yield
    finally:
        vars(plan).update(saved)


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
