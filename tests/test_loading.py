"""Loading users' models and inputs: every form, and one clear error for each bad one."""

from __future__ import annotations

import pickle
import textwrap
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from xaikit.loading import (
    LoadError,
    load_class_names,
    load_inputs,
    load_labels,
    load_model,
)

NET_PY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
        )

    def make_other():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 5))

    def not_a_model():
        return 42
    """
)


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(NET_PY)
    return path


def _reference():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3),
    )


X = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)


def export_onnx(net, path, *, dynamic: bool) -> None:
    """Export with the TorchScript-based exporter (no onnxscript needed), quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, torch.zeros(2, 1, 8, 8), str(path), input_names=["x"],
            dynamic_axes={"x": {0: "n"}} if dynamic else None, dynamo=False,
        )  # fmt: skip


def _scores(module, x=X):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _trained_state():
    net = _reference()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # differs from make()'s initialisation, so loading must take effect
    return net


def test_factory_with_safetensors_weights(net_file, tmp_path):
    from safetensors.torch import save_file

    net = _trained_state()
    save_file(net.state_dict(), tmp_path / "w.safetensors")
    loaded = load_model(f"{net_file}:make", weights=tmp_path / "w.safetensors")
    assert loaded.kind == "torch" and loaded.has_gradients and loaded.input_channels == 1
    np.testing.assert_allclose(_scores(loaded.model), _scores(net), rtol=0, atol=0)


def test_factory_with_a_torch_checkpoint(net_file, tmp_path):
    net = _trained_state()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # DataParallel names
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "ckpt.pt")
    loaded = load_model(f"{net_file}:make", weights=tmp_path / "ckpt.pt")
    np.testing.assert_array_equal(_scores(loaded.model), _scores(net))


def test_weights_that_do_not_fit(net_file, tmp_path):
    torch.save(torch.nn.Linear(64, 5).state_dict(), tmp_path / "other.pt")
    with pytest.raises(LoadError, match=r"^weights: .*does not fit the model") as info:
        load_model(f"{net_file}:make", weights=tmp_path / "other.pt")
    assert "missing 0.weight" in str(info.value) and "\n" not in str(info.value)
    bad = _reference()
    bad[3] = torch.nn.Linear(144, 7)
    torch.save(bad.state_dict(), tmp_path / "shape.pt")
    with pytest.raises(LoadError, match=r"shape mismatch: 3.weight \(7, 144\) in the file"):
        load_model(f"{net_file}:make", weights=tmp_path / "shape.pt")


def test_weights_file_that_is_no_weights(net_file, tmp_path):
    (tmp_path / "w.pt").write_bytes(b"not a zip")
    with pytest.raises(LoadError, match=r"^weights: .* is not a safetensors file or a torch"):
        load_model(f"{net_file}:make", weights=tmp_path / "w.pt")


def test_a_pickled_module_is_refused_as_weights(net_file, tmp_path):
    torch.save(_reference(), tmp_path / "whole.pt")  # a pickle of the module, not a state dict
    with pytest.raises(LoadError, match="weights_only=True"):
        load_model(f"{net_file}:make", weights=tmp_path / "whole.pt")


def test_factory_errors(net_file):
    with pytest.raises(LoadError, match=r"has no 'missing'; it defines \[.*'make'"):
        load_model(f"{net_file}:missing")
    with pytest.raises(LoadError, match=r"returned int, not a torch.nn.Module"):
        load_model(f"{net_file}:not_a_model")
    with pytest.raises(LoadError, match=r"without a factory"):
        load_model(str(net_file))
    with pytest.raises(LoadError, match=r"^model: no file"):
        load_model("nowhere.py:make")


def test_torchscript_file(tmp_path):
    net = _reference()
    torch.jit.script(net).save(str(tmp_path / "net.ts"))
    loaded = load_model(tmp_path / "net.ts")
    assert loaded.kind == "torchscript" and loaded.has_gradients
    np.testing.assert_allclose(_scores(loaded.model), _scores(net), atol=1e-6)


def test_a_file_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(LoadError, match=r"^model: .*notes.pt' is not a model file"):
        load_model(tmp_path / "notes.pt")
    torch.save(_reference().state_dict(), tmp_path / "state.pt")
    with pytest.raises(LoadError, match=r"holds weights \(a state dict\), not a model"):
        load_model(tmp_path / "state.pt")


def test_onnx_model_matches_torch(tmp_path):
    net = _reference()
    export_onnx(net, tmp_path / "net.onnx", dynamic=True)
    loaded = load_model(tmp_path / "net.onnx")
    assert loaded.kind == "onnx" and not loaded.has_gradients
    np.testing.assert_allclose(loaded.model(X), _scores(net), atol=1e-5)


def test_onnx_with_a_fixed_batch_size(tmp_path):
    net = _reference()
    export_onnx(net, tmp_path / "b2.onnx", dynamic=False)
    loaded = load_model(tmp_path / "b2.onnx")
    assert loaded.model.fixed_batch == 2
    np.testing.assert_allclose(loaded.model(X), _scores(net), atol=1e-5)  # 5 items: 2+2+1


def test_broken_onnx_file(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x00\x01garbage")
    with pytest.raises(LoadError, match=r"^model: .* is not an ONNX model"):
        load_model(tmp_path / "bad.onnx")


def test_pickle_needs_trust(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rows = np.random.default_rng(0).random((40, 3))
    clf = LogisticRegression().fit(rows, (rows[:, 0] > 0.5).astype(int))
    with (tmp_path / "clf.pkl").open("wb") as f:
        pickle.dump(clf, f)
    with pytest.raises(LoadError, match=r"^model: .* is a pickle.*--trust-pickle"):
        load_model(tmp_path / "clf.pkl")
    loaded = load_model(tmp_path / "clf.pkl", trust_pickle=True)
    assert loaded.kind == "sklearn" and loaded.output == "probabilities"
    np.testing.assert_array_equal(loaded.model.predict_proba(rows), clf.predict_proba(rows))
    with (tmp_path / "list.pkl").open("wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(LoadError, match="holds a list, not a model"):
        load_model(tmp_path / "list.pkl", trust_pickle=True)


def test_weights_only_with_a_factory(tmp_path):
    torch.jit.script(_reference()).save(str(tmp_path / "net.pt"))
    with pytest.raises(LoadError, match=r"^weights: only with --model file.py:factory"):
        load_model(tmp_path / "net.pt", weights=tmp_path / "net.pt")


# ---------------------------------------------------------------------- inputs


def _png(path, array, mode="L"):
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_png_grey_and_rgb(tmp_path):
    grey = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    a = _png(tmp_path / "a.png", grey)
    data = load_inputs([a])
    assert data.kind == "image" and data.names == ["a.png"] and data.x.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(data.x[0, 0], grey / 255.0, atol=1e-7)
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=-1)
    b = _png(tmp_path / "b.png", rgb, mode="RGB")
    data = load_inputs([b], mean=[0.5], std=[0.25])
    assert data.x.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(data.x[0, 2], ((255 - grey) / 255.0 - 0.5) / 0.25, atol=1e-6)
    data = load_inputs([b], channels=1, resize=(4, 6))  # grey for a 1-channel model
    assert data.x.shape == (1, 1, 4, 6)


def test_jpeg_and_sizes(tmp_path):
    img = np.full((10, 12, 3), 200, dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "c.jpg", quality=95)
    _png(tmp_path / "d.png", np.zeros((8, 8, 3), np.uint8), mode="RGB")
    with pytest.raises(LoadError, match=r"images of different sizes.*pass --resize H W"):
        load_inputs([tmp_path / "c.jpg", tmp_path / "d.png"])
    data = load_inputs([tmp_path / "c.jpg", tmp_path / "d.png"], resize=(8, 8))
    assert data.x.shape == (2, 3, 8, 8)
    assert abs(float(data.x[0].mean()) - 200 / 255) < 0.02


def test_image_that_does_not_decode(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(LoadError, match=r"^input: .*broken.png' is not a readable image"):
        load_inputs([tmp_path / "broken.png"])
    good = tmp_path / "good.png"
    _png(good, np.zeros((16, 16), np.uint8))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:40])  # truncated
    with pytest.raises(LoadError, match="is not a readable image"):
        load_inputs([tmp_path / "cut.png"])


def test_npy_inputs(tmp_path):
    np.save(tmp_path / "x.npy", X)
    data = load_inputs([tmp_path / "x.npy"])
    assert data.kind == "array" and data.names[4] == "x.npy[4]"
    np.testing.assert_array_equal(data.x, X)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(LoadError, match="is not a plain NumPy array file"):
        load_inputs([tmp_path / "obj.npy"])
    np.save(tmp_path / "flat.npy", np.zeros(3))
    with pytest.raises(LoadError, match=r"leading item axis"):
        load_inputs([tmp_path / "flat.npy"])


def test_csv_rows(tmp_path):
    (tmp_path / "t.csv").write_text("age,income\n30,1.5\n41,2.25\n")
    data = load_inputs([tmp_path / "t.csv"])
    assert data.kind == "table" and data.feature_names == ["age", "income"]
    np.testing.assert_array_equal(data.x, np.array([[30, 1.5], [41, 2.25]], np.float32))
    assert data.names == ["t.csv:row 1", "t.csv:row 2"]
    (tmp_path / "u.csv").write_text("1,2\n3,x\n")
    with pytest.raises(LoadError, match=r"line 2 column 2: 'x' is not a number"):
        load_inputs([tmp_path / "u.csv"])


def test_text_lines_and_bad_kinds(tmp_path):
    (tmp_path / "s.txt").write_text("a good film\n\nterrible\n")
    data = load_inputs([tmp_path / "s.txt"])
    assert data.kind == "text" and data.lines == ["a good film", "terrible"]
    assert data.names == ["s.txt:1", "s.txt:3"]
    (tmp_path / "m.xyz").write_text("?")
    with pytest.raises(LoadError, match="unknown kind"):
        load_inputs([tmp_path / "m.xyz"])
    png = _png(tmp_path / "e.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(LoadError, match="mixed kinds"):
        load_inputs([tmp_path / "s.txt", png])


def test_class_names_and_labels(tmp_path):
    (tmp_path / "c.txt").write_text("cat\ndog\n<script>alert(1)</script>\n")
    assert load_class_names(tmp_path / "c.txt", n_classes=3)[2] == "<script>alert(1)</script>"
    with pytest.raises(LoadError, match=r"names 3 classes; the model has 10"):
        load_class_names(tmp_path / "c.txt", n_classes=10)
    (tmp_path / "c.json").write_text('["a", "b"]')
    assert load_class_names(tmp_path / "c.json") == ["a", "b"]
    (tmp_path / "y.txt").write_text("1\n0\n2\n")
    np.testing.assert_array_equal(load_labels(tmp_path / "y.txt", n=3), [1, 0, 2])
    with pytest.raises(LoadError, match="has 3 labels for 4 inputs"):
        load_labels(tmp_path / "y.txt", n=4)
