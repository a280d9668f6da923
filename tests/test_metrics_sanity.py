"""Model-parameter randomisation (Adebayo et al. 2018): verdicts, model untouched, Quantus."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import sobel

import xaikit as xk
from _stand_ins import import_zennit
from xaikit.datasets import load_mnist
from xaikit.metrics import sanity_check


def edges(model, x, targets):
    """A model-blind "explanation": the Sobel gradient magnitude of the image."""
    return np.stack([np.hypot(sobel(i[0], 0), sobel(i[0], 1))[None] for i in x])


@pytest.fixture(scope="module")
def digits():
    X, _ = load_mnist("test")
    return X[:8]


def test_edge_detector_fails(clean_cnn, digits):
    r = sanity_check(clean_cnn, digits, edges, batch=True)
    assert not r.passed
    assert list(r.similarity) == ["fc2", "fc1", "conv2", "bn1", "conv1"]
    assert all(v == pytest.approx(1.0) for v in r.similarity.values())
    assert all(v == pytest.approx(1.0) for v in r.ssim.values())
    assert r.method == "edges"


def test_saliency_passes_leaving_the_model_untouched(clean_cnn, digits):
    net = clean_cnn
    net.train()  # a non-default training flag that must survive
    handle = net.fc1.register_forward_hook(lambda *a: None)
    try:
        before = copy.deepcopy(net.state_dict())
        flags = {n: m.training for n, m in net.named_modules()}
        hooks = {n: dict(m._forward_hooks) for n, m in net.named_modules()}
        rng_state = torch.get_rng_state()
        grads = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
        r = sanity_check(net, digits, "saliency", batch=True)
        assert r.passed, r.rule
        # The fully random model's saliency has little rank correlation with the trained one.
        assert r.similarity["conv1"] < 0.35
        assert r.similarity["fc2"] > r.similarity["conv1"]  # cascading: falls as layers go
        for k, v in net.state_dict().items():
            assert torch.equal(v, before[k]), k
        assert {n: m.training for n, m in net.named_modules()} == flags
        assert {n: dict(m._forward_hooks) for n, m in net.named_modules()} == hooks
        for p, g in zip(net.parameters(), grads, strict=True):
            assert (p.grad is None and g is None) or torch.equal(p.grad, g)
        assert torch.equal(torch.get_rng_state(), rng_state)  # global RNG untouched
    finally:
        handle.remove()
        net.eval()


def test_independent_mode_is_seeded(clean_cnn, digits):
    a = sanity_check(clean_cnn, digits[:3], "gradcam", batch=True, mode="independent", seed=3)
    b = sanity_check(clean_cnn, digits[:3], "gradcam", batch=True, mode="independent", seed=3)
    assert a.similarity == b.similarity
    assert a.mode == "independent" and a.passed
    fig = a.plot()
    assert len(fig.axes) >= 6


def test_pearson_similarity_of_one_input_lies_in_minus_one_to_one(clean_cnn, digits):
    r = sanity_check(clean_cnn, digits[0], "saliency", similarity="pearson")
    assert r.original.shape == (1, 28, 28)
    assert -1 <= r.similarity["conv1"] <= 1


def test_bad_input(clean_cnn, digits):
    with pytest.raises(ValueError, match="mode"):
        sanity_check(clean_cnn, digits[0], mode="bottom_up")
    with pytest.raises(ValueError, match="method"):
        sanity_check(clean_cnn, digits[0], "no_such_method")
    with pytest.raises(TypeError, match="model"):
        sanity_check(lambda x: np.zeros((len(x), 2)), digits[0])
    with pytest.raises(TypeError, match="samples"):
        sanity_check(clean_cnn, digits[0], edges, samples=3)
    with pytest.raises(ValueError, match="method"):
        sanity_check(clean_cnn, digits, lambda m, x, t: np.zeros((1, 5)), batch=True)


def test_agrees_with_quantus_mprt(clean_cnn, digits):
    """Same model, inputs, targets, explain function and draws: Quantus's MPRT (top_down).

    Quantus seeds every layer's reset_parameters() with torch.manual_seed(seed + 1); ours with
    seed, so Quantus's seed=-1 is our seed=0. Tolerance 1e-6 on the per-layer means.
    """
    import_zennit()  # quantus imports zennit, which imports torchvision
    quantus = pytest.importorskip("quantus")
    xb = digits[:4]
    yb = clean_cnn(torch.as_tensor(xb)).argmax(1).numpy()

    def saliency(model, inputs, targets, **_):
        e = xk.explain(model, np.asarray(inputs), method="saliency", target=targets, batch=True)
        return e.values

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.MPRT(layer_order="top_down", seed=-1, disable_warnings=True)(
            model=copy.deepcopy(clean_cnn),
            x_batch=xb,
            y_batch=yb,
            a_batch=saliency(clean_cnn, xb, yb),
            explain_func=saliency,
            device="cpu",
        )
    ours = sanity_check(clean_cnn, xb, "saliency", batch=True, seed=0, target=yb)
    assert list(ours.similarity) == [k for k in theirs if k != "original"]
    for layer, value in ours.similarity.items():
        assert value == pytest.approx(float(np.mean(theirs[layer])), abs=1e-6), layer
