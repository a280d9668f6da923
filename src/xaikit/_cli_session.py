"""What every ``xaikit`` command shares: its plumbing options, declared once, and a session.

A command declares only its own options and receives a :class:`Session`::

    @main.command()
    @session_command(inputs="images")
    @click.option("--method", ...)
    def explain(session, *, method): ...

:func:`session_command` adds the model options (``--model``, ``--weights``,
``--trust-pickle``, ``--output``) before the command's own, the inputs (``INPUTS...``, the
image options ``--resize``, ``--mean``, ``--std``, and ``--classes``) where the command reads
inputs, and the output options (``--out``, ``--quiet``, ``--json``) after them; it turns any
failure into one line (``Error: <argument>: ...``, exit status 1) and Ctrl-C into exit status
130. The session loads the model, the inputs and the class names on first use, in the order
the command asks for them, and writes the output folder all or nothing.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import click

from xaikit._progress import progress_enabled, set_progress
from xaikit._validation import one_line

__all__ = [
    "INTERRUPTED",
    "Session",
    "floats",
    "guarded",
    "integers",
    "names",
    "session_command",
]

# The exit status of a command stopped by Ctrl-C (SIGINT), as shells report it: 128 + 2.
INTERRUPTED = 130

MODEL_OPTIONS = (
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
        "--random-weights",
        is_flag=True,
        help="Accept a factory that builds an untrained network (no --weights).",
    ),
    click.option(
        "--device",
        help="Where the model runs: cpu, cuda, cuda:N or mps (default: where it loads, the CPU).",
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
)
INPUTS = click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
IMAGE_OPTIONS = (
    click.option(
        "--resize", nargs=2, type=int, metavar="H W", help="Resize images to H x W pixels."
    ),
    click.option("--mean", help="Per-channel mean to subtract, e.g. 0.485,0.456,0.406."),
    click.option("--std", help="Per-channel standard deviation to divide by."),
)
CLASSES = click.option(
    "--classes",
    "classes_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Class names: a text file with one name per line, or a JSON list.",
)
OUTPUT_OPTIONS = (
    click.option(
        "--out",
        "out",
        type=click.Path(file_okay=False, path_type=Path),
        required=True,
        help="Output directory (index.html, summary.json, ...).",
    ),
    click.option("--quiet", "-q", is_flag=True, help="No progress, only errors."),
    click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
)
# The keywords those options give, which become the session (the command gets the rest).
PLUMBING = (
    "model_spec", "weights", "random_weights", "device", "trust_pickle", "model_output",
    "inputs", "resize", "mean", "std", "classes_file", "out", "quiet", "as_json",
)  # fmt: skip
INPUT_KINDS = (None, "images", "tables")


class Session:
    """One run of a command: the user's model, inputs and class names, and its output.

    Each part is loaded on first use and kept, so a command asks for what it needs in the order
    its checks should run (a command on a model without gradients refuses before reading any
    input). Every failure is an error naming the argument (``model: ...``, ``input: ...``).
    """

    def __init__(
        self,
        *,
        model_spec: str,
        weights: Path | None = None,
        random_weights: bool = False,
        device: str | None = None,
        trust_pickle: bool = False,
        model_output: str | None = None,
        inputs: tuple[Path, ...] = (),
        resize: tuple[int, int] | None = None,
        mean: str | None = None,
        std: str | None = None,
        classes_file: Path | None = None,
        out: Path,
        quiet: bool = False,
        as_json: bool = False,
    ) -> None:
        self.model_spec, self.weights = model_spec, weights
        self.random_weights, self.device = random_weights, device
        self.trust_pickle, self.model_output = trust_pickle, model_output
        self.inputs, self.resize, self.mean, self.std = tuple(inputs), resize, mean, std
        self.classes_file = classes_file
        self.out, self.quiet, self.as_json = out, quiet, as_json

    @cached_property
    def _models(self) -> tuple[Any, Any]:
        from xaikit.loading import load_model
        from xaikit.model import Model

        loaded = load_model(
            self.model_spec,
            weights=self.weights,
            trust_pickle=self.trust_pickle,
            output=self.model_output,
            random_weights=self.random_weights,
            device=self.device,
        )
        return loaded, Model(loaded.model, output=loaded.output)

    @property
    def loaded(self):
        """The :class:`xaikit.loading.LoadedModel` (kind, source, whether it has gradients)."""
        return self._models[0]

    @property
    def model(self):
        """The loaded model as an :class:`xaikit.Model`."""
        return self._models[1]

    @cached_property
    def data(self):
        """The inputs as one batch (:class:`xaikit.loading.Inputs`); text lines are refused."""
        from xaikit.loading import LoadError, load_inputs

        channels = self.loaded.input_channels
        table = getattr(self.model, "table", None)  # a model fitted on a DataFrame has one
        data = load_inputs(
            list(self.inputs),
            resize=tuple(self.resize) if self.resize else None,
            mean=floats(self.mean, name="mean"),
            std=floats(self.std, name="std"),
            channels=channels,
            columns=None if table is None else table.feature_names,
        )
        if data.kind == "text":
            raise LoadError(
                "input: text lines need a text model and tokenizer; this command explains "
                "image, .npy and CSV inputs"
            )
        if channels is not None and data.x.ndim != 4:
            self._check_flat_items(data, channels)
        return data

    def _check_flat_items(self, data, channels: int) -> None:
        """Refuse, naming the files, items without an image's axes that a model whose first
        layer is a convolution fails on (one that reshapes flat rows itself is fine)."""
        from xaikit.loading import LoadError

        try:
            self.model.scores(data.x[:1])
        except Exception as err:
            files = ", ".join(repr(str(p)) for p in self.inputs)
            raise LoadError(
                f"input: {files} holds items of shape {data.x.shape[1:]}, which the model (its "
                f"first layer a convolution of {channels} channels) does not take: "
                f"{one_line(err)[:200]}"
            ) from err

    @cached_property
    def class_names(self) -> list[str] | None:
        """The ``--classes`` names, as many as the model has classes; without the file, a
        scikit-learn classifier's own labels (``classes_``, when they are not 0..K-1: the
        class at position 0 of [1, 2, 3] is "1"); else None."""
        from xaikit.loading import load_class_names

        if self.classes_file is None:
            labels = getattr(self.loaded.model, "classes_", None)
            if labels is None or list(labels) == list(range(len(labels))):
                return None
            return [str(label) for label in labels]
        k = self.model.scores(self.data.x[:1]).shape[1]
        return load_class_names(self.classes_file, n_classes=k)

    def class_name(self, index: int) -> str | None:
        """The name ``--classes`` gives class ``index`` (None without it), for summary.json."""
        names = self.class_names
        if names is None or not 0 <= index < len(names):
            return None
        return names[index]

    @property
    def progress(self) -> bool:
        """Whether progress bars are shown (not with ``--quiet`` or ``--json``, nor off a TTY)."""
        return progress_enabled()

    def check_methods(self, methods: list[str], *, option: str = "methods") -> None:
        """Refuse an unknown method, or one that needs gradients the model does not give.

        ``option``: the command's option that named them (``method`` or ``methods``).
        """
        from xaikit.attribution import methods as registered
        from xaikit.attribution.registry import torchscript_methods

        known = registered()
        for name in methods:
            if name not in known:
                raise ValueError(f"{option}: unknown method {name!r}; known: {sorted(known)}")
            if known[name]["needs_gradients"] and not self.loaded.has_gradients:
                free = sorted(n for n, m in known.items() if not m["needs_gradients"])
                raise ValueError(
                    f"{option}: {name!r} needs {known[name]['needs']}, which a "
                    f"{self.loaded.kind} model ({self.loaded.source}) does not give; use one of "
                    f"{free}"
                )
            if known[name]["needs_hooks"] and not self.hooks:
                free = torchscript_methods()
                raise ValueError(
                    f"{option}: {name!r} needs forward hooks on the model's layers, which a "
                    f"TorchScript model ({self.loaded.source}) does not run; use one of {free}"
                )

    @property
    def hooks(self) -> bool:
        """Whether the model runs forward hooks (a TorchScript module does not)."""
        return self.loaded.kind != "torchscript"

    def write(
        self, page: Any, summary: dict, *, files: dict[str, Callable[[Path], Any]] | None = None
    ) -> None:
        """Write index.html, summary.json and ``files`` (name -> writer of that path) into
        ``--out``, all or nothing; then print the summary (``--json``) or the report's path."""
        from xaikit.report.output import staged_dir, write_json_atomic

        with staged_dir(self.out) as stage:
            for name, write in (files or {}).items():
                write(stage / name)
            page.save(stage / "index.html")
            write_json_atomic(stage / "summary.json", summary)
        if self.as_json:
            click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        elif not self.quiet:
            click.echo(f"report: {self.out / 'index.html'}")


def session_command(
    *, inputs: str | None = None, classes: bool = True
) -> Callable[[Callable], Callable]:
    """Give a command the shared options and a :class:`Session` built from them.

    Parameters
    ----------
    inputs : {None, "images", "tables"}
        Whether the command reads inputs: ``"images"`` adds ``INPUTS...``, ``--resize``,
        ``--mean``, ``--std`` and ``--classes``; ``"tables"`` only ``INPUTS...`` and
        ``--classes``.
    classes : bool
        Whether the command shows the model's classes (``--classes`` names them); a command
        whose labels are the user's own (``probe``) has no use for the option, so it has none.

    The decorated function is called as ``function(session, **own_options)``. Its own options
    (declared with ``click.option`` below this decorator) are listed between the model and
    input options and the output options.
    """
    if inputs not in INPUT_KINDS:
        raise ValueError(f"inputs: expected one of {INPUT_KINDS}, got {inputs!r}")
    leading = list(MODEL_OPTIONS)
    if inputs is not None:
        leading += [INPUTS, *(IMAGE_OPTIONS if inputs == "images" else ())]
        leading += [CLASSES] if classes else []

    def decorate(function: Callable) -> Callable:
        own = function.__dict__.pop("__click_params__", [])

        @guarded
        @functools.wraps(function)
        def run(**kwargs: Any) -> None:
            plumbing = {name: kwargs.pop(name) for name in PLUMBING if name in kwargs}
            function(Session(**plumbing), **kwargs)

        # click lists a function's options in the reverse of their memo: the last one added
        # is shown first. So: the output options (shown last), the own, then the leading ones.
        run.__dict__.pop("__click_params__", None)
        for option in reversed(OUTPUT_OPTIONS):
            option(run)
        run.__click_params__.extend(own)
        for option in reversed(leading):
            option(run)
        return run

    return decorate


def guarded(function: Callable) -> Callable:
    """Turn any failure into one line on stderr and exit status 1; set up progress bars.

    Reads the command's ``quiet``, ``as_json`` and ``out`` keywords: progress bars only for a
    terminal without ``--quiet`` or ``--json``, and Ctrl-C says that ``--out`` is as it was.
    """

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


def floats(text: str | None, *, name: str) -> list[float] | None:
    """Comma-separated numbers (``"0.5,0.25"``); None stays None; an error names ``name``."""
    return _numbers(text, name=name, convert=float, what="numbers")


def integers(text: str | None, *, name: str) -> list[int] | None:
    """Comma-separated whole numbers (``"1,28,28"``); None stays None; an error names ``name``.

    ``1.7`` is refused, not cut to 1: a count or an index is a whole number or a mistake.
    """
    return _numbers(text, name=name, convert=int, what="whole numbers")


def _numbers(text: str | None, *, name: str, convert, what: str) -> list | None:
    if text is None:
        return None
    try:
        return [convert(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated {what}, got {text!r}") from None


def names(text: str | None) -> list[str] | None:
    """Comma-separated names, stripped; None stays None."""
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]
