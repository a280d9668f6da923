"""The two names zennit imports from torchvision: never instantiated in xaikit's tests."""

from torch import nn


class BasicBlock(nn.Module):
    """Stand-in for torchvision's ResNet basic block (zennit only checks isinstance)."""


class Bottleneck(nn.Module):
    """Stand-in for torchvision's ResNet bottleneck block (zennit only checks isinstance)."""
