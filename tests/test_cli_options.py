"""Every command keeps its options: names, types, defaults, help and the whole ``--help`` page.

``cli_options.json`` was written from the command before its shared options were declared once
(issue 17, item 7). After a deliberate change to an option, regenerate it with
``PYTHONPATH=src python tests/test_cli_options.py`` and review the diff.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import pytest

from xaikit.cli import main

SNAPSHOT = Path(__file__).with_name("cli_options.json")


def _describe(name: str) -> dict:
    """One command's parameters (as click describes them, less the internal names) and help."""
    command = main.commands[name]
    # The group's settings (-h as well as --help) reach the command's context, as when run.
    parent = click.Context(
        main, info_name="xaikit", terminal_width=80, max_content_width=80, **main.context_settings
    )
    ctx = click.Context(command, parent=parent, info_name=name)
    params = []
    for param in command.params:
        info = param.to_info_dict()
        info.pop("name")  # the Python name of the keyword is not part of the interface
        info["metavar"] = param.make_metavar(ctx)
        info["show_default"] = getattr(param, "show_default", None)
        params.append(info)
    return json.loads(json.dumps({"params": params, "help": command.get_help(ctx)}, default=str))


def _snapshot() -> dict:
    return {name: _describe(name) for name in main.commands}


# Missing only while it is being written; test_the_same_commands then fails.
EXPECTED = json.loads(SNAPSHOT.read_text()) if SNAPSHOT.exists() else {}


def test_the_same_commands():
    assert sorted(main.commands) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_same_options(name):
    got = _describe(name)
    assert [p["opts"] for p in got["params"]] == [p["opts"] for p in EXPECTED[name]["params"]]
    assert got["params"] == EXPECTED[name]["params"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_same_help_page(name):
    assert _describe(name)["help"] == EXPECTED[name]["help"]


if __name__ == "__main__":  # regenerate the snapshot (review the diff before committing)
    SNAPSHOT.write_text(json.dumps(_snapshot(), indent=1, ensure_ascii=False) + "\n")
    sys.exit(0)
