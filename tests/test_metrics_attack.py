"""The attack on interpretation (Ghorbani et al. 2019): it moves maps, keeps labels and models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import xaikit as xk
from xaikit.datasets import load_mnist
from xaikit.metrics import attack_explanation, evaluate


@pytest.fixture(scope="module")
def digit():
    X, _ = load_mnist("test")
    return X[0]


def test_softplus_attack_moves_saliency_without_changing_label_or_model(clean_cnn, digit):
    net = clean_cnn
    before = copy.deepcopy(net.state_dict())
    kinds = [type(m) for m in net.modules()]
    grads = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
    r = attack_explanation(net, digit, "saliency", epsilon=0.1, bounds=(0, 1), seed=0)
    assert r.estimator == "softplus"
    assert r.label_kept and r.accepted_steps > 0
    assert np.abs(r.x_adv - digit).max() <= 0.1 + 1e-6
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert int(net(torch.as_tensor(r.x_adv[None])).argmax()) == r.target
    # Measured 0.13 / 0.29 against 0.44 / 0.39 for random sign noise of the same size.
    assert r.top_k_intersection < r.random_top_k_intersection - 0.15, r
    assert r.spearman < r.random_spearman, r
    assert r.k == 39  # 5% of 784 pixels
    # The softplus surrogate was a deep copy: the user's model is exactly as it was.
    assert [type(m) for m in net.modules()] == kinds
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    for p, g in zip(net.parameters(), grads, strict=True):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert len(r.plot().axes) == 3


def test_spsa_attack_works_for_any_method(clean_cnn, digit):
    r = attack_explanation(
        clean_cnn, digit, "gradcam", epsilon=0.1, steps=6, queries=8, bounds=(0, 1)
    )
    assert r.estimator == "spsa" and r.label_kept
    assert r.top_k_intersection <= 1 and -1 <= r.spearman <= 1

    # A callable explain function is attacked the same way (its maps are what it returns).
    def abs_input(model, x, targets):
        return np.abs(x)

    moved = attack_explanation(
        clean_cnn, digit, abs_input, epsilon=0.05, steps=2, queries=2, k=20, bounds=(0, 1)
    )
    assert moved.method == "abs_input" and moved.k == 20


def test_exact_on_a_linear_model():
    # Saliency of a linear model is |w|, whatever the input: the attack cannot move it.
    net = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(8, 12) * 2 - 0.5)
        net[0].bias.fill_(5.0)  # every ReLU stays active near x: the network is linear there
    x = np.linspace(0, 1, 12).astype(np.float32)
    r = attack_explanation(net, x, "saliency", epsilon=0.05, steps=5, k=3)
    assert r.top_k_intersection == 1.0 and r.spearman == pytest.approx(1.0)


def test_evaluate_attack(clean_cnn, digit):
    e = xk.explain(clean_cnn, digit, method="gradcam")
    scores = evaluate(clean_cnn, digit, e, metrics="attack_top_k", steps=2, bounds=(0, 1))
    direct = attack_explanation(clean_cnn, digit, "gradcam", steps=2, bounds=(0, 1))
    assert scores["attack_top_k"] == direct.top_k_intersection  # the explanation's own method


def test_attack_bad_input(clean_cnn, digit):
    with pytest.raises(ValueError, match="epsilon"):
        attack_explanation(clean_cnn, digit, epsilon=0)
    with pytest.raises(ValueError, match="estimator: 'softplus'"):
        attack_explanation(clean_cnn, digit, "gradcam", estimator="softplus")
    with pytest.raises(ValueError, match="bounds"):
        attack_explanation(clean_cnn, digit, bounds=(0.5, 1))
    with pytest.raises(ValueError, match="target: the attack keeps the predicted class"):
        predicted = int(clean_cnn(torch.as_tensor(digit[None])).argmax())
        attack_explanation(clean_cnn, digit, target=(predicted + 1) % 10)
    with pytest.raises(ValueError, match="k: expected fewer"):
        attack_explanation(clean_cnn, digit, k=784)
    with pytest.raises(ValueError, match="explanation: expected attributions"):
        attack_explanation(clean_cnn, digit, explanation=np.ones((5, 5)))
