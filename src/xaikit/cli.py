"""The ``xaikit`` command. Commands are thin: parse, load, call the library, write, print.

Every command that writes takes ``--out DIR`` and writes ``DIR/index.html`` (one
self-contained page) and ``DIR/summary.json`` (what ``--json`` prints), plus its own files.
Files are staged in a temporary folder and moved in only when everything succeeded, so a
failure leaves ``DIR`` as it was. A failure prints one line (``Error: <argument>: <reason>``)
and exits with status 1; ``XAIKIT_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from xaikit._progress import set_progress
from xaikit._validation import one_line
from xaikit._version import __version__
from xaikit.attribution.defaults import DEFAULT_METHOD
from xaikit.featureviz.render import DEFAULT_STEPS

# The exit status of a command stopped by Ctrl-C (SIGINT), as shells report it: 128 + 2.
INTERRUPTED = 130

METHODS_HELP = "Comma-separated method names (xaikit methods lists them); default: all that apply."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="xaikit")
def main() -> None:
    """xaikit: explain machine-learning models, with proof of each explanation's quality."""


# ---------------------------------------------------------------------- shared plumbing


def _command(function: Callable) -> Callable:
    """Turn any failure into one line on stderr and exit status 1; set up progress bars."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> None:
        quiet, as_json = kwargs.get("quiet", False), kwargs.get("as_json", False)
        set_progress(not quiet and not as_json and sys.stderr.isatty())
        try:
            function(*args, **kwargs)
        except click.ClickException:
            raise
        except KeyboardInterrupt:  # Ctrl-C: staged files are already removed on the way out
            out = kwargs.get("out")
            where = f"{out} is left as it was" if out is not None else "nothing was written"
            click.echo(f"Interrupted: {where}.", err=True)
            sys.exit(INTERRUPTED)
        except (ValueError, TypeError, OSError, KeyError, IndexError) as err:
            if os.environ.get("XAIKIT_DEBUG"):
                raise
            raise click.ClickException(one_line(err)) from err
        except Exception as err:  # a bug or the user's model failing: still one line
            if os.environ.get("XAIKIT_DEBUG"):
                raise
            raise click.ClickException(f"{type(err).__name__}: {one_line(err)}") from err

    return run


def _output_options(function: Callable) -> Callable:
    function = click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")(
        function
    )
    function = click.option("--quiet", "-q", is_flag=True, help="No progress, only errors.")(
        function
    )
    return click.option(
        "--out",
        "out",
        type=click.Path(file_okay=False, path_type=Path),
        required=True,
        help="Output directory (index.html, summary.json, ...).",
    )(function)


def _model_options(function: Callable) -> Callable:
    options = [
        click.option(
            "--model",
            "-m",
            "model_spec",
            required=True,
            help="file.py:factory, a TorchScript file, an ONNX file, or a pickled scikit-learn "
            "model (with --trust-pickle).",
        ),
        click.option(
            "--weights",
            "-w",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Weights for file.py:factory: .safetensors or a torch state dict.",
        ),
        click.option(
            "--trust-pickle",
            is_flag=True,
            help="Allow a pickled model (unpickling runs code from the file).",
        ),
        click.option(
            "--output",
            "model_output",
            type=click.Choice(["logits", "probabilities", "log_probabilities", "scores"]),
            help="What the model returns (default: logits; probabilities for scikit-learn).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _input_options(function: Callable) -> Callable:
    options = [
        click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path)),
        click.option(
            "--resize", nargs=2, type=int, metavar="H W", help="Resize images to H x W pixels."
        ),
        click.option("--mean", help="Per-channel mean to subtract, e.g. 0.485,0.456,0.406."),
        click.option("--std", help="Per-channel standard deviation to divide by."),
        click.option(
            "--classes",
            "classes_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Class names: a text file with one name per line, or a JSON list.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _table_input_options(function: Callable) -> Callable:
    """The input options without the image ones (--resize, --mean, --std): tables only."""
    options = [
        click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path)),
        click.option(
            "--classes",
            "classes_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Class names: a text file with one name per line, or a JSON list.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _floats(text: str | None, *, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated numbers, got {text!r}") from None


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]


def _load(model_spec, weights, trust_pickle, model_output):
    from xaikit.loading import load_model
    from xaikit.model import Model

    loaded = load_model(model_spec, weights=weights, trust_pickle=trust_pickle, output=model_output)
    return loaded, Model(loaded.model, output=loaded.output)


def _read_inputs(inputs, *, resize, mean, std, loaded):
    from xaikit.loading import LoadError, load_inputs

    data = load_inputs(
        list(inputs),
        resize=tuple(resize) if resize else None,
        mean=_floats(mean, name="mean"),
        std=_floats(std, name="std"),
        channels=loaded.input_channels,
    )
    if data.kind == "text":
        raise LoadError(
            "input: text lines need a text model and tokenizer; this command explains image, "
            ".npy and CSV inputs"
        )
    return data


def _class_names(classes_file, model, x) -> list[str] | None:
    from xaikit.loading import load_class_names

    if classes_file is None:
        return None
    k = model.scores(x[:1]).shape[1]
    return load_class_names(classes_file, n_classes=k)


def _class_name(index: int, class_names) -> str | None:
    """The name --classes gives class ``index`` (None without --classes), for summary.json."""
    if class_names is None or not 0 <= index < len(class_names):
        return None
    return class_names[index]


def _check_methods(names: list[str], *, loaded) -> None:
    from xaikit.attribution import methods

    known = methods()
    for name in names:
        if name not in known:
            raise ValueError(f"methods: unknown method {name!r}; known: {sorted(known)}")
        if known[name]["needs_gradients"] and not loaded.has_gradients:
            free = sorted(n for n, m in known.items() if not m["needs_gradients"])
            raise ValueError(
                f"method: {name!r} needs gradients, which a {loaded.kind} model "
                f"({loaded.source}) does not give; use one of {free}"
            )


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


def _baseline_option(function: Callable) -> Callable:
    return click.option(
        "--baseline",
        "baseline_text",
        help="What a removed pixel or feature becomes in deletion and insertion: a number, "
        "'mean' (tables: the mean of the input rows; images: each channel's mean), 'blur' or "
        "'noise'. Default: 0 for deletion and a blur for insertion on images; the mean of the "
        "input rows on tables (0 for a single row).",
    )(function)


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


def _finish(out: Path, page, summary: dict, *, quiet: bool, as_json: bool, files=None) -> None:
    """Write index.html, summary.json and ``files`` (name -> callable(path)) all or nothing."""
    from xaikit.report.output import staged_dir, write_json_atomic

    with staged_dir(out) as stage:
        for name, write in (files or {}).items():
            write(stage / name)
        page.save(stage / "index.html")
        write_json_atomic(stage / "summary.json", summary)
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    elif not quiet:
        click.echo(f"report: {out / 'index.html'}")


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
        grad = "gradients" if spec["needs_gradients"] else "any model"
        click.echo(f"{name:22} [{grad}] {params}")


@main.command()
@_model_options
@_input_options
@click.option("--method", default=DEFAULT_METHOD, show_default=True, help="Method name.")
@click.option("--target", type=int, help="Class to explain (default: the predicted class).")
@click.option("--param", "-p", "param_pairs", multiple=True, help="Method parameter key=value.")
@_output_options
@_command
def explain(
    model_spec, weights, trust_pickle, model_output, inputs, resize, mean, std, classes_file,
    method, target, param_pairs, out, quiet, as_json,
) -> None:  # fmt: skip
    """Explain each input with one method: OUT/<input>.npz per input and OUT/index.html."""
    from xaikit.attribution import explain as run_explain
    from xaikit.report import Page
    from xaikit.report.html import explanation_html

    loaded, model = _load(model_spec, weights, trust_pickle, model_output)
    data = _read_inputs(inputs, resize=resize, mean=mean, std=std, loaded=loaded)
    class_names = _class_names(classes_file, model, data.x)
    _check_methods([method], loaded=loaded)
    params = _params(param_pairs)
    page = Page(f"xaikit explain: {method}")
    page.section("explanations", f"{method} on {len(data)} input(s)")
    files, items = {}, []
    for name, x in zip(data.names, data.x, strict=True):
        e = run_explain(
            model, x, method=method, target=target, feature_names=data.feature_names, **params
        )
        page.heading(name)
        page.html(explanation_html(e, class_names=class_names))
        stem = _unique(f"{_safe_stem(name)}.{method}.npz", files)
        files[stem] = e.save
        items.append(
            {
                "input": name,
                "file": stem,
                "target": int(e.target),
                "target_name": _class_name(int(e.target), class_names),
                "predicted": int(np.argmax(e.prediction)),
                "predicted_name": _class_name(int(np.argmax(e.prediction)), class_names),
                "info": _jsonable({k: v for k, v in e.info.items() if np.ndim(v) == 0}),
            }
        )
    summary = {
        "command": "explain",
        "model": loaded.source,
        "method": method,
        "classes": class_names,
        "items": items,
    }
    _finish(out, page, summary, quiet=quiet, as_json=as_json, files=files)


def _unique(name: str, taken: dict) -> str:
    stem, i = name, 1
    while name in taken:
        i += 1
        name = f"{i}-{stem}"
    return name


@main.command()
@_model_options
@_input_options
@click.option("--methods", "method_names", help=METHODS_HELP)
@click.option(
    "--metrics",
    default="deletion,insertion",
    show_default=True,
    help="Comma-separated metric names (see xk.evaluate).",
)
@click.option("--target", type=int, help="Class to explain (default: the predicted class).")
@_baseline_option
@_output_options
@_command
def compare(
    model_spec, weights, trust_pickle, model_output, inputs, resize, mean, std, classes_file,
    method_names, metrics, target, baseline_text, out, quiet, as_json,
) -> None:  # fmt: skip
    """Explain each input with several methods and rank them on the metrics."""
    from xaikit.metrics import compare as run_compare
    from xaikit.report import Page
    from xaikit.report.local import default_methods

    loaded, model = _load(model_spec, weights, trust_pickle, model_output)
    data = _read_inputs(inputs, resize=resize, mean=mean, std=std, loaded=loaded)
    class_names = _class_names(classes_file, model, data.x)
    specs = _method_specs(method_names, data=data, loaded=loaded, defaults=default_methods)
    metric_names = _names(metrics) or []
    options, baseline = _metric_baseline(baseline_text, x=data.x)
    if baseline_text is None and not set(metric_names) & set(BASELINE_METRICS):
        options, baseline = {}, None  # the default is for the metrics that take one
    page = Page("xaikit compare")
    page.section("comparison", f"{len(specs)} methods on {len(data)} input(s)")
    if baseline is not None:
        page.paragraph(f"Removed parts are replaced by {baseline}.")
    items = []
    for name, x in zip(data.names, data.x, strict=True):
        result = run_compare(
            model, x, methods=specs, metrics=metric_names, target=target, **options
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
                "target_name": _class_name(int(first.target), class_names),
                "table": _jsonable(result.table),
                "rank": ranks,
            }
        )
    summary = {
        "command": "compare",
        "model": loaded.source,
        "baseline": baseline,
        "classes": class_names,
        "items": items,
    }
    _finish(out, page, summary, quiet=quiet, as_json=as_json)


def _label(index: int, class_names) -> str:
    from xaikit.report.html import class_label

    return class_label(index, class_names)


def _method_specs(method_names, *, data, loaded, defaults) -> dict[str, dict]:
    from xaikit.report.local import FAST_PARAMS

    image = data.x.ndim == 4
    if method_names:
        names = _names(method_names) or []
        _check_methods(names, loaded=loaded)
        return {n: dict(FAST_PARAMS.get(n, {})) for n in names}
    return defaults(image=image, gradients=loaded.has_gradients)


@main.command()
@_model_options
@_input_options
@click.option("--methods", "method_names", help=METHODS_HELP)
@click.option("--target", type=int, help="Class to explain (default: the predicted class).")
@click.option(
    "--sanity/--no-sanity",
    default=True,
    show_default=True,
    help="Run the model-parameter randomisation check (PyTorch modules).",
)
@_baseline_option
@_output_options
@_command
def report(
    model_spec, weights, trust_pickle, model_output, inputs, resize, mean, std, classes_file,
    method_names, target, sanity, baseline_text, out, quiet, as_json,
) -> None:  # fmt: skip
    """A report on the model's decision for each input: prediction, every method side by side,
    and each method's scorecard (deletion, insertion, sanity check)."""
    from xaikit._progress import progress_enabled
    from xaikit.report import Page
    from xaikit.report.local import add_prediction, add_scorecard, default_methods, scorecard

    loaded, model = _load(model_spec, weights, trust_pickle, model_output)
    data = _read_inputs(inputs, resize=resize, mean=mean, std=std, loaded=loaded)
    class_names = _class_names(classes_file, model, data.x)
    specs = _method_specs(method_names, data=data, loaded=loaded, defaults=default_methods)
    options, baseline = _metric_baseline(baseline_text, x=data.x)
    page = Page(f"xaikit report: {Path(loaded.source).name}")
    page.section("model", "The model")
    page.table(
        ["", ""],
        [("model", loaded.source), ("kind", loaded.kind), ("inputs", len(data)),
         ("methods", ", ".join(specs))],
    )  # fmt: skip
    items = []
    for i, (name, x) in enumerate(zip(data.names, data.x, strict=True)):
        page.section(f"input-{i + 1}", f"Input {i + 1}: {name}")
        predicted = add_prediction(page, model, x, name=name, class_names=class_names)
        results = scorecard(
            model, x, methods=specs, target=target, sanity=sanity,
            feature_names=data.feature_names, progress=progress_enabled(),
            metric_options=options,
        )  # fmt: skip
        add_scorecard(page, results, baseline=baseline)
        items.append(
            {
                "input": name,
                "predicted": predicted,
                "predicted_name": _class_name(predicted, class_names),
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
    _finish(out, page, summary, quiet=quiet, as_json=as_json)


@main.command()
@_model_options
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
@click.option("--seed", type=int, default=0, show_default=True)
@_output_options
@_command
def visualize(
    model_spec, weights, trust_pickle, model_output, layer, channels, targets, steps, raw, tv,
    input_shape, value_range, seed, out, quiet, as_json,
) -> None:  # fmt: skip
    """What filters detect (--layer) or what classes look like (--target) to the model."""
    from xaikit.featureviz import objectives
    from xaikit.featureviz import visualize as run_visualize
    from xaikit.report import Page
    from xaikit.report.html import visualization_html

    if (layer is None) == (targets is None):
        raise click.UsageError("give either --layer (filters) or --target (classes)")
    loaded, model = _load(model_spec, weights, trust_pickle, model_output)
    if not loaded.has_gradients:
        raise ValueError(f"model: feature visualisation needs gradients; {loaded.kind} gives none")
    shape = tuple(int(v) for v in _floats(input_shape, name="input_shape")) if input_shape else None
    if layer is not None:
        chosen = [int(c) for c in _floats(channels, name="channels")] if channels else None
        objective = objectives.channels(layer, chosen)
        what = f"filters of {layer}"
    else:
        if targets.strip() == "all":
            k = model.scores(np.zeros((1, *shape), np.float32)).shape[1] if shape else None
            if k is None:
                raise ValueError("target: 'all' needs --input-shape to count the classes")
            classes = list(range(k))
        else:
            classes = [int(c) for c in _floats(targets, name="target")]
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
    _finish(out, page, summary, quiet=quiet, as_json=as_json, files=files)


def _save_npy(path: Path, array: np.ndarray) -> None:
    import io

    from xaikit.report.output import write_bytes_atomic

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())


@main.command()
@_model_options
@_input_options
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="One label per input item: .npy, or a text file with one per line.")  # fmt: skip
@click.option("--layers", required=True, help="Comma-separated layer paths, shallow to deep.")
@click.option("--kind", type=click.Choice(["linear", "mlp"]), default="linear", show_default=True)
@click.option(
    "--project", "how", type=click.Choice(["pca", "tsne", "none"]), default="pca",
    show_default=True, help="Also project each layer to 2-D.",
)  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@_output_options
@_command
def probe(
    model_spec, weights, trust_pickle, model_output, inputs, resize, mean, std, classes_file,
    labels, layers, kind, how, seed, out, quiet, as_json,
) -> None:  # fmt: skip
    """Probe each layer for the labels (with a control task) and project the layers to 2-D."""
    from xaikit.loading import load_labels
    from xaikit.report import Page
    from xaikit.report.html import probe_html, projection_html
    from xaikit.representations import probe as run_probe
    from xaikit.representations import project_layers

    loaded, model = _load(model_spec, weights, trust_pickle, model_output)
    if not loaded.has_gradients:  # activations need hooks on a PyTorch module
        raise ValueError(f"model: probing reads layer activations; a {loaded.kind} model has none")
    data = _read_inputs(inputs, resize=resize, mean=mean, std=std, loaded=loaded)
    y = load_labels(labels, n=len(data))
    names = _names(layers) or []
    result = run_probe(model, data.x, y, layers=names, kind=kind, seed=seed)
    page = Page("xaikit probe")
    page.section("probes", "Probes per layer")
    page.html(probe_html(result))
    if how != "none":
        page.section("projections", "Layer projections")
        page.html(projection_html(project_layers(model, data.x, layers=names, how=how, labels=y)))
    summary = {
        "command": "probe",
        "model": loaded.source,
        "accuracy": result.accuracy,
        "control_accuracy": result.control_accuracy,
        "selectivity": result.selectivity,
        "chance": result.chance,
    }
    _finish(out, page, summary, quiet=quiet, as_json=as_json)


@main.command()
@_model_options
@_table_input_options
@click.option("--kind", type=click.Choice(["tree", "linear", "rules"]), default="tree",
              show_default=True)  # fmt: skip
@click.option("--max-depth", type=int, default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_output_options
@_command
def surrogate(
    model_spec, weights, trust_pickle, model_output, inputs, classes_file, kind, max_depth, seed,
    out, quiet, as_json,
) -> None:  # fmt: skip
    """Fit a readable mimic (tree, sparse linear, rules) to the model on tabular inputs."""
    from xaikit.report import Page
    from xaikit.report.html import surrogate_html
    from xaikit.report.output import write_text_atomic
    from xaikit.surrogates import surrogate as fit_surrogate

    loaded, model = _load(model_spec, weights, trust_pickle, model_output)
    data = _read_inputs(inputs, resize=None, mean=None, std=None, loaded=loaded)
    if data.x.ndim != 2:
        raise ValueError(f"input: a surrogate needs table rows (N, F), got shape {data.x.shape}")
    class_names = _class_names(classes_file, model, data.x)
    s = fit_surrogate(
        model, data.x, kind=kind, max_depth=max_depth, feature_names=data.feature_names,
        class_names=class_names, seed=seed,
    )  # fmt: skip
    page = Page(f"xaikit surrogate: {kind}")
    page.section("surrogate", f"A {kind} mimicking {Path(loaded.source).name}")
    page.html(surrogate_html(s))
    rules = s.rules()
    summary = {
        "command": "surrogate",
        "model": loaded.source,
        "kind": kind,
        "classes": class_names,
        "fidelity": s.fidelity,
        "complexity": s.complexity,
        "rules": rules,
    }
    files = {"rules.txt": lambda p: write_text_atomic(p, rules + "\n")}
    _finish(out, page, summary, quiet=quiet, as_json=as_json, files=files)


@main.command()
@_model_options
@_input_options
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path),
              help="One class per item (default: explain the predicted class).")  # fmt: skip
@click.option("--method", default="integrated_gradients", show_default=True, help="Method name.")
@click.option("--param", "-p", "param_pairs", multiple=True, help="Method parameter key=value.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the audit's shards; a rerun resumes from it.")  # fmt: skip
@_output_options
@_command
def audit(
    model_spec, weights, trust_pickle, model_output, inputs, resize, mean, std, classes_file,
    labels, method, param_pairs, backend, work, out, quiet, as_json,
) -> None:  # fmt: skip
    """Explain a whole data set and look for shortcuts (Clever Hans) the model relies on."""
    from xaikit._progress import progress_enabled
    from xaikit.audit import audit as run_audit
    from xaikit.loading import load_labels
    from xaikit.report import Page
    from xaikit.report.html import class_label

    loaded, model = _load(model_spec, weights, trust_pickle, model_output)
    data = _read_inputs(inputs, resize=resize, mean=mean, std=std, loaded=loaded)
    class_names = _class_names(classes_file, model, data.x)
    _check_methods([method], loaded=loaded)
    y = None if labels is None else load_labels(labels, n=len(data))
    result = run_audit(
        model, data.x, labels=y, method=method, backend=backend, out=work,
        params=_params(param_pairs), progress=progress_enabled(),
    )  # fmt: skip
    page = Page(f"xaikit audit: {Path(loaded.source).name}")
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
    page.figure(result.plot(), alt="audit: relevance per class and findings")
    findings = [
        {"target": int(f.target), "target_name": _class_name(int(f.target), class_names),
         "kind": f.kind, "region": [int(v) for v in f.region],
         "relevance_share": float(f.relevance_share), "consistency": float(f.consistency),
         "n_images": int(f.n_images), "transplant_rate": f.transplant_rate,
         "control_rate": f.control_rate, "text": str(f)}
        for f in result.findings
    ]  # fmt: skip
    summary = {
        "command": "audit",
        "model": loaded.source,
        "method": method,
        "classes": class_names,
        "findings": findings,
    }
    files = {"audit": lambda p: result.save(p)}  # audit.npz and audit.json, no pickle
    _finish(out, page, summary, quiet=quiet, as_json=as_json, files=files)


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
@_command
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
