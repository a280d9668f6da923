"""Trained weights xaikit makes itself (default CNNs, generators), cached on disk.

Files are written atomically (temporary file, then rename) and read with
``torch.load(weights_only=True)``; an unreadable file is ignored with a warning and retrained.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from xaikit import _files


def default_cache_dir() -> Path:
    """Where xaikit keeps trained default models.

    ``$XAIKIT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/xaikit``, else ``~/.cache/xaikit``.
    """
    if os.environ.get("XAIKIT_CACHE_DIR"):
        return Path(os.environ["XAIKIT_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "xaikit"


def load_weights(module: nn.Module, path: Path, *, what: str) -> bool:
    """Load cached weights from ``path`` into ``module``; False when absent or unreadable."""
    if not path.exists():
        return False
    try:
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return True
    except Exception as err:  # any unreadable file: truncated, foreign, wrong keys
        warnings.warn(
            f"ignoring unreadable cached {what} {path} ({err}); training a new one",
            RuntimeWarning,
            stacklevel=3,
        )
        return False


def save_weights(module: nn.Module, path: Path, *, what: str) -> None:
    """Write ``module``'s weights to ``path`` atomically; a failing disk only warns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _files.atomic_write(path) as handle:  # a reader never sees half a file
            torch.save(module.state_dict(), handle)
    except OSError as err:  # a read-only or full disk must not cost the caller the model
        warnings.warn(
            f"could not cache the {what} in {path.parent} ({err})", RuntimeWarning, stacklevel=3
        )
