"""The ``xaikit`` command. Commands are thin: parse, load, call the library, write, print.

Every command that writes takes ``--out DIR`` and writes ``DIR/index.html`` (one
self-contained page) and ``DIR/summary.json`` (what ``--json`` prints), plus its own files.
Files are staged in a temporary folder and moved in only when everything succeeded, so a
failure leaves ``DIR`` as it was. A failure prints one line (``Error: <argument>: <reason>``)
and exits with status 1; ``XAIKIT_DEBUG=1`` shows the traceback instead.

The options every command shares and the session that loads the model and inputs and writes
the output are declared once, in :mod:`xaikit._cli_session`; a command declares only its own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import numpy as np

from xaikit._cli_session import INTERRUPTED, Session, guarded, integers, names, session_command
from xaikit._version import __version__
from xaikit.attribution.defaults import DEFAULT_METHOD
from xaikit.featureviz.render import DEFAULT_STEPS

__all__ = ["INTERRUPTED", "main"]

# Options several commands take with one meaning, declared once (the model, input and output
# options every command shares are in xaikit._cli_session).
TARGET = click.option("--target", type=int, help="Class to explain (default: the predicted class).")
PARAMS = click.option(
    "--param", "-p", "param_pairs", multiple=True, help="Method parameter key=value."
)
METHODS = click.option(
    "--methods",
    "method_names",
    help="Comma-separated method names (xaikit methods lists them); default: all that apply.",
)
SEED = click.option("--seed", type=int, default=0, show_default=True)
BASELINE = click.option(
    "--baseline",
    "baseline_text",
    help="What a removed pixel or feature becomes in deletion and insertion: a number, "
    "'mean' (tables: the mean of the input rows; images: each channel's mean), 'blur' or "
    "'noise'. Default: 0 for deletion and a blur for insertion on images; the mean of the "
    "input rows on tables (0 for a single row).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="xaikit")
def main() -> None:
    """xaikit: explain machine-learning models, with proof of each explanation's quality."""


# ---------------------------------------------------------------------- option parsing


def _params(pairs: tuple[str, ...]) -> dict[str, Any]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"param: expected key=value, got {pair!r}")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value  # a plain word, e.g. baseline=blur
    return params


def _safe_stem(name: str) -> str:
    # File names on disk: only portable characters (the page shows the real name, escaped),
    # and short: a long input name plus the method would pass the file system's 255 bytes.
    from xaikit._files import short_name

    return short_name(re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "input")


# Metrics whose "removed" parts are replaced by a baseline (the --baseline option).
BASELINE_METRICS = ("deletion", "insertion", "morf", "lerf")


def _metric_baseline(text: str | None, *, x: np.ndarray) -> tuple[dict[str, Any], str | None]:
    """The deletion/insertion ``baseline`` option for these inputs, and words saying what it
    is (None: the metrics' own defaults, for images)."""
    table = x.ndim == 2
    if text is None and not table:
        return {}, None
    if text is None and len(x) < 2:
        return {"baseline": 0.0}, "0 (a single row has no mean to take)"
    if text is None or (text.strip() == "mean" and table):
        if len(x) < 2:
            raise ValueError("baseline: 'mean' of the input rows needs at least two rows")
        return {"baseline": x.mean(axis=0)}, f"the mean of the {len(x)} input rows"
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        if text in ("mean", "blur", "noise"):
            return {"baseline": text}, f"{text!r}"
        raise ValueError(
            f"baseline: expected a number, 'mean', 'blur' or 'noise', got {text!r}"
        ) from None
    if not np.isfinite(value):
        raise ValueError(f"baseline: expected a finite number, got {text!r}")
    return {"baseline": value}, f"the constant {value:g}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------- commands


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the methods as JSON.")
def methods(as_json: bool) -> None:
    """List the local explanation methods, their parameters and whether they need gradients."""
    from xaikit.attribution import methods as registered

    if as_json:
        listing = {
            name: {**spec, "default": name == DEFAULT_METHOD} for name, spec in registered().items()
        }
        click.echo(json.dumps(_jsonable(listing), indent=2))
        return
    for name, spec in registered().items():
        params = ", ".join(f"{k}={v!r}" for k, v in spec["params"].items())
        click.echo(f"{name:22} [{spec['needs']}] {params}")


@main.command()
@session_command(inputs="images")
@click.option("--method", default=DEFAULT_METHOD, show_default=True, help="Method name.")
@TARGET
@PARAMS
def explain(session: Session, *, method: str, target: int | None, param_pairs: tuple) -> None:
    """Explain each input with one method: OUT/<input>.npz per input and OUT/index.html."""
    from xaikit.attribution import explain as run_explain
    from xaikit.report import Page
    from xaikit.report.html import explanation_html

    data, class_names = session.data, session.class_names
    session.check_methods([method], option="method")
    params = _params(param_pairs)
    page = Page(f"xaikit explain: {method}")
    page.section("explanations", f"{method} on {len(data)} input(s)")
    files, items = {}, []
    for name, x in zip(data.names, data.x, strict=True):
        e = run_explain(
            session.model, x, method=method, target=target, feature_names=data.feature_names,
            **params,
        )  # fmt: skip
        page.heading(name)
        page.html(explanation_html(e, class_names=class_names))
        stem = _unique(f"{_safe_stem(name)}.{method}.npz", files)
        files[stem] = e.save
        items.append(
            {
                "input": name,
                "file": stem,
                "target": int(e.target),
                "target_name": session.class_name(int(e.target)),
                "predicted": int(np.argmax(e.prediction)),
                "predicted_name": session.class_name(int(np.argmax(e.prediction))),
                "info": _jsonable({k: v for k, v in e.info.items() if np.ndim(v) == 0}),
            }
        )
    summary = {
        "command": "explain",
        "model": session.loaded.source,
        "method": method,
        "classes": class_names,
        "items": items,
    }
    session.write(page, summary, files=files)


def _unique(name: str, taken: dict) -> str:
    stem, i = name, 1
    while name in taken:
        i += 1
        name = f"{i}-{stem}"
    return name


@main.command()
@session_command(inputs="images")
@METHODS
@click.option(
    "--metrics",
    default="deletion,insertion",
    show_default=True,
    help="Comma-separated metric names (see xk.evaluate).",
)
@TARGET
@BASELINE
def compare(
    session: Session, *, method_names: str | None, metrics: str, target: int | None,
    baseline_text: str | None,
) -> None:  # fmt: skip
    """Explain each input with several methods and rank them on the metrics."""
    from xaikit.metrics import compare as run_compare
    from xaikit.report import Page
    from xaikit.report.local import default_methods

    data, class_names = session.data, session.class_names
    specs = _method_specs(method_names, session=session, defaults=default_methods)
    metric_names = names(metrics) or []
    options, baseline = _metric_baseline(baseline_text, x=data.x)
    if baseline_text is None and not set(metric_names) & set(BASELINE_METRICS):
        options, baseline = {}, None  # the default is for the metrics that take one
    page = Page("xaikit compare")
    page.section("comparison", f"{len(specs)} methods on {len(data)} input(s)")
    skipped = None if method_names else _skipped_note(session, specs, default_methods)
    if skipped:
        page.paragraph(skipped)
    if baseline is not None:
        page.paragraph(f"Removed parts are replaced by {baseline}.")
    items = []
    for name, x in zip(data.names, data.x, strict=True):
        result = run_compare(
            session.model, x, methods=specs, metrics=metric_names, target=target, **options
        )
        first = next(iter(result.explanations.values()))
        label = _label(int(first.target), class_names)
        page.heading(f"{name} · class {label}")
        page.figure(result.plot(), alt=f"methods compared on {name}")
        page.table(
            ["method", *metric_names],
            [[r["method"], *(r[m] for m in metric_names)] for r in result.table],
        )
        ranks = {m: result.rank(m) for m in metric_names}
        page.paragraph("Best first: " + "; ".join(f"{m}: {', '.join(r)}" for m, r in ranks.items()))
        items.append(
            {
                "input": name,
                "target": int(first.target),
                "target_name": session.class_name(int(first.target)),
                "table": _jsonable(result.table),
                "rank": ranks,
            }
        )
    summary = {
        "command": "compare",
        "model": session.loaded.source,
        "baseline": baseline,
        "classes": class_names,
        "items": items,
    }
    session.write(page, summary)


def _label(index: int, class_names) -> str:
    from xaikit.report.html import class_label

    return class_label(index, class_names)


def _method_specs(method_names, *, session: Session, defaults) -> dict[str, dict]:
    from xaikit.report.local import FAST_PARAMS

    image = session.data.x.ndim == 4
    if method_names:
        chosen = names(method_names) or []
        session.check_methods(chosen)
        return {n: dict(FAST_PARAMS.get(n, {})) for n in chosen}
    return defaults(image=image, gradients=session.loaded.has_gradients, hooks=session.hooks)


def _skipped_note(session: Session, specs: dict, defaults) -> str | None:
    """One line naming the default methods that cannot run on this model, or None."""
    image = session.data.x.ndim == 4
    every = defaults(image=image, gradients=session.loaded.has_gradients)
    skipped = [n for n in every if n not in specs]
    if not skipped:
        return None
    return (
        f"Not run on this {session.loaded.kind} model (they need forward hooks on its "
        f"layers): {', '.join(skipped)}."
    )


@main.command()
@session_command(inputs="images")
@METHODS
@TARGET
@click.option(
    "--sanity/--no-sanity",
    default=True,
    show_default=True,
    help="Run the model-parameter randomisation check (PyTorch modules).",
)
@BASELINE
def report(
    session: Session, *, method_names: str | None, target: int | None, sanity: bool,
    baseline_text: str | None,
) -> None:  # fmt: skip
    """A report on the model's decision for each input: prediction, every method side by side,
    and each method's scorecard (deletion, insertion, sanity check)."""
    from xaikit.report import Page
    from xaikit.report.local import add_prediction, add_scorecard, default_methods, scorecard

    data, class_names = session.data, session.class_names
    specs = _method_specs(method_names, session=session, defaults=default_methods)
    options, baseline = _metric_baseline(baseline_text, x=data.x)
    loaded, model = session.loaded, session.model
    page = Page(f"xaikit report: {Path(loaded.source).name}")
    page.section("model", "The model")
    page.table(
        ["", ""],
        [("model", loaded.source), ("kind", loaded.kind), ("inputs", len(data)),
         ("methods", ", ".join(specs))],
    )  # fmt: skip
    skipped = None if method_names else _skipped_note(session, specs, default_methods)
    if skipped:
        page.paragraph(skipped)
    items = []
    for i, (name, x) in enumerate(zip(data.names, data.x, strict=True)):
        page.section(f"input-{i + 1}", f"Input {i + 1}: {name}")
        predicted = add_prediction(page, model, x, name=name, class_names=class_names)
        explained = predicted if target is None else int(target)
        if explained != predicted:  # the scores below are for this class, not the predicted one
            label = session.class_name(explained)
            page.paragraph(
                f"Every method explains class {explained}"
                + (f" ({label})" if label else "")
                + ", as --target asks; the scores are its probability."
            )
        results = scorecard(
            model, x, methods=specs, target=target, sanity=sanity,
            feature_names=data.feature_names, progress=session.progress,
            metric_options=options,
        )  # fmt: skip
        add_scorecard(page, results, baseline=baseline)
        items.append(
            {
                "input": name,
                "predicted": predicted,
                "predicted_name": session.class_name(predicted),
                "target": explained,
                "target_name": session.class_name(explained),
                "methods": {
                    r.method: {
                        "deletion": r.deletion,
                        "insertion": r.insertion,
                        "sanity_passed": None if r.sanity is None else r.sanity.passed,
                    }
                    for r in results
                },
            }
        )
    summary = {
        "command": "report",
        "model": loaded.source,
        "baseline": baseline,
        "classes": class_names,
        "items": items,
    }
    session.write(page, summary)


@main.command()
@session_command()
@click.option("--layer", help="Layer path whose filters (channels) to visualise.")
@click.option("--channels", help="Comma-separated channel indices (default: all of --layer).")
@click.option("--target", "targets", help="Comma-separated classes to visualise, or 'all'.")
@click.option(
    "--steps", type=int, default=DEFAULT_STEPS, show_default=True, help="Optimisation steps."
)
@click.option("--raw", is_flag=True, help="Plain pixels, no transforms, no penalty.")
@click.option(
    "--tv",
    type=float,
    default=0.05,
    show_default=True,
    help="Total-variation penalty weight for classes.",
)
@click.option("--input-shape", help="Shape of one input, e.g. 1,28,28 (default: guessed).")
@click.option(
    "--value-range", nargs=2, type=float, default=(0.0, 1.0), show_default=True,
    help="Range of the model's inputs.",
)  # fmt: skip
@SEED
def visualize(
    session: Session, *, layer: str | None, channels: str | None, targets: str | None,
    steps: int, raw: bool, tv: float, input_shape: str | None, value_range: tuple, seed: int,
) -> None:  # fmt: skip
    """What filters detect (--layer) or what classes look like (--target) to the model."""
    from xaikit.featureviz import objectives
    from xaikit.featureviz import visualize as run_visualize
    from xaikit.report import Page
    from xaikit.report.html import visualization_html

    if (layer is None) == (targets is None):
        raise click.UsageError("give either --layer (filters) or --target (classes)")
    loaded, model = session.loaded, session.model
    if not loaded.has_gradients:
        raise ValueError(f"model: feature visualisation needs gradients; {loaded.kind} gives none")
    shape = tuple(integers(input_shape, name="input_shape")) if input_shape else None
    if layer is not None:
        chosen = integers(channels, name="channels") if channels else None
        objective = objectives.channels(layer, chosen)
        what = f"filters of {layer}"
    else:
        if targets.strip() == "all":
            k = model.scores(np.zeros((1, *shape), np.float32)).shape[1] if shape else None
            if k is None:
                raise ValueError("target: 'all' needs --input-shape to count the classes")
            classes = list(range(k))
        else:
            classes = integers(targets, name="target")
        penalty = 0.0 if raw else tv
        objective = [objectives.logit(c) - penalty * objectives.total_variation() for c in classes]
        what = f"classes {classes}"
    settings = {"param": "pixels", "transforms": None} if raw else {}
    v = run_visualize(
        model, objective, steps=steps, seed=seed, value_range=tuple(value_range),
        input_shape=shape, **settings,
    )  # fmt: skip
    page = Page(f"xaikit visualize: {what}")
    page.section("visualization", f"{'Raw' if raw else 'Regularised'} visualisation of {what}")
    page.html(visualization_html(v))
    summary = {
        "command": "visualize",
        "model": loaded.source,
        "objectives": v.objectives,
        "objective_values": v.objective_values.tolist(),
        "file": "images.npy",
    }
    files = {"images.npy": lambda p: _save_npy(p, v.images)}
    session.write(page, summary, files=files)


def _save_npy(path: Path, array: np.ndarray) -> None:
    import io

    from xaikit.report.output import write_bytes_atomic

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())


@main.command()
@session_command(inputs="images", classes=False)  # its labels are the user's, not the classes
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="One label per input item: .npy, or a text file with one per line.")  # fmt: skip
@click.option("--layers", required=True, help="Comma-separated layer paths, shallow to deep.")
@click.option("--kind", type=click.Choice(["linear", "mlp"]), default="linear", show_default=True)
@click.option(
    "--project", "how", type=click.Choice(["pca", "tsne", "none"]), default="pca",
    show_default=True, help="Also project each layer to 2-D.",
)  # fmt: skip
@SEED
def probe(session: Session, *, labels: Path, layers: str, kind: str, how: str, seed: int) -> None:
    """Probe each layer for the labels (with a control task) and project the layers to 2-D."""
    from xaikit.loading import load_labels
    from xaikit.report import Page
    from xaikit.report.html import probe_html, projection_html
    from xaikit.representations import probe as run_probe
    from xaikit.representations import project_layers

    loaded, model = session.loaded, session.model
    if not loaded.has_gradients:  # activations need hooks on a PyTorch module
        raise ValueError(f"model: probing reads layer activations; a {loaded.kind} model has none")
    data = session.data
    y = load_labels(labels, n=len(data))
    layer_names = names(layers) or []
    result = run_probe(model, data.x, y, layers=layer_names, kind=kind, seed=seed)
    page = Page("xaikit probe")
    page.section("probes", "Probes per layer")
    page.html(probe_html(result))
    if how != "none":
        page.section("projections", "Layer projections")
        projections = project_layers(model, data.x, layers=layer_names, how=how, labels=y)
        page.html(projection_html(projections))
    summary = {
        "command": "probe",
        "model": loaded.source,
        "accuracy": result.accuracy,
        "control_accuracy": result.control_accuracy,
        "selectivity": result.selectivity,
        "chance": result.chance,
    }
    session.write(page, summary)


@main.command()
@session_command(inputs="tables")
@click.option("--kind", type=click.Choice(["tree", "linear", "rules"]), default="tree",
              show_default=True)  # fmt: skip
@click.option("--max-depth", type=int, default=4, show_default=True)
@SEED
def surrogate(session: Session, *, kind: str, max_depth: int, seed: int) -> None:
    """Fit a readable mimic (tree, sparse linear, rules) to the model on tabular inputs."""
    from xaikit.report import Page
    from xaikit.report.html import surrogate_html
    from xaikit.report.output import write_text_atomic
    from xaikit.surrogates import surrogate as fit_surrogate

    data = session.data
    if data.x.ndim != 2:
        raise ValueError(f"input: a surrogate needs table rows (N, F), got shape {data.x.shape}")
    class_names = session.class_names
    s = fit_surrogate(
        session.model, data.x, kind=kind, max_depth=max_depth, feature_names=data.feature_names,
        class_names=class_names, seed=seed,
    )  # fmt: skip
    page = Page(f"xaikit surrogate: {kind}")
    page.section("surrogate", f"A {kind} mimicking {Path(session.loaded.source).name}")
    page.html(surrogate_html(s))
    rules = s.rules()
    summary = {
        "command": "surrogate",
        "model": session.loaded.source,
        "kind": kind,
        "classes": class_names,
        "fidelity": s.fidelity,
        "complexity": s.complexity,
        "rules": rules,
    }
    files = {"rules.txt": lambda p: write_text_atomic(p, rules + "\n")}
    session.write(page, summary, files=files)


@main.command()
@session_command(inputs="images")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path),
              help="One class per item (default: explain the predicted class).")  # fmt: skip
@click.option("--method", default="integrated_gradients", show_default=True, help="Method name.")
@PARAMS
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the audit's shards; a rerun resumes from it.")  # fmt: skip
def audit(
    session: Session, *, labels: Path | None, method: str, param_pairs: tuple, backend: str,
    work: Path | None,
) -> None:  # fmt: skip
    """Explain a whole data set and look for shortcuts (Clever Hans) the model relies on."""
    from xaikit.audit import audit as run_audit
    from xaikit.loading import load_labels
    from xaikit.report import Page
    from xaikit.report.html import class_label

    data, class_names = session.data, session.class_names
    session.check_methods([method], option="method")
    y = None if labels is None else load_labels(labels, n=len(data))
    result = run_audit(
        session.model, data.x, labels=y, method=method, backend=backend, out=work,
        params=_params(param_pairs), progress=session.progress,
    )  # fmt: skip
    page = Page(f"xaikit audit: {Path(session.loaded.source).name}")
    page.section("audit", f"Audit of {len(data)} inputs with {method}")
    page.paragraph(f"{len(result.findings)} finding(s), most convincing first.")
    if result.findings:
        page.table(
            ["class", "kind", "region (y0, x0, y1, x1)", "share of relevance", "other classes",
             "consistency", "images", "pasted in: called the class"],
            [
                (class_label(int(f.target), class_names), f.kind, str(tuple(f.region)),
                 f.relevance_share, f.other_share, f.consistency, f.n_images, f.transplant_text())
                for f in result.findings
            ],
        )  # fmt: skip
    if result.evidence:
        page.paragraph(
            f"{len(result.evidence)} region(s) of distinctive evidence: a class relies on "
            "them, but they vary from image to image like the class's own strokes, so they "
            "are shown to look at, not reported as shortcuts."
        )
        page.table(
            ["class", "region (y0, x0, y1, x1)", "share of relevance", "other classes",
             "consistency", "images", "pasted in: called the class", "sameness"],
            [
                (class_label(int(f.target), class_names), str(tuple(f.region)),
                 f.relevance_share, f.other_share, f.consistency, f.n_images,
                 f.transplant_text(), f.sameness)
                for f in result.evidence
            ],
        )  # fmt: skip
    page.figure(result.plot(), alt="audit: relevance per class and findings")

    def listed(entries):
        return [
            {"target": int(f.target), "target_name": session.class_name(int(f.target)),
             "kind": f.kind, "region": [int(v) for v in f.region],
             "relevance_share": float(f.relevance_share), "consistency": float(f.consistency),
             "n_images": int(f.n_images), "transplant_rate": f.transplant_rate,
             "control_rate": f.control_rate, "sameness": f.sameness, "text": str(f)}
            for f in entries
        ]  # fmt: skip

    summary = {
        "command": "audit",
        "model": session.loaded.source,
        "method": method,
        "classes": class_names,
        "findings": listed(result.findings),
        "distinctive_evidence": listed(result.evidence),
    }
    files = {"audit": lambda p: result.save(p)}  # audit.npz and audit.json, no pickle
    session.write(page, summary, files=files)


@main.command()
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("xaikit-demo"),
    show_default=True,
    help="Directory for index.html and summary.json.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the default models.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars, only errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@guarded
def demo(out: Path, seed: int, quiet: bool, as_json: bool) -> None:
    """Run the embedded default end to end and write OUT/index.html."""
    from xaikit.demo import run_demo

    summary = run_demo(out, seed=seed)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif not quiet:
        for name, scores in summary["models"].items():
            click.echo(
                f"{name:>9} CNN: clean test accuracy {scores['clean_test_accuracy']:.3f}; "
                f"marked digits called {summary['watermark']['class']}: "
                f"{scores['marked_predicted_as_watermark_class']:.1%}"
            )
        click.echo(f"report: {out / 'index.html'}")


if __name__ == "__main__":  # pragma: no cover
    main()
