"""Channels-last scoring: a copy of the model in the faster layout, never the user's model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import xaikit as xk
from xaikit import layout


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 3, 4),
    ).eval()  # fmt: skip


@pytest.fixture
def images():
    return np.random.default_rng(0).random((40, 3, 16, 16), dtype=np.float32)


def forced(net: nn.Module, images: np.ndarray, how: str) -> xk.Model:
    """A Model whose score calls on ``images`` use the layout ``how`` (no timing involved)."""
    model = xk.Model(net, batch_size=16)
    layout.choose(net, xk.batching.call_key(images, "scores", model.device), how)
    return model


def test_channels_last_scores_equal_the_default_layout(images):
    net = conv_net()
    plain = xk.Model(net, batch_size=16).scores(images)
    fast = forced(net, images, "channels_last").scores(images)
    np.testing.assert_allclose(fast, plain, rtol=layout.RTOL, atol=layout.ATOL)


def test_the_users_model_keeps_its_layout(images):
    net = conv_net()
    forced(net, images, "channels_last").scores(images)
    assert all(p.is_contiguous() for p in net.parameters())
    assert not any(
        p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in net.parameters()
    )


def test_changed_weights_reach_the_copy(images):
    net = conv_net()
    model = forced(net, images, "channels_last")
    before = model.scores(images)
    with torch.no_grad():
        net[-1].bias.add_(1.0)  # in place, as an optimizer step does
    after = model.scores(images)
    np.testing.assert_allclose(after, before + 1.0, rtol=1e-5, atol=1e-5)


def test_a_layer_recording_sees_the_users_module(images):
    net = conv_net()
    model = forced(net, images, "channels_last")
    with model.layer("4") as recording:
        model.scores(images)
    assert recording.activations.shape == (40, 8, 3, 3)


def test_the_search_keeps_a_layout_whose_scores_match(images):
    net = conv_net()
    model = xk.Model(net)
    many = np.concatenate([images] * 8)
    scores = model.scores(many)
    (chosen,) = model.chosen_layouts.values()
    assert chosen in ("channels_last", "contiguous")
    np.testing.assert_allclose(
        scores, xk.Model(conv_net(), batch_size=64).scores(many), rtol=1e-4, atol=1e-5
    )


def test_a_model_without_convolutions_is_not_copied():
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    x = np.zeros((2, 3, 4, 4), np.float32)
    assert not layout.may_use_channels_last(net, x, {})
