"""Shared fixtures: a fresh model cache for the whole session and the two default CNNs."""

from __future__ import annotations

import os

import pytest

from figure_check import figure_problems, recording_figures
from xaikit.datasets import load_default_cnn


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """A fresh, empty model cache for this test session, also exported as XAIKIT_CACHE_DIR.

    Every test (and any CLI run from a test) trains into it instead of reusing the user's
    cache, so the suite really exercises training.
    """
    path = tmp_path_factory.mktemp("xaikit-cache")
    previous = os.environ.get("XAIKIT_CACHE_DIR")
    os.environ["XAIKIT_CACHE_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("XAIKIT_CACHE_DIR", None)
    else:
        os.environ["XAIKIT_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def clean_cnn(cache_dir):
    """The default SmallCNN trained on clean MNIST-5k (trained once per session)."""
    return load_default_cnn("clean", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def watermark_cnn(cache_dir):
    """The default SmallCNN trained on MNIST-5k with the planted watermark shortcut."""
    return load_default_cnn("watermark", cache_dir=cache_dir)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """After each test, check every figure it drew: no text over text, no colour bar over axes."""
    if item.get_closest_marker("overlapping_figures"):  # a test of the check itself
        return (yield)
    with recording_figures() as made:
        result = yield
    problems = [f"figure {i}: {p}" for i, fig in enumerate(made) for p in figure_problems(fig)]
    made.clear()
    assert not problems, "overlapping figure elements: " + "; ".join(problems)
    return result
