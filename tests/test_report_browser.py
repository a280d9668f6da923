"""The demo end to end, and its report opened in a real browser (Debian's headless chromium).

The demo runs once for this module, and every figure it draws is kept for the overlap check
(tests/figure_check.py). Playwright's Python API drives ``/usr/bin/chromium`` (installed here
with apt-get when missing; no Playwright browser download). The checks: no console error, no
request other than the file itself, every image decoded, every section present and ending with
a link back to the contents, a user's ``<script>`` shown as text, and the print style sheet in
effect when printing. For a reviewer, the test saves a full-page screenshot
(``demo-report.png``), one per section (``section-<id>.png``) and the page printed to PDF
(``demo-report.pdf``) in ``$XAIKIT_SCREENSHOTS`` when set (pytest keeps only its last three
temporary folders), else in ``shots/`` under pytest's base temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from figure_check import figure_problems, recording_figures
from xaikit.cli import main

CHROMIUM = "/usr/bin/chromium"
DEMO_SECTIONS = [
    "models", "prediction", "local-methods", "shortcut", "audit", "filters", "classes",
    "representations", "surrogate", "text",
]  # fmt: skip
EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    """Run ``xaikit demo`` once, into the session's fresh model cache.

    Not through the ``clean_cnn`` fixtures: the demo trains on one torch thread, which on this
    busy 2-core machine is many times faster than two threads spin-waiting on each other.
    """
    out = tmp_path_factory.mktemp("demo") / "report"
    with recording_figures() as figures:
        result = CliRunner().invoke(main, ["demo", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output), list(figures)


@pytest.fixture(scope="module")
def chromium():
    """Path of Debian's chromium, installed with apt-get when missing (we may be root)."""
    pytest.importorskip("playwright.sync_api", reason="playwright (a dev dependency) is missing")
    if not os.path.exists(CHROMIUM) and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        if subprocess.run(install, capture_output=True, env=env, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=900)
            subprocess.run(install, capture_output=True, env=env, timeout=900)
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing and could not be installed with apt-get (not root?)")
    return CHROMIUM


def _open(chromium_path, html_file, *, screenshot=None, sections_to=None, pdf=None):
    """Load ``html_file`` in headless chromium; return what the page did and holds.

    ``screenshot``: a full-page PNG; ``sections_to``: a folder for one PNG per section;
    ``pdf``: the page printed (print style sheet) to this file.
    """
    from playwright.sync_api import sync_playwright

    seen = {"console_errors": [], "page_errors": [], "requests": [], "dialogs": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "console",
                lambda m: m.type == "error" and seen["console_errors"].append(m.text),
            )
            page.on("pageerror", lambda e: seen["page_errors"].append(str(e)))
            page.on("request", lambda r: seen["requests"].append(r.url))
            page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
            page.goto(html_file.resolve().as_uri(), wait_until="load")
            seen["images"] = page.evaluate(
                "() => Array.from(document.images).map(i => "
                "({complete: i.complete, width: i.naturalWidth, alt: i.alt}))"
            )
            seen["sections"] = page.evaluate(
                "() => Array.from(document.querySelectorAll('section')).map(s => s.id)"
            )
            seen["scripts"] = page.evaluate("() => document.scripts.length")
            seen["text"] = page.inner_text("body")
            seen["back_links"] = page.evaluate(
                "() => Array.from(document.querySelectorAll('section')).map(s => "
                "{const a = s.lastElementChild.querySelector('a'); "
                "return a ? a.getAttribute('href') : null})"
            )
            seen["contents"] = page.evaluate(
                "() => Array.from(document.querySelectorAll('nav#contents a')).map("
                "a => a.getAttribute('href'))"
            )
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
            if sections_to is not None:
                for sid in seen["sections"]:
                    page.locator(f"section#{sid}").screenshot(
                        path=str(sections_to / f"section-{sid}.png")
                    )
            if seen["back_links"] and seen["back_links"][0]:  # follow one: the contents show
                page.locator(f"section#{seen['sections'][-1]} p.back a").click()
                seen["hash_after_back"] = page.evaluate("() => location.hash")
                seen["contents_top"] = page.evaluate(
                    "() => document.getElementById('contents').getBoundingClientRect().top"
                )
            page.emulate_media(media="print")
            seen["print"] = page.evaluate(
                "() => ({back: getComputedStyle(document.querySelector('p.back') || "
                "document.body).display, pre: getComputedStyle(document.querySelector('pre') || "
                "document.body).whiteSpace, width: getComputedStyle(document.body).maxWidth})"
            )
            if pdf is not None:
                page.pdf(path=str(pdf), format="A4")
        finally:
            browser.close()
    return seen


@pytest.mark.slow
def test_demo_end_to_end(demo_out):
    out, summary, _ = demo_out
    assert summary["models"]["clean"]["clean_test_accuracy"] >= 0.96
    assert summary["models"]["watermark"]["clean_test_accuracy"] >= 0.95
    assert summary["models"]["watermark"]["marked_predicted_as_watermark_class"] >= 0.5
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["sections"] == DEMO_SECTIONS
    local = summary["local_methods"]
    assert len(local) == 10 and all(0 <= m["deletion"] <= 1 for m in local.values())
    assert all(m["insertion"] > m["deletion"] for m in local.values())
    assert local["saliency"]["sanity_passed"] is True  # Adebayo et al.: gradients pass
    assert local["guided_backprop"]["sanity_passed"] is False  # ... guided backprop fails
    assert summary["probe"]["accuracy"]["relu3"] > summary["probe"]["accuracy"]["pool1"]
    assert summary["class_visualisation"]["generator_images_classified_as_target"] >= 0.8
    assert summary["surrogate"]["fidelity"] >= 0.85
    page = (out / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page  # readable without JavaScript: there is none
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.slow
def test_every_demo_figure_is_free_of_overlaps(demo_out):
    _, _, figures = demo_out
    assert len(figures) >= 20  # every figure of the page, the text section's included
    problems = [f"figure {i}: {p}" for i, fig in enumerate(figures) for p in figure_problems(fig)]
    assert problems == []


@pytest.mark.slow
def test_demo_report_in_chromium(demo_out, chromium, tmp_path_factory):
    out, _, _ = demo_out
    shots = Path(os.environ.get("XAIKIT_SCREENSHOTS", tmp_path_factory.getbasetemp() / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    shot, pdf = shots / "demo-report.png", shots / "demo-report.pdf"
    seen = _open(chromium, out / "index.html", screenshot=shot, sections_to=shots, pdf=pdf)
    assert seen["console_errors"] == [] and seen["page_errors"] == []
    assert seen["requests"] == [(out / "index.html").resolve().as_uri()]  # nothing else
    assert seen["sections"] == DEMO_SECTIONS
    assert len(seen["images"]) >= 12
    undecoded = [i["alt"] for i in seen["images"] if not (i["complete"] and i["width"] > 0)]
    assert undecoded == []
    assert seen["scripts"] == 0 and seen["dialogs"] == []
    assert "Every local method, side by side" in seen["text"]
    assert shot.stat().st_size > 50_000  # a real full-page picture
    # Contents: a link to each section, and each section ends with a link back to them.
    assert seen["contents"] == [f"#{sid}" for sid in DEMO_SECTIONS]
    assert seen["back_links"] == ["#contents"] * len(DEMO_SECTIONS)
    assert seen["hash_after_back"] == "#contents" and abs(seen["contents_top"]) < 5
    # On paper: no back links, rules wrap instead of being cut, the whole width.
    assert seen["print"] == {"back": "none", "pre": "pre-wrap", "width": "none"}
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 100_000
    for sid in DEMO_SECTIONS:
        assert (shots / f"section-{sid}.png").stat().st_size > 5_000, sid
    print(f"screenshots: {shots}")


NET_PY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(2 * 8 * 8, 3))
    """
)


def test_class_name_script_shows_as_text_in_chromium(tmp_path, chromium):
    (tmp_path / "net.py").write_text(NET_PY)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32))
    (tmp_path / "classes.txt").write_text(f"cat\ndog\n{EVIL}\n")
    out = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        [
            "report", "--model", f"{tmp_path / 'net.py'}:make", str(tmp_path / "x.npy"),
            "--classes", str(tmp_path / "classes.txt"), "--target", "2",
            "--methods", "saliency", "--no-sanity", "--out", str(out), "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    seen = _open(chromium, out / "index.html")
    assert seen["dialogs"] == [] and seen["scripts"] == 0  # the alert never ran
    assert f"2 ({EVIL})" in seen["text"]  # ... it is shown, as text
    assert seen["console_errors"] == [] and len(seen["requests"]) == 1
