"""Representations: activations over a data set, projections, probes with control tasks,
probing by reconstruction; equal to scikit-learn on hooked activations, no hooks left behind."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import xaikit as xk
from _models import TokenNet
from xaikit.datasets import load_mnist, load_watermark_mnist
from xaikit.representations import (
    Activations,
    activations,
    probe,
    project,
    project_layers,
    reconstruct,
)
from xaikit.representations.probing import _control_labels

# ---------------------------------------------------------------------- helpers


def small_net(seed: int = 0) -> nn.Module:
    """A SmallCNN-like random network for 1x12x12 inputs (untrained: only numbers matter)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    ).eval()


def images(n: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 12, 12), dtype=np.float32)


def hooked(net: nn.Module, x: np.ndarray, layer: str) -> np.ndarray:
    """A layer's outputs captured the plain way: one forward hook, one forward pass."""
    kept = []
    handle = dict(net.named_modules())[layer].register_forward_hook(
        lambda _m, _i, out: kept.append(out.detach().clone())
    )
    try:
        with torch.inference_mode():
            net(torch.from_numpy(np.ascontiguousarray(x)))
    finally:
        handle.remove()
    return kept[0].numpy()


def no_hooks(net: nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in net.modules()
    )


@pytest.fixture(scope="module")
def mnist_test():
    return load_mnist("test")


# ---------------------------------------------------------------------- activations


def test_activations_equal_a_plain_hook_for_every_layer_in_one_pass():
    net, x = small_net(), images(70)
    acts = activations(net, x, layers=["0", "3", "6"])
    assert isinstance(acts, Activations) and acts.layers == ("0", "3", "6") and acts.n == 70
    assert not acts.spilled and acts.targets is None
    for layer in ("0", "3", "6"):
        np.testing.assert_allclose(acts[layer], hooked(net, x, layer), rtol=1e-5, atol=1e-6)
    assert no_hooks(net)


def test_spilled_to_disk_equals_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # spill files land here, if left
    net, x = small_net(), images(300)
    in_memory = activations(net, x, layers=["2", "5"])
    assert not in_memory.spilled
    budget = in_memory["2"].nbytes // 3  # the result is ~3x the budget
    spilled = activations(net, x, layers=["2", "5"], memory_budget=budget)
    assert spilled.spilled and isinstance(spilled["2"], np.memmap)
    for layer in ("2", "5"):
        np.testing.assert_array_equal(spilled[layer], in_memory[layer])
    # The temporary files are unlinked at once: nothing stays on disk.
    assert list(tmp_path.iterdir()) == []


def test_out_directory_holds_plain_npy_files(tmp_path):
    net, x = small_net(), images(40)
    acts = activations(net, x, layers=["3", "6"], out=tmp_path / "acts")
    assert acts.spilled and set(acts.paths) == {"3", "6"}
    for layer in ("3", "6"):
        assert acts.paths[layer] == tmp_path / "acts" / f"{layer}.npy"
        on_disk = np.load(acts.paths[layer], allow_pickle=False)
        np.testing.assert_allclose(on_disk, hooked(net, x, layer), rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "acts").iterdir()) == ["3.npy", "6.npy"]


def test_out_file_names_stay_inside_out_one_per_layer(tmp_path):
    # Layer names become file names: "a/b" wrote outside out, a 240-character name passed
    # the file system's limit, and "a/b" and "a_b" would have shared one file.
    long = "l" * 240
    net = nn.Sequential()
    net.add_module("a/b", nn.Flatten())
    net.add_module("a_b", nn.Linear(144, 4))
    net.add_module(long, nn.ReLU())
    x = images(6)
    acts = activations(net, x, layers=["a/b", "a_b", long], out=tmp_path / "acts")
    files = sorted(p.name for p in (tmp_path / "acts").iterdir())
    assert len(files) == 3 and all(len(f) < 100 for f in files) and "a_b.npy" in files
    assert {p.parent for p in acts.paths.values()} == {tmp_path / "acts"}
    np.testing.assert_array_equal(np.load(acts.paths["a/b"]), x.reshape(6, -1))
    np.testing.assert_array_equal(np.load(acts.paths["a_b"]), acts["a_b"])
    assert np.load(acts.paths[long]).shape == (6, 4)


@pytest.mark.parametrize(
    "wrap", [lambda ds: ds, lambda ds: DataLoader(ds, batch_size=16)], ids=["dataset", "loader"]
)
def test_a_dataset_or_loader_gives_the_array_result_with_its_targets(wrap):
    net, x = small_net(), images(45)
    y = np.arange(45) % 3
    want = activations(net, x, layers="6")["6"]
    ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    got = activations(net, wrap(ds), layers="6")
    np.testing.assert_allclose(got["6"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.targets, y)


def test_shuffled_loader_keeps_targets_aligned_with_activations():
    net, x = small_net(), images(64)
    ids = np.arange(64)  # the target is the item's index, so alignment can be checked
    want = hooked(net, x, "6")
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(ids)),
        batch_size=10,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    acts = activations(net, loader, layers="6", memory_budget=1000)  # also through the disk
    assert sorted(acts.targets) == list(ids) and not np.array_equal(acts.targets, ids)
    np.testing.assert_allclose(acts["6"], want[acts.targets], rtol=1e-5, atol=1e-6)


def test_plain_dataset_without_targets():
    class Plain(Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]  # a bare array, no tuple

    net, x = small_net(), images(30)
    acts = activations(net, Plain(x), layers="3", batch_size=7)
    assert acts.targets is None
    np.testing.assert_allclose(acts["3"], hooked(net, x, "3"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("pool", "reduce"),
    [
        ("mean", lambda a: a.mean(axis=(2, 3))),
        ("max", lambda a: a.max(axis=(2, 3))),
        (lambda t: t[:, :, 0, 0], lambda a: a[:, :, 0, 0]),
    ],
    ids=["mean", "max", "callable"],
)
def test_pooling_reduces_the_spatial_axes(pool, reduce):
    net, x = small_net(), images(20)
    full = hooked(net, x, "2")  # (N, 4, 12, 12)
    got = activations(net, x, layers="2", pool=pool)["2"]
    np.testing.assert_allclose(got, reduce(full), rtol=1e-5, atol=1e-6)


def test_pooling_leaves_vectors_as_they_are():
    net, x = small_net(), images(20)
    flat = activations(net, x, layers="6", pool="mean")["6"]
    np.testing.assert_allclose(flat, hooked(net, x, "6"), rtol=1e-5, atol=1e-6)


def test_token_model_pooled_per_sequence_or_kept_per_token():
    net = TokenNet(vocab=20, dim=6, hidden=5, classes=2).eval()
    ids = np.random.default_rng(0).integers(0, 20, size=(12, 7))
    per_token = activations(net, ids, layers="mix")["mix"]
    assert per_token.shape == (12, 7, 5)
    with torch.inference_mode():
        want = net.mix(net.embed(torch.from_numpy(ids))).numpy()
    np.testing.assert_allclose(per_token, want, rtol=1e-5, atol=1e-6)
    pooled = activations(net, ids, layers="mix", pool="mean")["mix"]
    np.testing.assert_allclose(pooled, want.mean(axis=1), rtol=1e-5, atol=1e-6)
    assert per_token.reshape(-1, 5).shape == (84, 5)  # one row per token


def test_a_layer_run_twice_per_forward_is_refused():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.lin(self.lin(x)))

    net = Twice()
    with pytest.raises(ValueError, match=r"^layers: 'lin' runs more than once in one forward"):
        activations(net, np.zeros((20, 4), np.float32), layers="lin", batch_size=20)
    assert no_hooks(net)


def test_an_xk_model_is_accepted_without_a_trace():
    net = small_net()
    net.train()  # the user's training flag must survive
    m = xk.Model(net)
    acts = activations(m, images(30), layers="5")
    assert acts["5"].shape == (30, 8)
    assert net.training and all(mod.training for mod in net.modules())
    assert no_hooks(net)


def test_hooks_removed_after_an_error():
    net = small_net()

    def broken(_t):
        raise RuntimeError("pool callable fails")

    with pytest.raises(RuntimeError, match="pool callable fails"):
        activations(net, images(20), layers=["2", "5"], pool=broken)
    assert no_hooks(net)
    # An error in our own checks after the forward passes (labels of a loader): no hooks.
    loader = DataLoader(TensorDataset(torch.from_numpy(images(20))), batch_size=8)
    with pytest.raises(ValueError, match=r"labels: expected one label per item, shape \(20,\)"):
        probe(net, loader, np.zeros(19, int), layers="5")
    assert no_hooks(net)


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (
            lambda net, x: activations(net, x, layers=["2", "relu9"]),
            ValueError,
            r"layers: no layer 'relu9' in the model.*; layers: 0, 1, 2, 3, 4, 5, 6, 7",
        ),
        (
            lambda net, x: activations(net, x, layers=[]),
            ValueError,
            r"layers: expected at least one layer",
        ),
        (
            lambda net, x: activations(net, x, layers=["2", "2"]),
            ValueError,
            r"layers: each layer once",
        ),
        (lambda net, x: activations(net, x, layers=[2]), TypeError, r"layers: expected layer"),
        (
            lambda net, x: activations(net, x, layers="2", pool="median"),
            ValueError,
            r"pool: expected one of 'mean', 'max'",
        ),
        (
            lambda net, x: activations(net, x, layers="2", memory_budget=0),
            ValueError,
            r"memory_budget: expected a positive int",
        ),
        (
            lambda net, x: activations(net, x[:0], layers="2"),
            ValueError,
            r"data: expected at least one item",
        ),
        (
            lambda net, x: activations(net, "images", layers="2"),
            TypeError,
            r"data: expected an array",
        ),
        (
            lambda net, x: project(net, x, layer="conv9"),
            ValueError,
            r"layer: no layer 'conv9'",
        ),
        (
            lambda net, x: project(net, x, layer="2", how="mds"),
            ValueError,
            r"how: expected one of 'pca', 'tsne', 'umap'",
        ),
        (
            lambda net, x: project(net, x, layer="2", labels=[0, 1]),
            ValueError,
            r"labels: expected one label per item, shape \(30,\), got shape \(2,\)",
        ),
        (
            lambda net, x: probe(net, x, np.arange(30) % 2, layers="5", kind="svm"),
            ValueError,
            r"kind: expected one of 'linear', 'mlp'",
        ),
        (
            lambda net, x: probe(net, x, np.arange(29) % 2, layers="5"),
            ValueError,
            r"labels: expected one label per item, shape \(30,\), got shape \(29,\)",
        ),
        (
            lambda net, x: probe(net, x, np.ones(30, int), layers="5"),
            ValueError,
            r"labels: expected at least two classes, got only 1",
        ),
        (
            lambda net, x: probe(net, x, np.linspace(0, 1, 30), layers="5"),
            ValueError,
            r"labels: expected class labels .* got non-integer floats",
        ),
        (
            lambda net, x: probe(net, x, np.arange(30) % 2, layers="5", test_size=1.5),
            ValueError,
            r"test_size: expected a share in \(0, 1\)",
        ),
        (
            lambda net, x: probe(net, x, layers="5"),
            TypeError,
            r"labels: expected one label per item; the data yields no targets",
        ),
        (
            lambda net, x: probe(net, x, np.arange(30) % 2, layers=["5", "fc9"]),
            ValueError,
            r"layers: no layer 'fc9'",
        ),
        (
            lambda net, x: reconstruct(net, x, layers="5", epochs=0),
            ValueError,
            r"epochs: expected a positive int",
        ),
        (
            lambda net, x: activations(lambda b: np.zeros((len(b), 2)), x, layers="2"),
            TypeError,
            r"model: layers can be recorded only for PyTorch models",
        ),
    ],
)
def test_bad_input_names_the_argument(call, error, pattern):
    net = small_net()
    with pytest.raises(error, match=pattern):
        call(net, images(30))
    assert no_hooks(net)


def test_unknown_layer_suggests_close_names(clean_cnn, mnist_test):
    X, y = mnist_test[0][:10], mnist_test[1][:10]
    with pytest.raises(ValueError, match=r"layers: no layer 'relu4'.*did you mean 'relu"):
        probe(clean_cnn, X, y, layers=["pool1", "relu4"])
    assert no_hooks(clean_cnn)


# ---------------------------------------------------------------------- projection


def test_project_pca_equals_scikit_learn_on_hooked_activations(clean_cnn, mnist_test):
    from sklearn.decomposition import PCA

    X, y = mnist_test[0][:600], mnist_test[1][:600]
    for layer in ("pool2", "relu3"):
        p = project(clean_cnn, X, layer=layer, labels=y)
        reference = hooked(clean_cnn, X, layer).reshape(len(X), -1)
        want = PCA(n_components=2, random_state=0).fit_transform(reference)
        assert p.coords.shape == (600, 2) and p.layer == layer and p.how == "pca"
        scale = np.abs(want).max()
        assert np.abs(p.coords - want).max() <= 1e-4 * scale
        np.testing.assert_array_equal(p.labels, y)
    assert isinstance(p.plot(), Figure)
    assert no_hooks(clean_cnn)


def test_project_layers_draws_one_projection_per_layer_labelled_by_targets(clean_cnn, mnist_test):
    X, y = mnist_test[0][:300], mnist_test[1][:300]
    loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), batch_size=64)
    result = project_layers(clean_cnn, loader, layers=["pool1", "pool2", "relu3"])
    assert result.layers == ["pool1", "pool2", "relu3"]
    for layer in result.layers:
        np.testing.assert_array_equal(result[layer].labels, y)  # the loader's own targets
        single = project(clean_cnn, X, layer=layer)
        np.testing.assert_allclose(
            result[layer].coords, single.coords, atol=1e-4 * np.abs(single.coords).max()
        )
    fig = result.plot()
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["pool1", "pool2", "relu3"]


def test_tsne_is_seeded():
    net, x = small_net(), images(60)
    a = project(net, x, layer="5", how="tsne", seed=3, max_iter=250)  # passed to TSNE
    b = project(net, x, layer="5", how="tsne", seed=3, max_iter=250)
    assert a.coords.shape == (60, 2)
    np.testing.assert_array_equal(a.coords, b.coords)


def test_umap_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # "import umap" now raises ImportError
    net = small_net()
    with pytest.raises(ImportError, match=r"pip install 'xaikit\[umap\]'"):
        project(net, images(20), layer="5", how="umap")
    assert no_hooks(net)


# ---------------------------------------------------------------------- probing


def test_probe_accuracy_rises_with_depth_while_control_stays_at_chance(clean_cnn, mnist_test):
    X, y = mnist_test  # 1,000 held-out MNIST-5k digits; 750 train the probe, 250 score it
    layers = ["pool1", "pool2", "relu3"]
    r = probe(clean_cnn, X, y, layers=layers)
    acc, control = r.accuracy, r.control_accuracy
    assert r.layers == layers and r.n_train == 750 and r.n_test == 250
    # Measured (torch 2.13 CPU): pool1 0.89, pool2 0.96, relu3 0.97 (and conv1 0.83, fc1
    # 0.98). Strictly rising over the conv stages; pool2 -> relu3 is a plateau within ~1%.
    assert acc["pool1"] < acc["pool2"] - 0.03
    assert acc["relu3"] >= acc["pool2"] - 0.01
    assert acc["relu3"] >= 0.95  # the last hidden layer
    assert abs(r.chance - 0.1) < 0.02
    for layer in layers:
        assert control[layer] < 0.2  # random labels per item: only chance on held-out items
        assert r.selectivity[layer] == pytest.approx(acc[layer] - control[layer])
        assert r.selectivity[layer] > 0.65
    # The probe can memorise (control training accuracy) yet learns nothing that transfers.
    assert r.control_train_accuracy["pool1"] > 0.9
    assert isinstance(r.plot(), Figure)
    assert no_hooks(clean_cnn)


def test_probe_finds_the_watermark_in_the_shortcut_model(watermark_cnn, clean_cnn):
    Xc, _, mc = load_watermark_mnist("test")
    Xm, _, mm = load_watermark_mnist("test_marked")
    X = np.concatenate([Xc[:400], Xm[:400]])
    marked = np.concatenate([mc[:400], mm[:400]])
    shortcut = probe(watermark_cnn, X, marked, layers=["relu3", "fc2"])
    clean = probe(clean_cnn, X, marked, layers=["relu3", "fc2"])
    assert shortcut.accuracy["relu3"] >= 0.9
    # The shortcut model carries the mark all the way to its class scores; the clean model's
    # scores hold far less of it (measured: 1.00 against 0.73).
    assert shortcut.accuracy["fc2"] >= 0.95
    assert clean.accuracy["fc2"] < shortcut.accuracy["fc2"] - 0.1
    for layer in ("relu3", "fc2"):
        assert abs(shortcut.control_accuracy[layer] - 0.5) < 0.12


def test_control_task_with_types_is_learnable_by_memorising_types(clean_cnn, mnist_test):
    X, y = mnist_test[0][:600], mnist_test[1][:600]
    # Types = the digit: every digit gets one random label, so a probe that separates digits
    # learns the control task too (Hewitt & Liang's setting with word types).
    r = probe(clean_cnn, X, y, layers="relu3", types=y)
    assert r.control_accuracy["relu3"] > 0.85
    assert r.selectivity["relu3"] < 0.15


def test_control_labels_keep_the_label_distribution():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    control = _control_labels(labels, None, seed=0)
    assert sorted(control) == sorted(labels) and not np.array_equal(control, labels)
    np.testing.assert_array_equal(control, _control_labels(labels, None, seed=0))
    types = np.arange(100) % 7
    typed = _control_labels(labels, types, seed=0)
    for t in range(7):
        assert len(np.unique(typed[types == t])) == 1  # one label per type


def test_mlp_probe(clean_cnn, mnist_test):
    X, y = mnist_test[0][:400], mnist_test[1][:400]
    r = probe(clean_cnn, X, y, layers="relu3", kind="mlp", control=False)
    assert r.kind == "mlp" and r.accuracy["relu3"] >= 0.85
    assert r.control_accuracy == {} and r.selectivity == {}
    assert isinstance(r.plot(), Figure)


def test_probe_labels_may_be_a_list_of_strings():
    net, x = small_net(), images(80)
    labels = np.where(x[:, 0, :6].mean(axis=(1, 2)) > x[:, 0, 6:].mean(axis=(1, 2)), "top", "low")
    a = probe(net, x, labels, layers=["3", "6"], seed=1)
    b = probe(net, x, list(labels), layers=["3", "6"], seed=1)
    assert a.accuracy == b.accuracy and a.control_accuracy == b.control_accuracy


# ---------------------------------------------------------------------- reconstruction


def test_reconstruction_error_rises_with_depth(clean_cnn, mnist_test):
    X = mnist_test[0]
    r = reconstruct(clean_cnn, X, layers=["pool1", "relu3", "fc2"], epochs=10)
    err = r.error
    # Measured: pool1 0.027, relu3 0.040, fc2 0.049, the mean image 0.068.
    assert err["pool1"] < err["relu3"] < err["fc2"] < r.baseline_error
    assert r.examples.shape == (3, 8, 1, 28, 28) and r.originals.shape == (8, 1, 28, 28)
    assert isinstance(r.plot(), Figure)
    assert no_hooks(clean_cnn)


def test_reconstruction_randomness_comes_from_its_seed_only():
    net, x = small_net(), images(60)
    state = torch.random.get_rng_state()
    a = reconstruct(net, x, layers="5", epochs=2, seed=4, examples=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = reconstruct(net, x, layers="5", epochs=2, seed=4, examples=3)
    assert a.error == b.error
    np.testing.assert_array_equal(a.examples, b.examples)
    held_out = np.sort(np.random.default_rng(4).permutation(60)[:15])  # ceil(0.25 * 60)
    np.testing.assert_array_equal(a.originals, x[held_out[:3]])


def test_names_holding_dollars_or_underscores_are_drawn_as_text():
    # Class names and layer names go into legends, ticks and titles: $...$ crashed the draw
    # (mathtext), and a label starting with "_" was left out of the legend.
    from matplotlib import cbook

    net, x = small_net(), images(40)
    labels = np.where(np.arange(40) % 2 == 0, r"$\undefinedmacro$", "_hidden")
    p = project_layers(net, x, layers=["3", "6"], labels=labels)
    fig = p.plot()
    fig.canvas.draw()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert sorted(legend) == sorted([r"\$\undefinedmacro\$", " _hidden"])
    r = probe(net, x, labels, layers=["3", "6"], seed=0)
    r.layers = [r"$\x$", "6"]  # as a module named so would show
    r.accuracy = {r"$\x$": 0.5, "6": 0.6}
    r.control_accuracy = r.selectivity = {}
    fig = r.plot()
    fig.canvas.draw()
    shown = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert shown == [r"\$\x\$", "6"] and not any(cbook.is_math_text(t) for t in shown)
