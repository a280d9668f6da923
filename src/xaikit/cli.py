"""The ``xaikit`` command. Commands are thin: parse, call the library, print the result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from xaikit._progress import set_progress
from xaikit._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="xaikit")
def main() -> None:
    """xaikit: explain machine-learning models, with proof of each explanation's quality."""


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
def demo(out: Path, seed: int, quiet: bool, as_json: bool) -> None:
    """Run the embedded default end to end and write OUT/index.html."""
    from xaikit.demo import run_demo

    set_progress(not quiet and not as_json and sys.stderr.isatty())
    try:
        summary = run_demo(out, seed=seed)
    except (ValueError, TypeError, OSError) as err:
        raise click.ClickException(str(err)) from err
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
