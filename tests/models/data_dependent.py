"""A model that branches on a tensor's value: no static graph exists, so capture must refuse it cleanly."""

import torch


class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        y = self.proj(x)
        if y.sum() > 0:
            return y * 2.0
        return y


def build_model():
    return Branchy()


def example_inputs():
    return (torch.randn(2, 8),)
