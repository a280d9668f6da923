"""The `xaikit` command: each command on a small user model, and one clear line on bad input.

The demo end to end (and its report in a browser) is in test_report_browser.py, which runs it
once for both.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import xaikit
from xaikit.cli import main


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert xaikit.__version__ in result.output


def test_installed_entry_point():
    exe = shutil.which("xaikit") or str(
        __import__("pathlib").Path(sys.executable).with_name("xaikit")
    )
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert xaikit.__version__ in out.stdout


def test_demo_refuses_a_file_as_out(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("keep me")
    result = CliRunner().invoke(main, ["demo", "--out", str(target), "--quiet"])
    assert result.exit_code != 0
    assert target.read_text() == "keep me"


NET_PY = """
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(3 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(self.flat(self.relu(self.conv(x))))

def make():
    return Tiny()
"""
EVIL = "<script>alert(1)</script>"
EVIL_FILE = "<img src=x onerror=alert(1)>.png"  # a file name cannot hold the "/" of </script>


@pytest.fixture
def user(tmp_path):
    """A user's folder: a model file, weights, inputs of each kind and class names."""
    (tmp_path / "net.py").write_text(NET_PY)
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) for k, v in _tiny(tmp_path).state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    Image.fromarray((x[0, 0] * 255).astype(np.uint8), mode="L").save(tmp_path / "digit.png")
    (tmp_path / "classes.txt").write_text(f"zero\none\n{EVIL}\n")
    return tmp_path


def _tiny(folder):
    """The user's network, built from their net.py as the command builds it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_net_for_test", folder / "net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make()


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _model(user):
    return ["--model", f"{user / 'net.py'}:make", "--weights", user / "w.pt"]


def test_explain_writes_the_api_explanation_of_every_item(user):
    out = user / "out"
    result = _run("explain", *_model(user), user / "x.npy", "--method", "saliency",
                  "--target", "2", "--out", out, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert [i["input"] for i in summary["items"]] == ["x.npy[0]", "x.npy[1]"]
    assert all(i["target"] == 2 for i in summary["items"])
    e = xaikit.Explanation.load(out / "x.npy_0.saliency.npz")
    x = np.load(user / "x.npy")
    np.testing.assert_array_equal(e.x, x[0])
    net = _tiny(user)
    net.load_state_dict(torch.load(user / "w.pt", weights_only=True))
    direct = xaikit.explain(net, x[0], method="saliency", target=2)
    np.testing.assert_allclose(e.values, direct.values, rtol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == [
        "index.html", "summary.json", "x.npy_0.saliency.npz", "x.npy_1.saliency.npz",
    ]  # fmt: skip


def test_report_with_class_names_escapes_them(user):
    out = user / "report"
    evil_png = user / EVIL_FILE
    evil_png.write_bytes((user / "digit.png").read_bytes())
    result = _run(
        "report", *_model(user), evil_png, "--classes", user / "classes.txt", "--methods",
        "saliency,occlusion", "--target", "2", "--out", out, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    item = summary["items"][0]
    assert item["input"] == EVIL_FILE and set(item["methods"]) == {"saliency", "occlusion"}
    assert item["methods"]["saliency"]["sanity_passed"] in (True, False)
    # --target: the summary and the page name the explained class (they named only the
    # predicted one beside scores of another)
    assert item["target"] == 2 and item["target_name"] == summary["classes"][2]
    html = (out / "index.html").read_text(encoding="utf-8")
    assert (item["predicted"] == 2) != ("Every method explains class 2" in html)
    assert "<script" not in html and "<img src=x" not in html
    assert "2 (&lt;script&gt;alert(1)&lt;/script&gt;)" in html  # the class name, as text
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in html  # the file name, as text


def test_compare_ranks_methods(user):
    out = user / "cmp"
    result = _run("compare", *_model(user), user / "x.npy", "--methods",
                  "saliency,integrated_gradients,occlusion", "--out", out, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    item = json.loads(result.output)["items"][0]
    assert [r["method"] for r in item["table"]] == ["saliency", "integrated_gradients", "occlusion"]
    deletion = {r["method"]: r["deletion"] for r in item["table"]}
    assert item["rank"]["deletion"] == sorted(deletion, key=deletion.get)
    assert all(0.0 <= v <= 1.0 for v in deletion.values())


def test_visualize_draws_one_image_per_filter_or_class(user):
    out = user / "vis"
    result = _run("visualize", *_model(user), "--layer", "conv", "--steps", "4",
                  "--input-shape", "1,8,8", "--out", out, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["objectives"] == [f"channel('conv', {k})" for k in range(3)]
    assert np.load(out / "images.npy").shape == (3, 1, 8, 8)
    result = _run("visualize", *_model(user), "--target", "all", "--raw", "--steps", "4",
                  "--input-shape", "1,8,8", "--out", out, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.load(out / "images.npy").shape == (3, 1, 8, 8)  # replaced, folder reused


def test_probe_reads_brightness_linearly_from_the_conv_layer(user):
    rng = np.random.default_rng(1)
    y = np.arange(80) % 2
    x = (rng.random((80, 1, 8, 8)) * 0.5 + 0.5 * y[:, None, None, None]).astype(np.float32)
    np.save(user / "many.npy", x)
    (user / "y.txt").write_text("\n".join(map(str, y)))  # label 1: brighter images
    result = _run("probe", *_model(user), user / "many.npy", "--labels", user / "y.txt",
                  "--layers", "conv,fc", "--out", user / "probe", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert set(summary["accuracy"]) == {"conv", "fc"}
    assert summary["accuracy"]["conv"] == 1.0  # brightness is linear in the conv features


def test_probe_has_no_classes_option_its_labels_are_the_user_s(user):
    (user / "names.txt").write_text("a\nb\nc\n")
    names = user / "names.txt"
    result = _run("probe", *_model(user), user / "x.npy", "--labels", user / "y.txt",
                  "--layers", "conv", "--classes", names, "--out", user / "p")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "No such option '--classes'" in result.output
    assert not (user / "p").exists()


def test_surrogate_of_a_pickled_stump_recovers_its_rule(user):
    from sklearn.tree import DecisionTreeClassifier

    rows = np.random.default_rng(2).random((80, 2))
    clf = DecisionTreeClassifier(max_depth=1).fit(rows, rows[:, 1] > 0.3)
    with (user / "clf.pkl").open("wb") as f:
        pickle.dump(clf, f)
    np.savetxt(user / "t.csv", rows, delimiter=",", header="size,weight", comments="")
    result = _run("surrogate", "--model", user / "clf.pkl", "--trust-pickle", user / "t.csv",
                  "--max-depth", "1", "--out", user / "sur", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["fidelity"] == 1.0 and summary["rules"].startswith("|--- weight <= 0.3")
    assert (user / "sur" / "rules.txt").read_text() == summary["rules"] + "\n"


def test_csv_columns_reach_a_dataframe_model_by_header(user):
    # The columns went to the model by position: a CSV with the header in another order was
    # explained (and predicted) silently wrong; the API refuses such a frame.
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=100), "b": rng.normal(size=100)})
    with (user / "ab.pkl").open("wb") as f:
        pickle.dump(LogisticRegression().fit(frame, (frame.a > 0).astype(int)), f)
    pd.DataFrame({"b": [0.0, 0.0], "a": [3.0, -3.0]}).to_csv(user / "ba.csv", index=False)
    result = _run("explain", "--model", user / "ab.pkl", "--trust-pickle", user / "ba.csv",
                  "--method", "occlusion", "--out", user / "o", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [item["predicted"] for item in json.loads(result.output)["items"]] == [1, 0]
    pd.DataFrame({"b": [0.0], "c": [3.0]}).to_csv(user / "bc.csv", index=False)
    result = _run("explain", "--model", user / "ab.pkl", "--trust-pickle", user / "bc.csv",
                  "--out", user / "o2")  # fmt: skip
    _assert_one_line_failure(result, r"input: .*bc.csv' has the columns \['b', 'c'\], not the col")
    assert not (user / "o2").exists()


def test_onnx_model_runs_gradient_free_methods_only(user):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _tiny(user), torch.zeros(1, 1, 8, 8), str(user / "m.onnx"), input_names=["x"],
            dynamic_axes={"x": {0: "n"}}, dynamo=False,
        )  # fmt: skip
    result = _run("explain", "--model", user / "m.onnx", user / "x.npy", "--method", "occlusion",
                  "--out", user / "o", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    result = _run("explain", "--model", user / "m.onnx", user / "x.npy", "--method", "saliency",
                  "--out", user / "o2")  # fmt: skip
    assert result.exit_code == 1
    assert "method: 'saliency' needs gradients, which a onnx model" in result.output
    assert not (user / "o2").exists()


def _assert_one_line_failure(result, pattern: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("case", ["not_a_model", "weights_do_not_fit", "image_does_not_decode",
                                  "pickle_without_trust"])  # fmt: skip
def test_bad_input_fails_in_one_line_leaving_the_out_folder(user, case):
    out = user / "out"
    out.mkdir()
    (out / "index.html").write_text("previous report")
    model, inputs = _model(user), [user / "x.npy"]
    if case == "not_a_model":
        (user / "model.pt").write_text("just some notes")
        model, pattern = ["--model", user / "model.pt"], r"model: .*model.pt' is not a model file"
    elif case == "weights_do_not_fit":
        torch.save(torch.nn.Linear(2, 2).state_dict(), user / "other.pt")
        model = ["--model", f"{user / 'net.py'}:make", "--weights", user / "other.pt"]
        pattern = r"weights: .*other.pt' does not fit the model"
    elif case == "image_does_not_decode":
        (user / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        inputs, pattern = [user / "broken.png"], r"input: .*broken.png' is not a readable image"
    else:
        with (user / "m.pkl").open("wb") as f:
            pickle.dump({"not": "trusted"}, f)
        model, pattern = ["--model", user / "m.pkl"], r"model: .*m.pkl' is a pickle.*--trust-pickle"
    result = _run("report", *model, *inputs, "--out", out)
    _assert_one_line_failure(result, pattern)
    assert sorted(p.name for p in out.iterdir()) == ["index.html"]
    assert (out / "index.html").read_text() == "previous report"
    assert [p.name for p in user.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_failure_in_the_middle_leaves_no_folder(user):
    # The model runs, then fails on the second method: nothing may appear.
    out = user / "fresh"
    result = _run("explain", *_model(user), user / "x.npy", "--method", "occlusion",
                  "--param", "window=[99,99]", "--out", out)  # fmt: skip
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "pattern"),
    [
        (["--method", "magic"], r"method: unknown method 'magic'"),
        (["--param", "steps"], r"param: expected key=value, got 'steps'"),
    ],
    ids=["unknown method", "param without value"],
)
def test_a_bad_explain_option_fails_in_one_line(user, option, pattern):
    result = _run("explain", *_model(user), user / "x.npy", *option, "--out", user / "o")
    _assert_one_line_failure(result, pattern)


def test_methods_lists_every_method():
    result = _run("methods")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.strip().splitlines()]
    assert names == sorted(xaikit.methods())


def test_audit_finds_a_planted_corner(user):
    # Class 1 items carry a bright corner and a tiny linear model that reads only that corner.
    (user / "corner.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Corner(nn.Module):\n"
        "    def forward(self, x):\n"
        "        s = x[:, 0, :2, :2].sum(dim=(1, 2))\n"
        "        return torch.stack([-s + 1.0, s - 1.0], dim=1)\n\n"
        "def make():\n    return Corner()\n"
    )
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    x = (rng.random((40, 1, 8, 8)) * 0.2).astype(np.float32)
    x[y == 1, 0, :2, :2] = 1.0
    np.save(user / "set.npy", x)
    np.savetxt(user / "set-labels.txt", y, fmt="%d")
    out = user / "audit"
    result = _run("audit", "--model", f"{user / 'corner.py'}:make", user / "set.npy",
                  "--labels", user / "set-labels.txt", "--method", "input_x_gradient",
                  "--out", out, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert sorted(p.name for p in out.iterdir()) == ["audit", "index.html", "summary.json"]
    assert (out / "audit" / "audit.json").is_file()
    assert summary["method"] == "input_x_gradient"
    corner = [f for f in summary["findings"] if f["target"] == 1]
    assert corner and corner[0]["region"][0] == 0 and corner[0]["region"][1] == 0
    assert corner[0]["sameness"] == 1.0  # the same bright corner in every item
    assert summary["distinctive_evidence"] == []  # listed apart, here empty


# ---------------------------------------------------------------------- tables, names, files

TABLE_PY = """
import torch
from torch import nn

def make():
    net = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[2.0, 1.0, 0.0], [-2.0, -1.0, 0.5]]))
        net[0].bias.zero_()
    return net
"""


@pytest.fixture
def table(tmp_path):
    """A tabular model and a CSV whose header holds mathtext that matplotlib cannot parse."""
    (tmp_path / "tab.py").write_text(TABLE_PY)
    rows = np.random.default_rng(0).random((4, 3)) - 0.5
    header = r"age,$\undefinedmacro$,cost in $"
    np.savetxt(tmp_path / "t.csv", rows, delimiter=",", header=header, comments="")
    return tmp_path, rows


# Report and compare failed on every CSV ("baseline: 'blur' is defined for images"), and the
# header's $...$ crashed the plots; the default baseline of a table is the mean of its rows.


def test_report_on_csv_rows_replaces_features_by_the_mean_row(table):
    folder, _ = table
    model = ["--model", f"{folder / 'tab.py'}:make"]
    result = _run("report", *model, folder / "t.csv", "--methods", "saliency,occlusion",
                  "--no-sanity", "--out", folder / "r", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["baseline"] == "the mean of the 4 input rows"
    assert len(summary["items"]) == 4
    assert all(0 <= v["deletion"] <= 1 for i in summary["items"] for v in i["methods"].values())
    html = (folder / "r" / "index.html").read_text(encoding="utf-8")
    assert "replaced by the mean of the 4 input rows" in html


def test_compare_on_csv_rows_uses_the_mean_row_as_baseline(table):
    folder, _ = table
    model = ["--model", f"{folder / 'tab.py'}:make"]
    result = _run("compare", *model, folder / "t.csv", "--methods", "saliency,occlusion",
                  "--out", folder / "c", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["baseline"] == "the mean of the 4 input rows"


def test_compare_baseline_option_scores_as_the_library_does(table):
    folder, rows = table
    model = ["--model", f"{folder / 'tab.py'}:make"]
    result = _run("compare", *model, folder / "t.csv", "--methods", "saliency",
                  "--baseline", "0.5", "--out", folder / "c", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    item = json.loads(result.output)["items"][0]
    net = _tiny_table(folder)
    e = xaikit.explain(net, rows[0].astype(np.float32), method="saliency")
    direct = xaikit.evaluate(net, rows[0].astype(np.float32), e, baseline=0.5)
    assert item["table"][0]["deletion"] == pytest.approx(direct["deletion"], rel=1e-5)


def test_report_refuses_an_unknown_baseline_in_one_line(table):
    folder, _ = table
    model = ["--model", f"{folder / 'tab.py'}:make"]
    result = _run("report", *model, folder / "t.csv", "--baseline", "blurry", "--out", folder / "x")
    _assert_one_line_failure(result, r"^Error: baseline: expected a number, 'mean', 'blur'")


def _tiny_table(folder):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_tab_for_test", folder / "tab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make()


def test_explain_reads_a_csv_with_dollars_in_the_header(table):
    folder, _ = table
    model = ["--model", f"{folder / 'tab.py'}:make"]
    result = _run("explain", *model, folder / "t.csv", "--method", "occlusion",
                  "--out", folder / "e")  # fmt: skip
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("kind", ["tree", "linear"])
def test_surrogate_reads_a_csv_with_dollars_in_the_header(table, kind):
    folder, _ = table
    model = ["--model", f"{folder / 'tab.py'}:make"]
    rows = np.random.default_rng(1).random((40, 3)) - 0.5
    header = (folder / "t.csv").read_text().splitlines()[0]
    np.savetxt(folder / "many.csv", rows, delimiter=",", header=header, comments="")
    result = _run("surrogate", *model, folder / "many.csv", "--kind", kind, "--max-depth",
                  "2", "--out", folder / f"s-{kind}")  # fmt: skip
    assert result.exit_code == 0, result.output


def test_a_factory_that_exits_is_one_clear_line(tmp_path):
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(3)\n")
    np.save(tmp_path / "x.npy", np.zeros((1, 3), np.float32))
    result = _run("explain", "--model", f"{tmp_path / 'quits.py'}:make", tmp_path / "x.npy",
                  "--out", tmp_path / "o")  # fmt: skip
    _assert_one_line_failure(
        result, r"^Error: model: importing .*quits\.py' failed: it called sys\.exit\(3\)"
    )


def test_an_input_with_a_very_long_name(user):
    # 245 characters: the output name derived from it passed the file system's 255 bytes.
    long = user / ("d" * 241 + ".png")
    long.write_bytes((user / "digit.png").read_bytes())
    out = user / "long"
    result = _run("explain", *_model(user), long, "--method", "saliency", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    (item,) = json.loads(result.output)["items"]
    assert item["input"] == long.name and len(item["file"]) < 120
    assert xaikit.Explanation.load(out / item["file"]).method == "saliency"


def test_image_bomb_through_the_command(user):
    from test_loading import _png_bomb

    bomb = _png_bomb(user / "bomb.png", 12000, 12000)
    result = _run("explain", *_model(user), bomb, "--out", user / "o")
    _assert_one_line_failure(
        result, r"^Error: input: .*bomb\.png' is 12000x12000 pixels.*XAIKIT_MAX_IMAGE_PIXELS"
    )


# ---------------------------------------------------------------------- kills

KILL_HARNESS = r'''
"""Run `xaikit audit` in forked children, each SIGKILLed before its k-th file operation."""
import hashlib, json, os, shutil, signal, sys, tempfile
from pathlib import Path

cfg = json.loads(Path(sys.argv[1]).read_text())
tempfile.tempdir = cfg["tmp"]
import matplotlib.font_manager  # noqa: F401  its cache is ready before any fork
import torch
from xaikit.audit import Audit
from xaikit.cli import main
from xaikit.report import output

out, old, work, tmp, hold = (Path(cfg[k]) for k in ("out", "old", "work", "tmp", "hold"))
MOVES = ((os, "replace"), (os, "rename"), (os, "link"), (shutil, "rmtree"), (output, "_exchange"))


def child(kill_at):
    pid = os.fork()
    if pid == 0:
        try:
            torch.set_num_threads(1)
            calls = [0]
            for owner, name in MOVES:
                real = getattr(owner, name, None)
                if real is None:  # (an xaikit without the one-step swap)
                    continue
                def counted(*a, _real=real, **k):
                    calls[0] += 1
                    if calls[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return _real(*a, **k)
                setattr(owner, name, counted)
            main(cfg["cli"], standalone_mode=False)
            Path(cfg["count"]).write_text(str(calls[0]))
            os._exit(0)
        except BaseException:
            import traceback
            traceback.print_exc()
            os._exit(1)
    return os.waitpid(pid, 0)[1]


def state(folder):
    if not folder.is_dir():
        return {"files": None}
    files = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.rglob("*")) if p.is_file()}
    try:
        a = Audit.load(folder / "audit")
        loaded = [a.info["method"], hashlib.sha256(a.maps.tobytes()).hexdigest()]
    except Exception as err:
        loaded = repr(err)
    return {"files": files, "loaded": loaded}


def leftovers():
    found = [p for p in out.parent.iterdir() if p != out]
    found += [p for p in work.iterdir() if p.name.startswith(".")] if work.is_dir() else []
    return found + list(tmp.iterdir())


def reset():
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(old, out)
    shutil.rmtree(work, ignore_errors=True)


report = {"old": state(old)}
reset()
assert child(0) == 0
report["new"], report["moments"] = state(out), int(Path(cfg["count"]).read_text())
report["kills"] = []
for k in range(1, report["moments"] + 1):
    reset()
    status = child(k)
    left = leftovers()
    report["kills"].append({"status": status, "state": state(out), "left": [p.name for p in left]})
    for p in left:  # kept aside, all put back before the last run
        where = "work" if p.parent == work else "tmp" if p.parent == tmp else "parent"
        (hold / where).mkdir(parents=True, exist_ok=True)
        shutil.move(p, hold / where / p.name)
reset()
work.mkdir()
for where, target in (("work", work), ("tmp", tmp), ("parent", out.parent)):
    for p in (hold / where).iterdir() if (hold / where).is_dir() else []:
        shutil.move(p, target / p.name)
report["before_rerun"] = [p.name for p in leftovers()]
assert child(0) == 0
report["rerun"] = {"state": state(out), "left": [p.name for p in leftovers()]}
Path(cfg["report"]).write_text(json.dumps(report))
'''


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the harness forks")
def test_a_killed_audit_leaves_the_old_or_the_new_output_whole(tmp_path):
    # SIGKILL before each file operation of `xaikit audit` into an existing --out: the folder
    # is always the old one or the new one, whole, and Audit.load reads one run; a rerun
    # removes whatever the kills left (staging folders, .shard-*.tmp, temporary folders).
    import signal

    (tmp_path / "corner.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Corner(nn.Module):\n"
        "    def forward(self, x):\n"
        "        s = x[:, 0, :2, :2].sum(dim=(1, 2))\n"
        "        return torch.stack([-s + 1.0, s - 1.0], dim=1)\n\n"
        "def make():\n    return Corner()\n"
    )
    rng = np.random.default_rng(0)
    x = (rng.random((8, 1, 8, 8)) * 0.2).astype(np.float32)
    x[1::2, 0, :2, :2] = 1.0
    np.save(tmp_path / "set.npy", x)
    outs, work, scratch = tmp_path / "outs", tmp_path / "work", tmp_path / "tmp"
    scratch.mkdir()
    audit = ["audit", "--model", f"{tmp_path / 'corner.py'}:make", str(tmp_path / "set.npy"),
             "--work", str(work), "--out", str(outs / "o"), "-q"]  # fmt: skip
    result = _run(*audit, "--method", "saliency")  # the old output
    assert result.exit_code == 0, result.output
    shutil.copytree(outs / "o", tmp_path / "old")
    shutil.rmtree(work)
    cfg = {
        "cli": [*audit, "--method", "input_x_gradient"], "out": str(outs / "o"),
        "old": str(tmp_path / "old"), "work": str(work), "tmp": str(scratch),
        "hold": str(tmp_path / "hold"), "count": str(tmp_path / "count"),
        "report": str(tmp_path / "report.json"),
    }  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "harness.py").write_text(KILL_HARNESS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, str(tmp_path / "harness.py"), str(tmp_path / "cfg.json")],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    old, new = report["old"], report["new"]
    assert old["loaded"][0] == "saliency" and new["loaded"][0] == "input_x_gradient"
    assert sorted(new["files"]) == ["audit/audit.json", "audit/audit.npz", "index.html",
                                    "summary.json"]  # fmt: skip
    assert report["moments"] >= 8
    seen = []
    for kill in report["kills"]:
        assert os.WIFSIGNALED(kill["status"]) and os.WTERMSIG(kill["status"]) == signal.SIGKILL
        state = kill["state"]
        if state["files"] == old["files"]:
            seen.append("old")
            assert state["loaded"] == old["loaded"]
        else:  # the new one, whole: the same pages, and the audit of the new run
            seen.append("new")
            assert sorted(state["files"]) == sorted(new["files"]), state
            for name in ("index.html", "summary.json"):
                assert state["files"][name] == new["files"][name]
            assert state["loaded"] == new["loaded"]
    assert "old" in seen and "new" in seen and seen == sorted(seen, key=["old", "new"].index)
    assert report["before_rerun"]  # the kills left staging folders and temporary files...
    assert any(name.startswith(".shard-") for name in report["before_rerun"])
    assert report["rerun"]["left"] == []  # ...which the next run removed
    assert report["rerun"]["state"]["loaded"] == new["loaded"]


# ---------------------------------------------------------------------- issue 21: small things


def test_package_ships_a_py_typed_marker():
    from importlib.resources import files

    assert files("xaikit").joinpath("py.typed").is_file()  # PEP 561: the hints are for users


def test_methods_json_describes_every_method():
    result = _run("methods", "--json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert list(listing) == sorted(xaikit.methods())
    assert [name for name, spec in listing.items() if spec["default"]] == ["occlusion"]
    assert listing["integrated_gradients"]["params"]["steps"] == 50
    assert listing["saliency"]["needs_gradients"] is True
    assert listing["occlusion"]["needs_gradients"] is False
    # Rollout needs a PyTorch model but no gradients: the listing says what it needs.
    assert [listing[m]["needs"] for m in ("saliency", "occlusion", "attention_rollout")] == [
        "gradients",
        "any model",
        "attention weights",
    ]
    text = _run("methods").output
    assert any(line.startswith("attention_rollout") and "[attention weights]" in line
               for line in text.splitlines())  # fmt: skip


def _option_default(command: str, name: str):
    return next(p for p in main.commands[command].params if p.name == name).default


def test_commands_use_the_api_defaults(user):
    import inspect

    from xaikit.featureviz import visualize

    method = inspect.signature(xaikit.explain).parameters["method"].default
    assert _option_default("explain", "method") == method == "occlusion"
    steps = inspect.signature(visualize).parameters["steps"].default
    assert _option_default("visualize", "steps") == steps == 256
    result = _run("compare", *_model(user), user / "x.npy", "--out", user / "cmp", "--json")
    assert result.exit_code == 0, result.output
    table = json.loads(result.output)["items"][0]["table"]
    net = _tiny(user)
    net.load_state_dict(torch.load(user / "w.pt", weights_only=True))
    api = xaikit.compare(net, np.load(user / "x.npy")[0])  # no methods named: the same set
    assert [r["method"] for r in api.table] == [r["method"] for r in table]
    assert len(table) == 10  # every method applies to an image and a PyTorch model
    for ours, theirs in zip(api.table, table, strict=True):  # ... with the same parameters
        assert ours["deletion"] == pytest.approx(theirs["deletion"], abs=1e-6), ours["method"]


def test_explain_without_a_method_runs_the_default(user):
    result = _run("explain", *_model(user), user / "x.npy", "--out", user / "o", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["method"] == "occlusion"
    assert (user / "o" / "x.npy_0.occlusion.npz").is_file()


def test_summary_uses_the_class_names(user):
    names = ["zero", "one", EVIL]
    result = _run("explain", *_model(user), user / "x.npy", "--classes", user / "classes.txt",
                  "--method", "saliency", "--target", "2", "--out", user / "e",
                  "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["classes"] == names
    for item in summary["items"]:
        assert item["target_name"] == EVIL and item["predicted_name"] == names[item["predicted"]]
    assert json.loads((user / "e" / "summary.json").read_text()) == summary
    result = _run("compare", *_model(user), user / "x.npy", "--classes", user / "classes.txt",
                  "--methods", "saliency", "--out", user / "c", "--json")  # fmt: skip
    item = json.loads(result.output)["items"][0]
    assert item["target_name"] == names[item["target"]]
    result = _run("explain", *_model(user), user / "x.npy", "--method", "saliency", "--out",
                  user / "n", "--json")  # fmt: skip
    summary = json.loads(result.output)
    assert summary["classes"] is None and summary["items"][0]["target_name"] is None


def test_surrogate_offers_no_image_options(user):
    help_text = _run("surrogate", "--help").output
    assert "--classes" in help_text
    assert not any(option in help_text for option in ("--resize", "--mean", "--std"))
    rows = np.random.default_rng(0).random((30, 2))
    np.savetxt(user / "t.csv", rows, delimiter=",", header="a,b", comments="")
    result = _run("surrogate", "--model", f"{user / 'net.py'}:make", user / "t.csv",
                  "--resize", "2", "2", "--out", user / "s")  # fmt: skip
    assert result.exit_code == 2 and "No such option '--resize'" in result.output


def test_ctrl_c_while_writing_exits_130_leaving_nothing(user, monkeypatch):
    from xaikit.report import Page

    def interrupted(self, path):
        raise KeyboardInterrupt  # Ctrl-C while the staged files are being written

    monkeypatch.setattr(Page, "save", interrupted)
    out = user / "out"
    result = _run("explain", *_model(user), user / "x.npy", "--method", "saliency",
                  "--out", out)  # fmt: skip
    assert result.exit_code == 130
    assert result.output.strip() == f"Interrupted: {out} is left as it was."
    assert not out.exists()
    assert [p.name for p in user.iterdir() if p.name.startswith(".")] == []  # no staging left


SLOW_PY = """
import pathlib
import time

from torch import nn


class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        pathlib.Path(__file__).with_name("started").touch()
        time.sleep(1.0)
        return self.fc(x)


def make():
    return Slow()
"""


def test_ctrl_c_in_a_real_process_exits_130_leaving_nothing(tmp_path):
    import os
    import signal
    import time

    (tmp_path / "slow.py").write_text(SLOW_PY)
    np.save(tmp_path / "rows.npy", np.random.default_rng(0).random((3, 4)))
    out = tmp_path / "out"
    model = f"{tmp_path / 'slow.py'}:make"
    command = [sys.executable, "-m", "xaikit.cli", "explain", "--model", model, "--random-weights",
               str(tmp_path / "rows.npy"), "--out", str(out)]  # fmt: skip

    # A shell's background job (CI run with `&`) starts with SIGINT ignored, and Python keeps
    # that; the child gets Ctrl-C's default disposition, as in a terminal.
    def like_a_terminal() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=like_a_terminal)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the model never ran"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGINT)  # what Ctrl-C sends
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == [f"Interrupted: {out} is left as it was."]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.npy", "slow.py", "started"]
