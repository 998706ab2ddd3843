"""A model of layout ops alone (reshape, transpose): a layer with no kernel compiles to an empty placement
and runs as the moves it is, verified against eager. Issue 12: it died in the place pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import wsc
from wsc.core.mesh import Mesh
from wsc.passes.place import STRATEGIES, place

FAST = {"time_limit": 0.3}


class Reshape(nn.Module):
    def forward(self, x):
        return x.reshape(4, -1)


def test_reshape_alone_compiles_to_an_empty_placement_and_verifies():
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    compiled = wsc.compile(Reshape(), (x,), "mesh-16x16", **FAST)
    assert compiled.report["verification"]["status"] == "pass", compiled.report["verification"]
    assert compiled.report["placement"]["pes_used"] == 0
    assert all(not layer.kernels and layer.placement.rects == {} for layer in compiled.program.layers)
    # Its leading size is tied to the batch of 8: no smaller pass exists, so the step is one pass.
    assert compiled.report["simulation"]["micro_batches"] == 1
    out = compiled(x)
    assert out.shape == (4, 12) and torch.equal(out, x.reshape(4, -1))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_placer_places_no_kernels(strategy):
    placement = place([], [], Mesh(16, 16), strategy, time_limit=0.3)
    assert placement.rects == {} and placement.wirelength == 0


@pytest.mark.parametrize("strategy", ["row-major", "greedy"])
def test_layout_only_model_saves_and_checks(tmp_path, strategy):
    from wsc.artifacts.check import main as check

    x = torch.randn(2, 3, 4)
    compiled = wsc.compile(Reshape(), (x,), "mesh-16x16", strategy=strategy, mode="pipelined", **FAST)
    assert compiled.report["verification"]["status"] == "pass"
    compiled.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"placement.json", "report.json", "trace.json", "report.html"}
    assert check([str(tmp_path)]) == 0
