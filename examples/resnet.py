"""ResNet: the residual convolutional nets of He et al. (2015), built by hand, at depth 18 or 34 (basic blocks of
two 3x3 convolutions) or 50, 101 or 152 (bottlenecks of 1x1, 3x3 and 1x1 convolutions, 4x wider out).

The stem is a 7x7 convolution of stride 2, batch norm, ReLU and a 3x3 max pool of stride 2; then four stages
of blocks 64, 128, 256 and 512 channels wide (times `width`), the first block of stages 2 to 4 striding 2, with
a projection shortcut (1x1 convolution and batch norm) wherever a block changes its shape; then an adaptive
average pool and a linear head. Every block is a module of its own path (`layer1.0`, `layer1.1`...), so each
is a streaming layer. Weights are random (seeded), never downloaded: the convolutions He-initialised, batch
norm's weight and bias drawn away from 1 and 0, and its running statistics measured on random images through
the net (in train mode), so that activations keep about unit scale through every block, as in a trained net.

    wsc compile examples/resnet.py --target cs2-sim
    wsc compile examples/resnet.py --target cs2-sim --model-arg depth=18 --model-arg image=224 --model-arg width=0.5
"""

from __future__ import annotations

import math

import torch
from torch import nn

# depth -> (block, blocks per stage), from the paper's table 1.
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
WIDTHS = (64, 128, 256, 512)
CALIBRATION_VALUES = 64  # per channel of the last stage's smallest map, for its batch norms' running statistics


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
    return conv, nn.BatchNorm2d(out_channels)


class Shortcut(nn.Module):
    """The projection of a block that changes its shape: a 1x1 convolution (strided with the block) and BN."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv, self.bn = conv_bn(in_channels, out_channels, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_channels, width, 3, stride)
        self.conv2, self.bn2 = conv_bn(width, width, 3)
        self.relu = nn.ReLU()
        self.shortcut = Shortcut(in_channels, width, stride) if stride != 1 or in_channels != width else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1, self.bn1 = conv_bn(in_channels, width, 1)
        self.conv2, self.bn2 = conv_bn(width, width, 3, stride)  # the stride on the 3x3, as torchvision's v1.5
        self.conv3, self.bn3 = conv_bn(width, out_channels, 1)
        self.relu = nn.ReLU()
        self.shortcut = (Shortcut(in_channels, out_channels, stride)
                         if stride != 1 or in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """`blocks` per stage of `kind` ("basic" or "bottleneck"), `width` times the paper's channels; fewer than four
    stages make a shallower net of the same kind (a test's)."""

    def __init__(self, kind: str, blocks: tuple[int, ...], width: float = 1.0, classes: int = 1000):
        super().__init__()
        block = BasicBlock if kind == "basic" else Bottleneck
        widths = [max(1, round(w * width)) for w in WIDTHS]
        self.conv1, self.bn1 = conv_bn(3, widths[0], 7, stride=2)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = widths[0]
        self.stages = len(blocks)
        for stage, (count, stage_width) in enumerate(zip(blocks, widths[: self.stages], strict=True)):
            layer = []
            for index in range(count):
                layer.append(block(channels, stage_width, 2 if index == 0 and stage > 0 else 1))
                channels = stage_width * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(self.stages):
            x = getattr(self, f"layer{stage + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _check(depth: int, width: float, image: int, batch: int, classes: int) -> None:
    if depth not in DEPTHS:
        raise ValueError(f"unknown depth {depth!r}; choose one of {', '.join(map(str, DEPTHS))}")
    if not width > 0:
        raise ValueError(f"width must be a positive multiplier of the channels, got {width}")
    if image < 32:
        raise ValueError(f"image must be at least 32 pixels (the net halves it five times), got {image}")
    if batch < 1 or classes < 1:
        raise ValueError(f"batch and classes must be at least 1, got {batch} and {classes}")


def randomise(model: ResNet, image: int, seed: int) -> None:
    """He-initialised convolutions, batch norm weight and bias away from 1 and 0, and running statistics measured
    on random images through the net itself, so every block sees inputs of about unit scale. A net built without
    its weights (on the meta device, as `wsc compile` first builds it for the shapes) is left as it is."""
    if any(p.is_meta for p in model.parameters()):
        model.eval()
        return
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
        for norm in norms:
            norm.weight.copy_(torch.empty_like(norm.weight).uniform_(0.5, 1.5, generator=generator))
            norm.bias.copy_(torch.empty_like(norm.bias).uniform_(-0.5, 0.5, generator=generator))
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average: one batch gives its own statistics
        model.train()
        images = max(4, math.ceil(CALIBRATION_VALUES / (image // 32) ** 2))  # the last stage's maps are image / 32
        model(torch.randn(images, 3, image, image, generator=generator))
        for norm in norms:
            norm.momentum = 0.1
    model.eval()


def build_model(depth: int = 50, width: float = 1.0, image: int = 64, batch: int = 1, classes: int = 1000,
                seed: int = 0) -> nn.Module:
    _check(depth, width, image, batch, classes)
    torch.manual_seed(seed)
    model = ResNet(*DEPTHS[depth], width=width, classes=classes)
    randomise(model, image, seed)
    return model


def example_inputs(depth: int = 50, width: float = 1.0, image: int = 64, batch: int = 1, classes: int = 1000,
                   seed: int = 0) -> tuple:
    _check(depth, width, image, batch, classes)
    return (torch.randn(batch, 3, image, image, generator=torch.Generator().manual_seed(seed + 1)),)
