"""The `xaikit` command on inputs and outputs a review found read or written wrong, silently or
with a misleading message: CSV headers, options that did not apply, pickled networks, image
channels of TorchScript and ONNX models, and folders that cannot be written."""

from __future__ import annotations

import json
import pickle
import re
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import xaikit
from xaikit.cli import main

CNN_PY = """
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 8 * 8, 3))
"""


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _fails(result, pattern: str) -> str:
    """The one error line of a failed command, checked against ``pattern``."""
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.fixture
def cnn(tmp_path):
    """A one-channel CNN on 8x8 images (factory, no weights file: --random-weights)."""
    (tmp_path / "cnn.py").write_text(CNN_PY)
    return ["--model", f"{tmp_path / 'cnn.py'}:make", "--random-weights"]


# ---------------------------------------------------------------------- CSV tables


@pytest.fixture
def frame_model(tmp_path):
    """A scikit-learn model fitted on a DataFrame of columns a, b, c, whose class is set by
    which of them is largest: rows read in another column order are predicted differently."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    clf = LogisticRegression().fit(frame, frame.to_numpy().argmax(axis=1))
    with (tmp_path / "abc.pkl").open("wb") as f:
        pickle.dump(clf, f)
    return tmp_path, clf


def test_csv_files_with_headers_in_other_orders_reach_the_model_by_name(frame_model):
    # With two headers, the columns went to the model by position: swapped, silently.
    import pandas as pd

    folder, clf = frame_model
    (folder / "abc.csv").write_text("a,b,c\n5,0,0\n0,5,0\n")
    (folder / "cab.csv").write_text("c,a,b\n5,0,0\n0,5,0\n")
    result = _run("explain", "--model", folder / "abc.pkl", "--trust-pickle", folder / "abc.csv",
                  folder / "cab.csv", "--out", folder / "o", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pd.concat(
        [pd.read_csv(folder / "abc.csv"), pd.read_csv(folder / "cab.csv")[list("abc")]]
    )
    expected = clf.predict_proba(frame).argmax(axis=1).tolist()
    assert expected == [0, 1, 2, 0]
    assert [i["predicted"] for i in json.loads(result.output)["items"]] == expected


def test_a_csv_without_header_beside_one_with_a_header_is_refused(frame_model):
    folder, _ = frame_model
    (folder / "bare.csv").write_text("5,0,0\n")
    (folder / "cab.csv").write_text("c,a,b\n5,0,0\n")
    result = _run("explain", "--model", folder / "abc.pkl", "--trust-pickle", folder / "bare.csv",
                  folder / "cab.csv", "--out", folder / "o")  # fmt: skip
    _fails(result, r"^Error: input: .*bare.csv' has no header row but .*cab.csv' has one")
    assert not (folder / "o").exists()


def _explained_rows(folder, clf, csv_text: str) -> list[dict]:
    """``xaikit explain --json`` of the CSV rows on the pickled classifier: its items."""
    with (folder / "clf.pkl").open("wb") as f:
        pickle.dump(clf, f)
    (folder / "rows.csv").write_text(csv_text)
    result = _run("explain", "--model", folder / "clf.pkl", "--trust-pickle",
                  folder / "rows.csv", "--out", folder / "o", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["items"]


def test_a_csv_header_of_years_is_read_as_the_fitted_columns(tmp_path):
    # Names that look like numbers made the header a data row (and the rows went by position).
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(100, 3)), columns=["2019", "2020", "2021"])
    clf = LogisticRegression().fit(frame, (frame["2019"] > 0).astype(int))
    items = _explained_rows(tmp_path, clf, "2021,2019,2020\n0,3,0\n0,-3,0\n")
    assert [(i["input"], i["predicted"]) for i in items] == [
        ("rows.csv:row 1", 1), ("rows.csv:row 2", 0),
    ]  # fmt: skip


def test_a_csv_with_other_columns_is_refused_naming_the_file(frame_model):
    folder, _ = frame_model
    (folder / "abx.csv").write_text("a,b,x\n1,2,3\n")
    result = _run("explain", "--model", folder / "abc.pkl", "--trust-pickle", folder / "abx.csv",
                  "--out", folder / "o")  # fmt: skip
    _fails(result, r"input: .*abx.csv' has the columns \['a', 'b', 'x'\], not the columns the")


# ---------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("inputs", "option", "pattern"),
    [
        ("x.npy", ["--resize", "4", "4"], r"^Error: resize: applies to image files"),
        ("t.csv", ["--mean", "100"], r"^Error: mean: --mean and --std normalise the channels"),
        ("t.csv", ["--std", "10"], r"^Error: std: --mean and --std normalise the channels"),
    ],
    ids=["resize on npy", "mean on csv", "std on csv"],
)
def test_an_image_option_for_other_inputs_is_refused(tmp_path, cnn, inputs, option, pattern):
    # They were ignored without a word: the user believed the inputs resized or normalised.
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    table = ["--model", f"{tmp_path / 'tab.py'}:make", "--random-weights"]
    (tmp_path / "tab.py").write_text(
        "from torch import nn\n\ndef make():\n    return nn.Linear(2, 2)\n"
    )
    model = cnn if inputs.endswith(".npy") else table
    result = _run("explain", *model, tmp_path / inputs, *option, "--out", tmp_path / "o")
    _fails(result, pattern)


@pytest.mark.parametrize(
    ("option", "pattern"),
    [
        (["--layer", "0", "--channels", "1.7", "--input-shape", "1,8,8"], r"^Error: channels: "),
        (["--target", "1.5", "--input-shape", "1,8,8"], r"^Error: target: expected comma-sep"),
        (["--target", "all", "--input-shape", "1,8.5,8"], r"^Error: input_shape: expected "),
    ],
    ids=["channels", "target", "input shape"],
)
def test_visualize_refuses_a_number_that_is_not_whole(tmp_path, cnn, option, pattern):
    # 1.7 was cut to 1 by int(float(...)): a filter or class the user did not ask for.
    result = _run("visualize", *cnn, *option, "--steps", "1", "--out", tmp_path / "v")
    _fails(result, pattern + r".*whole numbers, got '")


def test_a_directory_as_input_is_called_a_directory(tmp_path, cnn):
    (tmp_path / "photos").mkdir()
    result = _run("explain", *cnn, tmp_path / "photos", "--out", tmp_path / "o")
    _fails(result, r"^Error: input: .*photos' is a directory; give the files in it$")


def test_rows_for_a_cnn_are_refused_naming_the_file(tmp_path, cnn):
    np.save(tmp_path / "rows.npy", np.zeros((2, 64), np.float32))
    result = _run("explain", *cnn, tmp_path / "rows.npy", "--out", tmp_path / "o")
    _fails(result, r"^Error: input: .*rows.npy' holds items of shape \(64,\), which the model")


# ---------------------------------------------------------------------- models


def test_a_pickled_network_runs_as_a_torch_model(tmp_path):
    # It ran as a scikit-learn model: logits shown as probabilities, no gradient methods.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    with (tmp_path / "net.pkl").open("wb") as f:
        pickle.dump(net, f)
    np.save(tmp_path / "x.npy", np.ones((1, 1, 8, 8), np.float32))
    result = _run("explain", "--model", tmp_path / "net.pkl", "--trust-pickle", tmp_path / "x.npy",
                  "--method", "saliency", "--out", tmp_path / "o", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    e = xaikit.Explanation.load(tmp_path / "o" / "x.npy_0.saliency.npz")
    direct = xaikit.explain(net, np.ones((1, 8, 8), np.float32), method="saliency")
    np.testing.assert_allclose(e.values, direct.values, rtol=1e-6)


def test_a_network_saved_whole_says_how_to_load_it(tmp_path):
    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), tmp_path / "w.pt")
    np.save(tmp_path / "x.npy", np.ones((1, 1, 8, 8), np.float32))
    result = _run(
        "explain", "--model", tmp_path / "w.pt", tmp_path / "x.npy", "--out", tmp_path / "o"
    )
    _fails(result, r"^Error: model: .*w.pt' is a whole torch module saved with torch.save.*trust")
    result = _run("explain", "--model", tmp_path / "w.pt", "--trust-pickle", tmp_path / "x.npy",
                  "--method", "saliency", "--out", tmp_path / "o")  # fmt: skip
    assert result.exit_code == 0, result.output


def test_a_grey_image_is_read_as_rgb_for_an_rgb_torchscript_model(tmp_path):
    # TorchScript told no channels: a grey image came out with one, and the model failed.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.Linear(72, 3))
    torch.jit.script(net.eval()).save(str(tmp_path / "rgb.pt"))
    Image.fromarray(np.full((8, 8), 200, np.uint8), mode="L").save(tmp_path / "grey.png")
    result = _run("explain", "--model", tmp_path / "rgb.pt", tmp_path / "grey.png",
                  "--out", tmp_path / "o")  # fmt: skip
    assert result.exit_code == 0, result.output


@pytest.fixture
def onnx_cnn(tmp_path):
    from xaikit.loading import load_model

    (tmp_path / "cnn.py").write_text(CNN_PY)
    net = load_model(f"{tmp_path / 'cnn.py'}:make", random_weights=True).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, torch.zeros(1, 1, 8, 8), str(tmp_path / "cnn.onnx"), input_names=["x"],
            dynamic_axes={"x": {0: "n"}}, dynamo=False,
        )  # fmt: skip
    return tmp_path / "cnn.onnx"


def test_an_rgb_image_is_read_as_grey_for_a_one_channel_onnx_model(tmp_path, onnx_cnn):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "red.png")
    result = _run("explain", "--model", onnx_cnn, tmp_path / "red.png", "--out", tmp_path / "o",
                  "--json")  # fmt: skip
    assert result.exit_code == 0, result.output


def test_an_onnx_model_refuses_other_items_in_one_short_line(tmp_path, onnx_cnn):
    np.save(tmp_path / "rgb.npy", np.zeros((1, 3, 8, 8), np.float32))
    result = _run("explain", "--model", onnx_cnn, tmp_path / "rgb.npy", "--out", tmp_path / "o")
    line = _fails(result, r"^Error: x: .*takes inputs of shape \(n, 1, 8, 8\), not items of shape")
    assert "ONNXRuntimeError" not in line


# ---------------------------------------------------------------------- writing


def test_an_out_that_cannot_be_written_is_named(tmp_path, cnn, monkeypatch):
    # The error named the hidden staging folder (".o.1a2b3c4d.123-xyz.staging"), not --out.
    import tempfile

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", f"{dir}/.o.1a2b3c4d.123-abc.staging")

    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    result = _run("explain", *cnn, tmp_path / "x.npy", "--out", tmp_path / "o")
    line = _fails(result, r"^Error: out: cannot write .*o' \(Permission denied\)$")
    assert "staging" not in line


def test_an_out_under_a_file_says_the_file_is_in_the_way(tmp_path, cnn):
    # The error said "File exists" about a folder that did not exist.
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    (tmp_path / "notes.txt").write_text("a file")
    result = _run("explain", *cnn, tmp_path / "x.npy", "--out", tmp_path / "notes.txt" / "o")
    _fails(result, r"^Error: out: cannot write .*o' \('.*notes.txt' is a file, not a folder\)$")


def test_saving_an_explanation_where_it_cannot_be_written_names_the_path(tmp_path, monkeypatch):
    # A bare PermissionError named the hidden ".e.npz.<pid>-<hex>.tmp" (a read-only folder;
    # played here by refusing the temporary file, as root may write anywhere).
    import os

    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".tmp"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    e = xaikit.Explanation(
        values=np.ones((2, 3), np.float32), x=np.ones((2, 3), np.float32), target=0,
        prediction=np.array([1.0]), method="saliency",
    )  # fmt: skip
    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(
        PermissionError, match=r"^path: cannot write .*e.npz' \(Permission denied\)$"
    ):
        e.save(tmp_path / "e.npz")
    assert list(tmp_path.iterdir()) == []


def test_a_classifier_labelled_one_to_three_names_its_classes_by_its_labels(tmp_path):
    # Class numbers are positions in classes_: without names, "predicted 0" meant label 1
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(120, 3))
    clf = LogisticRegression().fit(rows, rows.argmax(axis=1) + 1)  # labels 1, 2, 3
    (item,) = _explained_rows(tmp_path, clf, "0,5,0\n")
    assert item["predicted"] == 1 and item["predicted_name"] == "2" == str(clf.predict(
        np.array([[0.0, 5.0, 0.0]]))[0])  # fmt: skip
