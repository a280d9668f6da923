"""Small toy models shared by the tests, one definition each (the LRP reference nets: _lrp_models).

Every factory seeds torch itself, so a test gets the same weights whichever file it is in.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------- image CNNs


class StatefulCNN(nn.Module):
    """Conv + BatchNorm + dropout on 1x8x8 inputs: every piece of state a careless explainer
    could change. ``fail_after_bn`` makes the forward raise half-way."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4 * 8 * 8, classes)
        self.fail_after_bn = False

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        if self.fail_after_bn:
            raise RuntimeError("boom inside forward")
        return self.head(self.drop(h).flatten(1))


def stateful_cnn(seed: int = 0) -> StatefulCNN:
    """A StatefulCNN in training mode with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    net = StatefulCNN()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


class Float64BatchNormCNN(nn.Module):
    """A small CNN (BatchNorm included) on 1x12x12 inputs, 5 classes; counts its forward calls
    and raises after ``fail_after`` of them when that is set."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(6 * 6 * 6, 5)
        self.calls = 0
        self.fail_after: int | None = None

    def forward(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("forward failed")
        h = self.relu2(self.conv2(self.pool(self.relu1(self.bn1(self.conv1(x))))))
        return self.fc(h.flatten(1))


def float64_batchnorm_cnn(seed: int = 0) -> Float64BatchNormCNN:
    """A float64 Float64BatchNormCNN in eval mode whose BatchNorm statistics are not the
    identity, so eval and train mode differ."""
    torch.manual_seed(seed)
    net = Float64BatchNormCNN().double()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.2, 0.2)
        net.bn1.running_var.uniform_(0.5, 1.5)
    return net.eval()


class TwoConvNet(nn.Module):
    """Conv-ReLU-pool-conv-ReLU-linear on Cx12x12 inputs; ``fail`` makes the forward raise
    after the convolutions."""

    def __init__(self, channels: int = 3, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(8 * 6 * 6, classes)
        self.fail = False

    def forward(self, x):
        h = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        if self.fail:
            raise RuntimeError("forward failed")
        return self.head(h.flatten(1))


def two_conv_net(seed: int = 0, channels: int = 3) -> TwoConvNet:
    """A TwoConvNet in eval mode."""
    torch.manual_seed(seed)
    return TwoConvNet(channels).eval()


class ConvReluLinear(nn.Module):
    """One padded conv, ReLU and a linear head on 1x8x8 inputs (seeded with 0)."""

    def __init__(self, hidden: int = 4, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, hidden, 3, padding=1)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(hidden * 8 * 8, classes)

    def forward(self, x):
        return self.fc(self.flat(self.relu(self.conv(x))))


def unpadded_cnn_28(seed: int = 0) -> nn.Module:
    """Conv-ReLU-pool-conv-linear without padding: takes 1x28x28 inputs only, 10 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.Flatten(),
        nn.Linear(4 * 11 * 11, 10),
    ).eval()  # fmt: skip


def linear_conv_8() -> nn.Module:
    """A padded conv and a linear head with nothing between them, 1x8x8 inputs, 3 classes."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(128, 3)).eval()


class StridedCNN(nn.Module):
    """Strided, dilated and grouped convolutions, BatchNorm, GELU/SiLU, a max pool with
    ``ceil_mode`` and a padded average pool, then a linear head; 3x21x17 inputs, 4 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5, stride=2, padding=2)
        self.bn1 = nn.BatchNorm2d(6)
        self.act1 = nn.GELU()
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)  # 11x9 -> 6x5
        self.conv2 = nn.Conv2d(6, 8, 3, padding=2, dilation=2, groups=2)
        self.act2 = nn.SiLU()
        self.pool2 = nn.AvgPool2d(3, stride=1, padding=1)
        self.conv3 = nn.Conv2d(8, 8, (3, 1), stride=(2, 1), padding=(1, 0))  # 6x5 -> 3x5
        self.head = nn.Linear(8 * 3 * 5, 4)

    def forward(self, x):
        x = self.pool1(self.act1(self.bn1(self.conv1(x))))
        x = self.conv3(self.pool2(self.act2(self.conv2(x))))
        return self.head(torch.flatten(x, 1))


def strided_cnn(seed: int = 0) -> StridedCNN:
    """A StridedCNN in eval mode with BatchNorm statistics away from the identity."""
    torch.manual_seed(seed)
    net = StridedCNN()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.3, 0.3)
        net.bn1.running_var.uniform_(0.5, 1.5)
    return net.eval()


class FunctionalCNN(nn.Module):
    """Written with functions: per-channel normalisation by buffers, ``F.relu``, a residual
    ``sigmoid(conv(h)) * 2 + h``, a functional max pool and global averaging; 3xHxW inputs of
    any size, 3 classes (seeded with 0)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding="same")
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.conv1((x - self.mean) / self.std))
        h = torch.sigmoid(self.conv2(h)) * 2.0 + h
        return self.head(F.max_pool2d(h, 2).mean(dim=(2, 3)))


class ValueBranchingCNN(nn.Module):
    """Branches on the values of a feature map, which torch.fx cannot trace; 1x8x8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.head = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x):
        h = self.conv(x)
        if h.mean() > 0:
            h = -h
        return self.head(h.flatten(1))


def image_mlp(shape: tuple[int, int, int] = (2, 6, 7), seed: int = 0) -> nn.Module:
    """Flatten, then linear layers: no convolution, so no window stays local."""
    torch.manual_seed(seed)
    size = shape[0] * shape[1] * shape[2]
    return nn.Sequential(nn.Flatten(), nn.Linear(size, 8), nn.Tanh(), nn.Linear(8, 3)).eval()


def conv_bn_pool_net(seed: int = 0) -> nn.Module:
    """Conv-BatchNorm-ReLU-pool-conv-ReLU-linear on 3x16x16 inputs, 4 classes, in eval mode."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 3, 4),
    ).eval()  # fmt: skip


class BatchNormCNN(nn.Module):
    """Conv-BatchNorm pairs and a ReLU on 3x8x8 inputs, 3 classes.

    ``how`` says what else the forward does with them: ``"plain"`` nothing; ``"two_readers"``
    the first convolution's output also feeds a skip connection; ``"shared"`` the first
    convolution runs twice; ``"reads_weight"`` the forward reads the first BatchNorm's weight;
    ``"reads_attribute"`` it reads a BatchNorm attribute that ``nn.Identity`` does not have;
    ``"relu_input_read"`` the ReLU's input is read again after it; ``"branches"`` it branches
    on a feature map's values (torch.fx cannot trace it).
    """

    def __init__(self, how: str = "plain") -> None:
        super().__init__()
        self.how = how
        self.conv1, self.bn1 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        h = self.conv1(x)
        if self.how == "shared":
            h = self.conv1(h)
        out = self.bn1(h)
        if self.how == "two_readers":
            out = out + h
        if self.how == "reads_weight":
            out = out * self.bn1.weight.mean()
        if self.how == "reads_attribute":
            out = out[:, : self.bn1.num_features]
        if self.how == "branches" and out.mean() > 0:
            out = -out
        z = self.bn2(self.conv2(out))
        y = self.relu(z) - z if self.how == "relu_input_read" else self.relu(z)
        return self.head(y.flatten(1))


def batch_norm_cnn(how: str = "plain", seed: int = 0) -> BatchNormCNN:
    """A BatchNormCNN in training mode whose BatchNorm statistics are not the identity."""
    torch.manual_seed(seed)
    net = BatchNormCNN(how)
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return net


class InputEditingCNN(nn.Module):
    """Halves its input in place before a convolution (a forward that edits its argument);
    ``channels`` input channels, 8x8 images, 2 classes."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, 2, 3, padding=1)
        self.head = nn.Linear(2 * 8 * 8, 2)

    def forward(self, x):
        x.mul_(0.5)
        return self.head(self.conv(x).flatten(1))


class ConvHead(nn.Module):
    """A seeded 3 -> 4 channel convolution and a linear head on 3x8x8 images, 2 classes; the
    tests that need a small CNN with one twist in its forward subclass it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        return self.head(self.conv(x).flatten(1))


class AliasedUpdateCNN(nn.Module):
    """``skip = h; h += y`` and ``skip`` read later: an in-place update that another name still
    holding the tensor sees, which torch.fx reads as a new tensor ``h + y``. 3-channel images
    of any size (pooled to 2x2), 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv0, self.conv1 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        h = self.conv0(x)
        skip = h
        h += self.conv1(x)
        h = self.act(h)
        return self.head(self.pool(h + skip).flatten(1))


class HarmlessUpdateCNN(nn.Module):
    """A torchvision-style ``out += identity`` (its operand read by nothing after) beside two
    branches on one input (``a = h + f(h); b = h + g(h)``: ``h`` read after the first sum,
    which is no update): a trace that is faithful. 3-channel images, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.conv = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.f, self.g = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        out = self.conv(h)
        out += h
        h = torch.relu(out)
        a = h + self.f(h)
        b = h + self.g(h)
        return self.head(self.pool(a + b).flatten(1))


# ---------------------------------------------------------------- models with a known answer

PATCH = (slice(2, 5), slice(3, 7))  # the only region a PatchModel looks at


class PatchModel(nn.Module):
    """Logits [s, -s] with s = 4 * (mean of PATCH - offset), so p(class 0) = sigmoid(2 s)."""

    def __init__(self, offset: float = 0.0) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 4 * (x[:, :, PATCH[0], PATCH[1]].mean(dim=(1, 2, 3)) - self.offset)
        return torch.stack([s, -s], dim=1)


class LinearImageModel(nn.Module):
    """Two classes, each a fixed random linear function of a 1x6x6 image (seed 0)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(2, 1, 6, 6, generator=g))

    def forward(self, x):
        return (x[:, None] * self.w[None]).sum(dim=(2, 3, 4))


class LinearVectorModel(nn.Module):
    """Two classes, each a fixed random linear function of 30 features (seed 0)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(2, 30, generator=g))

    def forward(self, x):
        return x @ self.w.T


# ---------------------------------------------------------------- token models


class TokenNet(nn.Module):
    """Embedding -> per-token linear layer + tanh (N, L, hidden) -> mean over tokens -> head
    (seeded with 0)."""

    def __init__(self, vocab: int = 30, dim: int = 8, hidden: int = 8, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(self.embed(ids))).mean(dim=1))


class BagOfEmbeddings(nn.Module):
    """head(sum of the token embeddings), 2 classes: additive in the tokens. Not seeded."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, 4), nn.Linear(4, 2)

    def forward(self, ids):
        return self.head(self.embed(ids).sum(dim=1))


def explain_counting_rows(method: str, *, features: int, target, samples: int):
    """``xk.explain`` of two rows by a seeded NumPy linear model (3 classes) that records the
    size of every batch it scores, once the model's class count is known (so a given target
    needs no forward). Returns ``(explanation, batch sizes, the rows' true scores, model)``."""
    import xaikit as xk

    weights = np.random.default_rng(0).normal(size=(features, 3))
    rows: list[int] = []

    def linear(batch):
        rows.append(len(batch))
        return batch @ weights

    model = xk.Model(linear, output="scores", batch_size=64)  # no batch-size search
    x = np.random.default_rng(1).normal(size=(2, features))
    model.scores(x[:1])
    rows.clear()
    targets = None if target is None else [target, target]
    e = xk.explain(model, x, method=method, target=targets, samples=samples, batch=True)
    return e, rows, x @ weights, model
