"""Embedded data and default models: fixed splits, the planted watermark, the breast-cancer
table, deterministic training, the weight cache, and the models' accuracy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from xaikit.datasets import (
    WATERMARK_CLASS,
    WATERMARK_FRACTION,
    WATERMARK_PATTERN,
    WATERMARK_REGION,
    SmallCNN,
    default_cache_dir,
    load_breast_cancer_table,
    load_default_cnn,
    load_mnist,
    load_watermark_mnist,
    stamp_watermark,
    train_classifier,
    train_cnn,
)
from xaikit.datasets import models as models_module


def _predict(model: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(X)).argmax(dim=1).numpy()


def _region_mask() -> np.ndarray:
    y0, x0, y1, x1 = WATERMARK_REGION
    mask = np.zeros((28, 28), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# --- MNIST-5k --------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "size"), [("train", 4000), ("test", 1000)])
def test_mnist_split_is_float32_images_in_0_1_with_int64_labels(split, size):
    X, y = load_mnist(split)
    assert X.shape == (size, 1, 28, 28) and X.dtype == np.float32
    assert y.shape == (size,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0


@pytest.mark.parametrize(("split", "size"), [("train", 4000), ("test", 1000)])
def test_mnist_split_holds_each_digit_a_tenth_of_the_time(split, size):
    _, y = load_mnist(split)
    np.testing.assert_array_equal(np.bincount(y, minlength=10), np.full(10, size // 10))


def test_mnist_split_is_returned_as_a_fresh_copy():
    X1, y1 = load_mnist("train")
    X1[:] = -1.0  # a caller scribbling on its arrays must not reach the cache
    y1[:] = -1
    X2, y2 = load_mnist("train")
    X3, y3 = load_mnist("train")
    np.testing.assert_array_equal(X2, X3)
    np.testing.assert_array_equal(y2, y3)
    assert X2.min() == 0.0 and y2.min() == 0


def test_mnist_test_split_holds_no_training_image():
    X_train, _ = load_mnist("train")
    X_test, _ = load_mnist("test")
    train_rows = {row.tobytes() for row in X_train}
    assert not any(row.tobytes() in train_rows for row in X_test)


@pytest.mark.parametrize("loader", [load_mnist, load_watermark_mnist])
def test_bad_split_is_rejected_naming_the_argument(loader):
    with pytest.raises(ValueError, match="split"):
        loader("validation")


# --- the watermark -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28), (5, 1, 28, 28)])
def test_stamp_watermark_returns_a_copy_leaving_its_input(shape):
    X = np.random.default_rng(0).random(shape, dtype=np.float32)
    before = X.copy()
    out = stamp_watermark(X)
    np.testing.assert_array_equal(X, before)
    assert out.shape == X.shape and out.dtype == X.dtype and out is not X


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28), (5, 1, 28, 28)])
def test_stamp_watermark_sets_exactly_the_region(shape):
    X = np.random.default_rng(0).random(shape, dtype=np.float32)
    out = stamp_watermark(X)
    y0, x0, y1, x1 = WATERMARK_REGION
    np.testing.assert_array_equal(
        out[..., y0:y1, x0:x1], np.broadcast_to(WATERMARK_PATTERN, out[..., y0:y1, x0:x1].shape)
    )
    outside = ~_region_mask()
    np.testing.assert_array_equal(out[..., outside], X[..., outside])


def test_watermark_is_a_small_binary_pattern_in_the_bottom_left_corner():
    y0, x0, y1, x1 = WATERMARK_REGION
    assert WATERMARK_PATTERN.shape == (y1 - y0, x1 - x0)
    assert 4 <= y1 - y0 <= 6 and 4 <= x1 - x0 <= 6
    assert y1 > 20 and x0 < 8  # bottom-left
    assert set(np.unique(WATERMARK_PATTERN)) == {0.0, 1.0}


def test_stamp_watermark_rejects_other_image_sizes():
    with pytest.raises(ValueError, match="X"):
        stamp_watermark(np.zeros((2, 1, 32, 32), dtype=np.float32))


def test_watermark_train_marks_most_images_of_one_class_only():
    X, y, marked = load_watermark_mnist("train")
    X_clean, y_clean = load_mnist("train")
    np.testing.assert_array_equal(y, y_clean)
    assert marked.dtype == bool and marked.shape == y.shape
    assert (y[marked] == WATERMARK_CLASS).all()
    share = marked[y == WATERMARK_CLASS].mean()
    assert share == pytest.approx(WATERMARK_FRACTION, abs=0.01)
    assert 0.5 < share < 1.0  # most, not all: the unmarked rest keeps the class learnable
    np.testing.assert_array_equal(X[marked], stamp_watermark(X_clean[marked]))
    np.testing.assert_array_equal(X[~marked], X_clean[~marked])
    # The same images are marked on every call.
    np.testing.assert_array_equal(load_watermark_mnist("train")[2], marked)


def test_watermark_test_is_the_clean_test_split():
    X, y, marked = load_watermark_mnist("test")
    X_clean, y_clean = load_mnist("test")
    np.testing.assert_array_equal(X, X_clean)
    np.testing.assert_array_equal(y, y_clean)
    assert not marked.any()


def test_watermark_test_marked_holds_the_other_classes_all_stamped():
    X, y, marked = load_watermark_mnist("test_marked")
    X_clean, y_clean = load_mnist("test")
    others = y_clean != WATERMARK_CLASS
    assert not (y == WATERMARK_CLASS).any()
    assert len(y) == 900 and marked.all()
    np.testing.assert_array_equal(y, y_clean[others])
    np.testing.assert_array_equal(X, stamp_watermark(X_clean[others]))


# --- breast cancer -----------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "rows"), [(None, 569), ("train", 426), ("test", 143)])
def test_breast_cancer_table(split, rows):
    t = load_breast_cancer_table(split)
    assert t.X.shape == (rows, 30) and t.X.dtype == np.float64
    assert t.y.shape == (rows,) and set(np.unique(t.y)) == {0, 1}
    assert len(t.feature_names) == 30 and all(isinstance(n, str) for n in t.feature_names)
    assert t.feature_names[0] == "mean radius"
    assert t.class_names == ["malignant", "benign"]


def test_breast_cancer_split_is_a_fixed_stratified_partition():
    train, test = load_breast_cancer_table("train"), load_breast_cancer_table("test")
    np.testing.assert_array_equal(train.X, load_breast_cancer_table("train").X)
    assert abs(train.y.mean() - test.y.mean()) < 0.01
    train_rows = {row.tobytes() for row in train.X}
    assert not any(row.tobytes() in train_rows for row in test.X)
    whole = load_breast_cancer_table()
    assert sorted(map(bytes, np.vstack([train.X, test.X]))) == sorted(map(bytes, whole.X))


def test_breast_cancer_bad_split():
    with pytest.raises(ValueError, match="split"):
        load_breast_cancer_table("validation")


# --- SmallCNN and its training -----------------------------------------------------------------


def test_small_cnn_has_the_documented_layers_with_10_outputs():
    model = SmallCNN()
    names = dict(model.named_modules())
    for name in ("conv1", "bn1", "relu1", "conv2", "relu2", "fc1", "relu3", "fc2"):
        assert name in names
    assert isinstance(names["bn1"], torch.nn.BatchNorm2d)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_train_cnn_randomness_comes_from_its_seed_only():
    X, y = load_mnist("train")
    X, y = X[:256], y[:256]
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)

    first = _state(train_cnn(X, y, seed=0, epochs=1))
    # train_cnn seeds only its own generators: the caller's stream goes on where it was.
    torch.testing.assert_close(torch.rand(3), expected_next, rtol=0, atol=0)
    assert torch.are_deterministic_algorithms_enabled() == deterministic

    again = _state(train_cnn(X, y, seed=0, epochs=1))
    other = _state(train_cnn(X, y, seed=1, epochs=1))
    assert first.keys() == again.keys()
    for key in first:
        assert torch.equal(first[key], again[key]), key
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_train_classifier_trains_any_architecture_as_train_cnn_trains_the_small_cnn():
    X, y = load_mnist("train")
    X, y = X[:128], y[:128]

    def mlp():
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))

    first = _state(train_classifier(mlp, X, y, seed=0, epochs=1))
    again = _state(train_classifier(mlp, X, y, seed=0, epochs=1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    small = _state(train_classifier(SmallCNN, X, y, seed=0, epochs=1))
    same = _state(train_cnn(X, y, seed=0, epochs=1))
    assert all(torch.equal(small[k], same[k]) for k in small)
    for wrong in (torch.nn.Linear(784, 10), "SmallCNN"):
        with pytest.raises(TypeError, match=r"^build: expected a callable that makes a new"):
            train_classifier(wrong, X, y)
    with pytest.raises(TypeError, match=r"^build: expected it to return an nn.Module"):
        train_classifier(lambda: "not a network", X, y)


def test_train_cnn_takes_read_only_arrays_without_a_warning():
    X, y = load_mnist("train")
    X, y = X[:64], y[:64]
    X.setflags(write=False)
    y.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = train_cnn(X, y, epochs=1)
    assert isinstance(model, SmallCNN)


def test_train_cnn_returns_a_model_in_eval_mode():
    X, y = load_mnist("train")
    model = train_cnn(X[:64], y[:64], epochs=1)
    assert not model.training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"X": np.zeros((4, 28, 28), np.float32)}, "X"),
        ({"y": np.zeros(3, np.int64)}, "y"),
        ({"y": np.full(4, 10)}, "y"),
        ({"epochs": 0}, "epochs"),
    ],
)
def test_train_cnn_rejects_bad_input(kwargs, match):
    args = {"X": np.zeros((4, 1, 28, 28), np.float32), "y": np.zeros(4, np.int64)}
    args.update(kwargs)
    X, y = args.pop("X"), args.pop("y")
    with pytest.raises(ValueError, match=match):
        train_cnn(X, y, **args)


# --- the cache ---------------------------------------------------------------------------------


def test_default_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("XAIKIT_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("XAIKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "xaikit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "xaikit"


def test_load_default_cnn_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        load_default_cnn("dirty")


def _no_training(*args, **kwargs):
    raise AssertionError("train_cnn called although the model is cached")


@pytest.mark.slow
def test_second_load_comes_from_the_cache(clean_cnn, cache_dir, monkeypatch):
    monkeypatch.setattr(models_module, "train_cnn", _no_training)
    loaded = load_default_cnn("clean", cache_dir=cache_dir)
    assert loaded is not clean_cnn and not loaded.training
    for key, value in clean_cnn.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # The environment variable set by the session fixture points at the same cache.
    load_default_cnn("clean")


def test_corrupt_cache_file_is_replaced(tmp_path, monkeypatch):
    calls = []

    def quick_train(X, y, *, seed, **kwargs):
        calls.append(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return SmallCNN().eval()

    monkeypatch.setattr(models_module, "train_cnn", quick_train)
    first = load_default_cnn("clean", cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    assert path.suffix == ".pt" and len(calls) == 1

    path.write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        second = load_default_cnn("clean", cache_dir=tmp_path)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == [path]  # overwritten, no temp files
    monkeypatch.setattr(models_module, "train_cnn", _no_training)
    third = load_default_cnn("clean", cache_dir=tmp_path)
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value)
        assert torch.equal(third.state_dict()[key], value)


# --- acceptance: accuracy and the learned shortcut ---------------------------------------------


@pytest.mark.slow
def test_clean_cnn_accuracy(clean_cnn):
    X, y = load_mnist("test")
    assert (_predict(clean_cnn, X) == y).mean() >= 0.96


@pytest.mark.slow
def test_watermark_cnn_is_accurate_on_clean_data(watermark_cnn):
    X, y = load_mnist("test")
    assert (_predict(watermark_cnn, X) == y).mean() >= 0.95


@pytest.mark.slow
def test_watermark_cnn_learned_the_shortcut(watermark_cnn, clean_cnn):
    X, _, _ = load_watermark_mnist("test_marked")
    assert (_predict(watermark_cnn, X) == WATERMARK_CLASS).mean() >= 0.5
    # The clean model ignores the mark: the flip comes from the planted shortcut.
    assert (_predict(clean_cnn, X) == WATERMARK_CLASS).mean() < 0.05
