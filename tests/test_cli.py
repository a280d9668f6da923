"""The `xaikit` command and the demo end to end."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

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


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, clean_cnn, watermark_cnn):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["models"]["clean"]["clean_test_accuracy"] >= 0.96
    assert summary["models"]["watermark"]["clean_test_accuracy"] >= 0.95
    assert summary["models"]["watermark"]["marked_predicted_as_watermark_class"] >= 0.5
    assert json.loads((out / "summary.json").read_text()) == summary
    page = (out / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "data:image/png;base64," in page
    # Self-contained: no script, no external resource.
    assert "<script" not in page
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page)
    assert not list(out.glob(".*.tmp"))  # nothing half-written left behind
