"""The shapes ground-truth data set: reproducible drawing, masks on the class shape, its CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xaikit as xk
from xaikit.datasets.shapes import (
    SHAPE_CLASSES,
    load_shapes,
    load_shapes_cnn,
    make_shapes,
)
from xaikit.metrics import pointing_game, relevance_mass, relevance_rank


def test_make_shapes_is_seeded():
    a = make_shapes(40, seed=3)
    b = make_shapes(40, seed=3)
    c = make_shapes(40, seed=4)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.images, c.images)


def test_make_shapes_gives_balanced_float32_images_in_0_1_with_masks():
    a = make_shapes(40, seed=3)
    assert a.images.shape == (40, 1, 32, 32) and a.images.dtype == np.float32
    assert a.masks.shape == (40, 32, 32) and a.masks.dtype == bool
    assert np.bincount(a.labels, minlength=4).tolist() == [10, 10, 10, 10]
    assert a.images.min() >= 0 and a.images.max() <= 1


def test_each_mask_covers_its_shape_with_distractors_outside():
    a = make_shapes(40, seed=3)
    # Each mask covers its class shape (bright pixels) and nothing far away: the shape is the
    # mask's interior, drawn at 0.6..1 on a background of |N(0, 0.05)|.
    for img, mask in zip(a.images[:, 0], a.masks, strict=True):
        assert 0.02 < mask.mean() < 0.3
        assert (img[mask] >= 0.6).sum() >= 0.3 * mask.sum()
    # Distractors exist outside the mask (bright pixels the class does not depend on).
    outside = [(img[~m] >= 0.6).sum() for img, m in zip(a.images[:, 0], a.masks, strict=True)]
    assert np.mean(np.array(outside) > 0) > 0.9


def test_load_shapes_test_split_is_a_fresh_copy_of_500_images():
    X, y, masks = load_shapes("test")
    assert X.shape == (500, 1, 32, 32) and y.shape == (500,) and masks.shape == (500, 32, 32)
    X[0] = 5.0  # a fresh copy: the next call is unaffected
    assert load_shapes("test").images.max() <= 1


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: load_shapes("valid"), "split"),
        (lambda: make_shapes(4, size=16), "size"),
        (lambda: make_shapes(4, distractors=(2, 1)), "distractors"),
        (lambda: make_shapes(0), "n"),
    ],
    ids=["split", "size", "distractors", "n"],
)
def test_bad_shapes_arguments_are_refused_by_name(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.fixture(scope="module")
def shapes_cnn(cache_dir):
    return load_shapes_cnn(cache_dir=cache_dir)


def test_shapes_cnn_is_accurate_from_its_cache(shapes_cnn, cache_dir):
    X, y, _ = load_shapes("test")
    with torch.no_grad():
        accuracy = (shapes_cnn(torch.as_tensor(X)).argmax(1).numpy() == y).mean()
    assert accuracy > 0.95, accuracy  # measured 0.98
    again = load_shapes_cnn(cache_dir=cache_dir)  # read from the cache, not retrained
    for k, v in shapes_cnn.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    assert len(SHAPE_CLASSES) == 4


def test_saliency_localises_the_class_shape(shapes_cnn):
    X, _, masks = load_shapes("test")
    e = xk.explain(shapes_cnn, X[:20], method="saliency", batch=True)
    chance = masks[:20].mean()
    mass = np.mean([relevance_mass(v, m) for v, m in zip(e.values, masks[:20], strict=True)])
    rank = np.mean([relevance_rank(v, m) for v, m in zip(e.values, masks[:20], strict=True)])
    hits = np.mean([pointing_game(v, m) for v, m in zip(e.values, masks[:20], strict=True)])
    assert mass > 2 * chance and rank > 2 * chance, (mass, rank, chance)
    assert hits > 0.5, hits
