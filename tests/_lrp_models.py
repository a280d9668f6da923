"""Small models shared by the LRP and DeepLIFT tests: a VGG-like and a ResNet-like network."""

from __future__ import annotations

import torch
from torch import nn


def batch_norm(channels: int, generator: torch.Generator) -> nn.BatchNorm2d:
    """A BatchNorm with running statistics and affine parameters away from the identity."""
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        for tensor, (low, high) in (
            (bn.running_mean, (-0.2, 0.2)),
            (bn.running_var, (0.5, 1.5)),
            (bn.weight, (0.5, 1.5)),
            (bn.bias, (-0.1, 0.1)),
        ):
            tensor.copy_(low + (high - low) * torch.rand(tensor.shape, generator=generator))
    return bn


class VGGLike(nn.Module):
    """Conv-BN-ReLU stacks with groups, dilation, stride and padding, max and adaptive pooling."""

    def __init__(self, *, seed: int = 0, pool: str = "max") -> None:
        super().__init__()
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            batch_norm(8, g),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=2),
            batch_norm(8, g),
            nn.ReLU(),
            nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2),
            nn.Conv2d(8, 16, 3, padding=2, dilation=2),
            batch_norm(16, g),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1),
            batch_norm(16, g),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Block(nn.Module):
    """A torchvision-style basic block: one in-place ReLU module used twice, ``out += identity``.

    ``shared=False`` gives each use its own, not in-place ReLU (what Captum's hooks need).
    """

    def __init__(self, cin: int, cout: int, stride: int, g: torch.Generator, shared: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = batch_norm(cout, g)
        self.relu = nn.ReLU(inplace=shared)
        self.relu_out = self.relu if shared else nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = batch_norm(cout, g)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), batch_norm(cout, g)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu_out(out)


class ResNetLike(nn.Module):
    """A stem, two basic blocks (the second downsamples), global average pooling, a linear head."""

    def __init__(self, *, seed: int = 0, shared: bool = True) -> None:
        super().__init__()
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = batch_norm(8, g)
        self.relu = nn.ReLU(inplace=shared)
        self.layer1 = Block(8, 8, 1, g, shared)
        self.layer2 = Block(8, 16, 2, g, shared)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def images(n: int = 5, *, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    """Random 3x16x16 images in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g).to(dtype)


class FirstLayer(nn.Module):
    """A given input layer, a ReLU and a linear head: for the rules of the input layer."""

    def __init__(self, first: nn.Module, *, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.first = first
        self.relu = nn.ReLU()
        self.head = nn.LazyLinear(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.relu(self.first(x)), 1))
