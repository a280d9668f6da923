"""Writing outputs so that a reader never sees half of them.

A single file is written to a temporary file beside it and renamed over the target
(``os.replace`` is atomic on one file system). A command that writes several files stages them
in a temporary folder next to the output folder and moves them in only once all of them are
complete: if anything fails, the output folder is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["staged_dir", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def check_out_dir(out: str | os.PathLike, *, name: str = "out") -> Path:
    """The output folder as a Path; an error naming ``name`` when it is an existing file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{name}: expected a directory, got the file {str(out)!r}")
    return out


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, *, name: str = "out") -> Iterator[Path]:
    """Yield an empty staging folder; on success its files replace those of the same name in
    ``out`` (created when missing), on any error it is removed and ``out`` is untouched."""
    out = check_out_dir(out, name=name)
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".staging"))
    try:
        yield stage
        if not out.exists():
            os.chmod(stage, 0o755)
            os.replace(stage, out)  # one rename: the folder appears complete
            return
        for item in sorted(stage.rglob("*")):
            target = out / item.relative_to(stage)
            if item.is_dir():
                target.mkdir(exist_ok=True)
            else:
                os.replace(item, target)  # each file atomically, only after all were written
    finally:
        shutil.rmtree(stage, ignore_errors=True)
