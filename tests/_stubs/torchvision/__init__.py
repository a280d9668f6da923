"""A stand-in for torchvision on the test path, so that zennit imports beside the CPU torch.

zennit imports ``torchvision.models.resnet.Bottleneck`` and ``BasicBlock`` at import time (for
its torchvision canonizers) and uses nothing else; the real torchvision does not import beside
the pinned CPU torch. Nothing in xaikit imports torchvision.
"""
