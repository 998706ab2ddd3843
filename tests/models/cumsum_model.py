"""A model using an op wsc has no lowering for (cumsum): the compile must refuse it in one line."""

import torch


class Running(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.proj(x).cumsum(dim=-1)


def build_model():
    return Running()


def example_inputs():
    return (torch.randn(2, 8),)
