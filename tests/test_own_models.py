"""Bring your own model: Hugging Face outputs and forward arguments, TorchScript, DataFrames,
regressors, other libraries' attributions, and the command's --device and --random-weights.

One test per behaviour a new user met (issue 18); each failed before it was built.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import xaikit as xk


@pytest.fixture(scope="module")
def bert():
    import transformers

    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=2, initializer_range=0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def token_batch():
    ids = torch.randint(5, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 6:] = 0
    return ids, mask


# ---------------------------------------------------------------------- Hugging Face


def test_an_output_object_gives_its_logits(bert, token_batch):
    ids, _ = token_batch
    scores = xk.Model(bert).scores(ids)
    expected = bert(ids).logits.detach().numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_forward_kwargs_follow_the_batch(bert, token_batch):
    ids, mask = token_batch
    scores = xk.Model(bert, forward_kwargs={"attention_mask": mask}, batch_size=2).scores(ids)
    expected = bert(ids, attention_mask=mask).logits.detach().numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_a_perturbed_item_keeps_its_own_attention_mask(bert, token_batch):
    ids, mask = token_batch
    together = xk.explain(
        xk.Model(bert, forward_kwargs={"attention_mask": mask}), ids, batch=True, method="occlusion"
    )
    alone = xk.explain(
        xk.Model(bert, forward_kwargs={"attention_mask": mask[1:2]}), ids[1], method="occlusion"
    )
    np.testing.assert_allclose(together.values[1], alone.values, rtol=1e-5, atol=1e-6)
    assert np.all(together.values[1, 4:] == 0)  # masked positions change nothing


def test_token_ids_are_explained_at_the_embeddings_without_a_layer(bert, token_batch):
    ids, mask = token_batch
    model = xk.Model(bert, forward_kwargs={"attention_mask": mask[:1]})
    e = xk.explain(model, ids[0], method="integrated_gradients", steps=128)
    assert e.values.shape == (7,)
    assert e.params["layer"] == "bert.embeddings.word_embeddings"
    assert abs(e.info["completeness_gap"]) < 1e-2 * abs(e.prediction).max()


def test_a_hf_sequence_classifier_with_its_tokenizer_is_a_text_model(bert):
    from xaikit import text

    words = [f"w{i}" for i in range(40)]
    model = text.TextModel.from_hf(bert, text.Tokenizer.from_words(words))
    e = text.explain(model, "w1 w2 w3 w4", method="kernel_shap", samples=64, seed=0)
    assert e.tokens == ["w1", "w2", "w3", "w4"]
    ids = torch.as_tensor(model.encode("w1 w2 w3 w4")).reshape(1, -1)
    with_special = torch.cat([torch.tensor([[model.tokenizer.cls_id]]), ids,
                              torch.tensor([[model.tokenizer.sep_id]])], 1)  # fmt: skip
    np.testing.assert_allclose(
        e.prediction, bert(with_special).logits[0].detach().numpy(), rtol=1e-4, atol=1e-5
    )


def test_guided_backprop_on_a_vit_is_refused_naming_it():
    import transformers

    config = transformers.ViTConfig(
        image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, num_labels=2,
    )  # fmt: skip
    vit = transformers.ViTForImageClassification(config).eval()
    with pytest.raises(ValueError, match="ViTForImageClassification has none"):
        xk.explain(vit, np.zeros((3, 16, 16), np.float32), method="guided_backprop")


# ---------------------------------------------------------------------- TorchScript


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)
    ).eval()
    folder = tmp_path_factory.mktemp("scripted")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(net).save(str(folder / "net.pt"))
    np.save(folder / "x.npy", np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32))
    return folder


def test_torchscript_hook_methods_are_refused_by_name(scripted):
    with pytest.raises(TypeError, match=r"'gradcam' needs forward hooks .* TorchScript"):
        xk.explain(str(scripted / "net.pt"), np.zeros((1, 8, 8), np.float32), method="gradcam")


def test_torchscript_refusals_suggest_only_what_it_can_run(scripted):
    with pytest.raises(TypeError, match=r"use one of (\[.*\])") as caught:
        xk.explain(str(scripted / "net.pt"), np.zeros((1, 8, 8), np.float32), method="gradcam")
    suggested = caught.value.args[0].split("use one of ")[1]
    assert "'saliency'" in suggested and "'occlusion'" in suggested
    # rollout asks the forward for attention weights, which a TorchScript module does not give
    assert "attention_rollout" not in suggested and "gradcam" not in suggested


def test_torchscript_runs_the_hook_free_methods(scripted):
    e = xk.explain(str(scripted / "net.pt"), np.ones((1, 8, 8), np.float32), method="saliency")
    assert e.values.shape == (1, 8, 8) and np.abs(e.values).sum() > 0


def _xaikit(*args):
    return subprocess.run(
        [sys.executable, "-m", "xaikit.cli", *map(str, args)], capture_output=True, text=True
    )


def test_report_on_torchscript_skips_what_cannot_run_with_a_note(scripted):
    out = scripted / "report"
    result = _xaikit("report", "--model", scripted / "net.pt", scripted / "x.npy", "--out", out,
                     "--no-sanity", "-q")  # fmt: skip
    assert result.returncode == 0, result.stderr
    page = (out / "index.html").read_text()
    assert "Not run on this torchscript model" in page and "gradcam" in page


# ---------------------------------------------------------------------- tables


@pytest.fixture(scope="module")
def frame():
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 120
    return pd.DataFrame(
        {
            "age": rng.integers(20, 70, n).astype(float),
            "income": rng.normal(50, 10, n),
            "city": rng.choice(["Lyon", "Oslo", "Pune"], n),
        }
    )


@pytest.fixture(scope="module")
def pipeline(frame):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    labels = (frame["income"] + 10 * (frame["city"] == "Oslo") > 52).astype(int)
    prep = ColumnTransformer(
        [("num", StandardScaler(), ["age", "income"]), ("cat", OneHotEncoder(), ["city"])]
    )
    return make_pipeline(prep, LogisticRegression()).fit(frame, labels)


def test_dataframe_columns_name_the_features(pipeline, frame):
    e = xk.explain(pipeline, frame.iloc[[0]], method="kernel_shap", baseline=frame.iloc[:20],
                   samples=100, seed=0)  # fmt: skip
    assert e.feature_names == ["age", "income", "city"]


def test_a_pipeline_fitted_on_a_dataframe_gets_a_dataframe(pipeline, frame):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn warns when it gets an array instead
        e = xk.explain(pipeline, frame.iloc[[3]], method="occlusion", baseline=frame.iloc[[0]])
    assert np.isfinite(e.values).all()


def test_a_categorical_column_moves_between_its_categories(pipeline, frame):
    row = frame.iloc[[0]]
    e = xk.explain(pipeline, row, method="kernel_shap", baseline=frame.iloc[:30],
                   samples=200, seed=0)  # fmt: skip
    f_row = pipeline.predict_proba(row)[0, e.target]
    f_background = pipeline.predict_proba(frame.iloc[:30])[:, e.target].mean()
    # efficiency over the background: the city's share is part of an exact total
    assert e.values.sum() == pytest.approx(f_row - f_background, abs=1e-6)


@pytest.mark.parametrize("method", ["kernel_shap", "occlusion", "lime"])
def test_a_categorical_column_needs_background_rows(pipeline, frame, method):
    # Without them, "removed" meant the category that sorts first among the rows at hand: a
    # row alone got exactly 0 for its city, the same row in a batch another value.
    with pytest.raises(ValueError, match=r"baseline: column 'city' is categorical"):
        xk.explain(pipeline, frame.iloc[[0]], method=method)
    with pytest.raises(ValueError, match=r"baseline: column 'city' is categorical"):
        xk.explain(pipeline, frame.iloc[0], method=method, baseline=0.0)
    alone = xk.explain(pipeline, frame.iloc[[5]], method=method, baseline=frame.iloc[:30])
    pair = xk.explain(
        pipeline, frame.iloc[[5, 0]], method=method, baseline=frame.iloc[:30], batch=True,
        target=[alone.target, alone.target],
    )  # fmt: skip
    np.testing.assert_allclose(pair.values[0], alone.values, rtol=1e-6, atol=1e-9)


def test_a_regressor_predict_is_one_score_named_prediction():
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    reg = LinearRegression().fit(x, x @ np.array([1.0, -2.0, 0.5]))
    e = xk.explain(reg, x[0], method="kernel_shap", baseline=0.0, samples=64, seed=0)
    assert e.prediction.shape == (1,) and e.info["explained"] == "prediction"
    np.testing.assert_allclose(e.values, reg.coef_ * x[0], atol=1e-8)


# ---------------------------------------------------------------------- interop


@pytest.fixture(scope="module")
def linear_images():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return net, x


def test_evaluate_takes_captum_tensors(linear_images):
    from captum.attr import IntegratedGradients

    net, x = linear_images
    attributions = IntegratedGradients(net).attribute(x, target=1)
    ours = xk.explain(net, x, batch=True, method="integrated_gradients", target=1)
    from_tensor = xk.evaluate(net, x, attributions, batch=True, target=1, metrics="deletion")
    from_ours = xk.evaluate(net, None, ours, metrics="deletion")
    np.testing.assert_allclose(from_tensor["deletion"], from_ours["deletion"], rtol=1e-4)


def test_evaluate_takes_one_target_per_item(linear_images):
    # A per-item target used to reach each item's metric whole: TypeError.
    from captum.attr import Saliency

    net, x = linear_images
    targets = np.array([1, 3])
    attributions = Saliency(net).attribute(x, target=torch.as_tensor(targets))
    batch = xk.evaluate(net, x, attributions, batch=True, target=targets, metrics="deletion")
    ours = xk.explain(net, x, batch=True, method="saliency", target=targets)
    again = xk.evaluate(net, None, ours, target=targets, metrics="deletion")
    for i in range(2):
        one = xk.evaluate(net, x[i], attributions[i], target=int(targets[i]), metrics="deletion")
        assert batch["deletion"][i] == pytest.approx(one["deletion"], rel=1e-6)
        assert again["deletion"][i] == pytest.approx(one["deletion"], rel=1e-6)


def test_from_captum_keeps_the_target_with_the_model_scores(linear_images):
    from captum.attr import Saliency

    net, x = linear_images
    e = xk.Explanation.from_captum(Saliency(net).attribute(x, target=2), x, model=net, target=2)
    assert e.batch and list(e.target) == [2, 2]
    np.testing.assert_allclose(e.prediction, net(x).detach().numpy(), rtol=1e-6)


def test_from_array_needs_the_model_or_its_scores():
    with pytest.raises(TypeError, match="model: give the model"):
        xk.Explanation.from_array(np.zeros(4), np.zeros(4))


def test_to_shap_keeps_values_data_names_with_the_base_value():
    pytest.importorskip("shap")
    weights = np.array([1.0, -2.0, 0.5, 3.0])
    e = xk.explain(lambda b: np.c_[b @ weights, -(b @ weights)], np.arange(4.0), baseline=0.0,
                   method="kernel_shap", feature_names=list("abcd"))  # fmt: skip
    s = e.to_shap()
    np.testing.assert_allclose(s.values, weights * np.arange(4.0), atol=1e-8)
    assert list(s.feature_names) == list("abcd")
    assert s.base_values == pytest.approx(0.0, abs=1e-8)  # f(baseline) = 0


def test_to_shap_base_value_of_component_values_is_the_expected_value():
    # Every pixel carries its superpixel's whole value: the pixels' sum (4x the component
    # values' here) gave base_values -0.022 where f(background) is 0.012.
    pytest.importorskip("shap")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    e = xk.explain(net.eval(), x, method="kernel_shap", samples=500, batch=True)
    s = e.to_shap()
    np.testing.assert_allclose(s.base_values, e.info["expected_value"], atol=1e-6)
    # shap's rule: base value plus the values' sum is the score (each component's value is
    # spread over its pixels, which carried it whole: counted 4 times each)
    explained = e.prediction[np.arange(2), e.target]
    np.testing.assert_allclose(s.base_values + s.values.sum(axis=(1, 2, 3)), explained, atol=1e-5)
    for i in range(2):
        ids = e.components[i] if e.components.ndim == 3 else e.components
        per_component = np.bincount(ids.ravel(), weights=s.values[i, 0].ravel())
        np.testing.assert_allclose(per_component, e.component_values[i], atol=1e-7)


# ---------------------------------------------------------------------- the command

FACTORY = """
import torch
from torch import nn

def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
"""


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("untrained")
    (folder / "net.py").write_text(FACTORY)
    np.save(folder / "rows.npy", np.random.default_rng(0).random((2, 4), dtype=np.float32))
    return folder


def test_a_factory_without_weights_is_refused(untrained):
    result = _xaikit("explain", "--model", f"{untrained / 'net.py'}:make", untrained / "rows.npy",
                     "--out", untrained / "out")  # fmt: skip
    assert result.returncode != 0
    assert "--random-weights" in result.stderr and not (untrained / "out").exists()


def test_random_weights_say_so(untrained):
    model = f"{untrained / 'net.py'}:make"
    result = _xaikit("explain", "--model", model, "--random-weights", "--device", "cpu",
                     untrained / "rows.npy", "--out", untrained / "ok", "-q")  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_that_is_not_there_is_named(untrained):
    model = f"{untrained / 'net.py'}:make"
    result = _xaikit("explain", "--model", model, "--random-weights", "--device", "cuda",
                     untrained / "rows.npy", "--out", untrained / "gpu")  # fmt: skip
    assert result.returncode != 0 and "device: 'cuda'" in result.stderr


class ChannelsLastStage(nn.Module):
    """A timm-style Swin stage: patch tokens as (N, h, w, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.mix(x))


class TimmStyleSwin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 4, stride=4)
        self.layers = nn.Sequential(ChannelsLastStage(), ChannelsLastStage())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        tokens = self.patch_embed(x).permute(0, 2, 3, 1)  # (N, 4, 4, 8)
        return self.head(self.layers(tokens).mean(dim=(1, 2)))


def test_grad_cam_reads_channels_last_stages_as_maps():
    torch.manual_seed(0)
    net = TimmStyleSwin().eval()
    x = np.random.default_rng(0).random((3, 16, 16), dtype=np.float32)
    e = xk.explain(net, x, method="gradcam")
    assert e.params["layer"] == "layers.1" and e.info["cam"].shape == (4, 4)
    tokens = net.layers(net.patch_embed(torch.as_tensor(x[None])).permute(0, 2, 3, 1))
    tokens.retain_grad()
    net.head(tokens.mean(dim=(1, 2)))[0, e.target].backward()
    weights = tokens.grad.mean(dim=(1, 2))  # one per channel
    cam = torch.relu((tokens * weights[:, None, None, :]).sum(-1))[0].detach().numpy()
    np.testing.assert_allclose(e.info["cam"], cam, rtol=1e-5, atol=1e-7)


class EditsItsMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, ids, attention_mask):
        attention_mask.mul_(0)  # a careless model
        return self.head(self.embedding(ids).mean(1))


def test_a_forward_that_edits_its_mask_leaves_the_callers_mask_alone():
    mask = torch.ones(1, 5, dtype=torch.long)  # one row for every item: expanded per batch
    model = xk.Model(EditsItsMask(), forward_kwargs={"attention_mask": mask})
    model.scores(torch.randint(0, 10, (3, 5)))
    assert int(mask.sum()) == 5


def test_from_array_keeps_its_own_copy():
    values, x = np.ones(4), np.arange(4.0)
    e = xk.Explanation.from_array(values, x, prediction=np.zeros(2))
    values[:] = 7.0
    assert e.values.tolist() == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: xk.Model(nn.Linear(3, 2), forward_kwargs=[1]), r"forward_kwargs: expected a dict"),
        (lambda: xk.Model(lambda b: b, forward_kwargs={"a": 1}), r"forward_kwargs: only a PyTorch"),
        (lambda: xk.Model(nn.Linear(3, 2), table="columns"), r"table: expected an xaikit.Table"),
    ],
    ids=["not-a-dict", "for-a-callable", "table-not-a-table"],
)
def test_a_wrong_model_option_is_named(make, pattern):
    with pytest.raises(TypeError, match=pattern):
        make()


def test_forward_kwargs_with_the_wrong_number_of_rows_are_named(bert, token_batch):
    ids, mask = token_batch
    model = xk.Model(bert, forward_kwargs={"attention_mask": mask[:2]})
    with pytest.raises(ValueError, match=r"forward_kwargs: 'attention_mask' has 2 rows"):
        model.scores(ids[:1].repeat(20, 1))


def test_a_frame_with_other_columns_is_named(pipeline, frame):
    with pytest.raises(ValueError, match=r"x: expected the columns the model was fitted on"):
        xk.explain(pipeline, frame.iloc[[0]].rename(columns={"age": "years"}))


def test_an_unknown_category_is_named(frame):
    table = xk.Table.of(frame)
    other = frame.iloc[[0]].assign(city="Rome")
    with pytest.raises(ValueError, match=r"x: column 'city' has 'Rome'"):
        table.array(other, name="x")


def test_explaining_a_frame_leaves_it_unchanged(pipeline, frame):
    before = frame.copy()
    xk.explain(pipeline, frame.iloc[[0]], method="kernel_shap", baseline=frame.iloc[:20],
               samples=64, seed=0)  # fmt: skip
    assert frame.equals(before)


# ---------------------------------------------------------------- float64 models

FLOAT64_METHODS = {
    "saliency": {}, "integrated_gradients": {"steps": 16}, "smoothgrad": {"samples": 4},
    "gradcam": {}, "deeplift": {}, "lrp": {}, "occlusion": {"window": 4},
    "rise": {"samples": 16}, "lime": {"samples": 32}, "kernel_shap": {"samples": 32},
}  # fmt: skip


@pytest.mark.parametrize("method", FLOAT64_METHODS)
def test_a_float64_model_gets_float64_maps(method):
    # IG, occlusion, Grad-CAM, DeepLIFT and RISE computed in float32 (inputs rounded first),
    # so a float64 model's maps were float32-accurate while other methods' were not.
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3)
    ).double().eval()  # fmt: skip
    x = np.random.default_rng(0).random((3, 8, 8))
    e = xk.explain(net, x, method=method, target=1, **FLOAT64_METHODS[method])
    assert e.values.dtype == np.float64


def test_float64_occlusion_equals_the_float64_score_drop():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).double()
    x = np.random.default_rng(0).random((3, 8, 8))
    e = xk.explain(net.eval(), x, method="occlusion", target=1, window=8, stride=8)
    with torch.no_grad():
        drop = net(torch.tensor(x[None]))[0, 1] - net(torch.zeros(1, 3, 8, 8).double())[0, 1]
    np.testing.assert_allclose(e.values, drop.item(), rtol=1e-12)


@pytest.mark.parametrize("method", ["occlusion", "kernel_shap", "lime"])
def test_a_numpy_callable_on_float64_rows_gets_float64_maps(method):
    from sklearn.linear_model import LogisticRegression

    rows = np.random.default_rng(0).normal(size=(50, 4))
    clf = LogisticRegression().fit(rows, rows[:, 0] > 0)
    assert xk.explain(clf, rows[0], method=method).values.dtype == np.float64


def test_a_callable_on_dataframes_gets_the_columns_dtypes():
    # Every numeric column came back as float64 and a nullable boolean as object.
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "rooms": rng.integers(1, 5, 30), "n": pd.array(rng.integers(0, 3, 30), dtype="Int64"),
        "flag": pd.array(rng.choice([True, False], 30), dtype="boolean"),
        "v": rng.normal(size=30).astype(np.float32),
        "kind": pd.Categorical(rng.choice(["p", "q"], 30)),
    })  # fmt: skip
    seen = []

    def proba(rows):
        seen.append(rows.dtypes.to_dict())
        s = 1 / (1 + np.exp(-(rows["rooms"].to_numpy(float) - 2.5)))
        return np.stack([1 - s, s], 1)

    xk.explain(proba, frame.iloc[[0]], method="kernel_shap", baseline=frame.iloc[:10])
    assert seen and all(dtypes == frame.dtypes.to_dict() for dtypes in seen)


@pytest.mark.parametrize("method", ["deeplift", "kernel_shap", "occlusion"])
def test_an_item_holds_its_own_info_so_stack_gives_the_batch_back(method):
    # e[i].info held every item's values (a (4,) completeness gap for item 2), and stacking
    # the items gave (4, 4) arrays: stack was not the inverse of e[i] as it says.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    e = xk.explain(net.eval(), x, method=method, batch=True)
    xk.evaluate(net, None, e, metrics="deletion")
    for key, value in e.info.items():
        if isinstance(value, np.ndarray) and len(value) == 4:
            assert np.array_equal(e[2].info[key], value[2])
    assert e[1].scores["deletion"] == e.scores["deletion"][1]
    assert xk.Explanation.stack([e[i] for i in range(4)]) == e
