"""A layer's kernels stay within the share of the mesh partition hands out: a kernel whose least cut is wide
(few row blocks, many column blocks) and is raised in height to carry its traffic must not keep its width
(GPT-J-6B's spelled-out GELU at 2048 tokens asked 926,702 PEs of cs2-sim's 745,500)."""

from __future__ import annotations

import math

import torch

import wsc
from wsc.frontend.meta import empty_weights


class SpelledOutGeluMlp(torch.nn.Module):
    """GPT-J's MLP with a tanh GELU spelled out as transformers writes `gelu_new`, but with a constant of its own
    (0.045), so legalize does not take it for the GELU: six element-wise kernels of [tokens, 4 d]."""

    def __init__(self, d: int):
        super().__init__()
        self.up, self.down = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x):
        h = self.up(x)
        h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.045 * torch.pow(h, 3.0))))
        return self.down(h)


def test_the_kernels_of_a_layer_take_no_more_than_the_share_handed_out():
    with empty_weights():
        model = SpelledOutGeluMlp(4096).eval()
    x = torch.empty(1, 2048, 4096, device="meta")  # shapes only, like the weights
    compiled = wsc.compile(model, (x,), "cs2-sim", time_limit=0.5, strategy="row-major", router="xy")
    program = compiled.program
    usable = program.target.usable_pes
    (layer,) = program.layers
    pes = sum(plan.h * plan.w for plan in layer.kernels.values())
    assert sum(program.graph[n].op in ("tanh", "pow") for n in layer.kernels) == 2
    assert pes <= program.fill * usable * 1.02, (pes, program.fill, usable)
