"""Writing outputs so that a reader never sees half of them, even after a kill.

A single file is written to a temporary file beside it and renamed over the target
(``os.replace`` is atomic on one file system). A command that writes several files builds the
whole new output folder beside the old one (a hidden ``.<name>.<hash>.<pid>-<random>.staging``
folder): its own files, plus hard links to the old folder's files it does not replace. Only
then are the two folders swapped in one step (``renameat2(RENAME_EXCHANGE)`` on Linux,
``renamex_np(RENAME_SWAP)`` on macOS), so at every instant ``out`` is either the old folder or
the new one, whole, and the old one is removed afterwards. Where the system cannot swap, the old
folder is renamed away (``.old``) and the new one renamed in; a kill between the two renames
leaves no ``out`` for a moment, and the next run puts the old folder back before writing.

Folders left by a killed run (its process is gone) are removed by the next run into the same
``out``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xaikit import _files

__all__ = ["staged_dir", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, readable by everyone (a report is meant to be
    shared, whatever the umask of the caller)."""
    return _files.write_bytes_atomic(path, data, mode=0o644)


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
    """Yield an empty staging folder; on success it becomes ``out`` in one step.

    Files of an existing ``out`` that the staging folder does not hold are kept (hard-linked
    into the new folder); a folder the staging folder holds replaces the old one of that name
    whole. On any error the staging folder is removed and ``out`` is untouched.
    """
    out = check_out_dir(out, name=name)
    if out.is_symlink():  # swap the folder it points to, keep the link
        out = Path(os.path.realpath(out))
    out = Path(os.path.abspath(out))
    _check_not_cwd(out, name=name)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        recover(out)
        prefix = f"{_stem(out)}{os.getpid()}-"
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=prefix, suffix=".staging"))
    except OSError as err:  # it would name the hidden staging folder, unknown to the user
        raise _files.cannot_write(err, name=name, path=out) from err
    try:
        yield stage
        if out.is_dir():
            os.chmod(stage, stat.S_IMODE(out.stat().st_mode))
            _carry_over(out, stage)
            _swap_in(stage, out, name=name)
        else:
            os.chmod(stage, 0o755)  # mkdtemp makes it private; a report is meant to be shared
            os.rename(stage, out)  # one rename: the folder appears complete
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # after a swap it holds the old folder


def recover(out: str | os.PathLike) -> None:
    """Undo what a killed run left beside ``out``: put back an old folder renamed away when no
    ``out`` exists, and remove staging and old folders whose process is gone."""
    out = Path(os.path.abspath(out))
    pattern = re.compile(rf"^{re.escape(_stem(out))}(\d+)-[A-Za-z0-9_]+\.(staging|old)$")
    try:
        entries = sorted(os.scandir(out.parent), key=lambda e: e.name)
    except OSError:
        return
    leftovers = []
    for entry in entries:
        match = pattern.match(entry.name)
        if match and not _files.pid_alive(int(match.group(1))):
            leftovers.append((Path(entry.path), match.group(2)))
        elif re.match(rf"^\.{re.escape(out.name)}\.[A-Za-z0-9_]{{8}}\.staging$", entry.name):
            leftovers.append((Path(entry.path), "staging"))  # xaikit before the swap: no pid
    for path, kind in leftovers:
        if kind == "old" and not out.exists():
            os.rename(path, out)  # killed between the two renames of the fallback swap
        else:
            shutil.rmtree(path, ignore_errors=True)


def _stem(out: Path) -> str:
    # Short, and unique to this out: its name may be long, and near names must not mix.
    key = hashlib.sha256(out.name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f".{_files.short_name(out.name, keep=40)}.{key}."


def _check_not_cwd(out: Path, *, name: str) -> None:
    try:
        here = Path(os.path.realpath(Path.cwd()))
    except OSError:  # the current folder was removed: out cannot hold it
        return
    there = Path(os.path.realpath(out))
    if here == there or there in here.parents:
        raise ValueError(
            f"{name}: {str(out)!r} is the current folder or holds it; an output folder is "
            "replaced whole, so give it a folder of its own (e.g. --out report)"
        )


def _carry_over(old: Path, new: Path) -> None:
    """Link into ``new`` every entry of ``old`` that ``new`` does not have."""
    for entry in os.scandir(old):
        target = new / entry.name
        if not os.path.lexists(target):
            _link_tree(Path(entry.path), target)


def _link_tree(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        os.mkdir(dst)
        shutil.copystat(src, dst)
        for entry in os.scandir(src):
            _link_tree(Path(entry.path), dst / entry.name)
    else:
        try:
            os.link(src, dst)  # no copy: the old folder is removed right after the swap
        except OSError:
            shutil.copy2(src, dst)


def _swap_in(stage: Path, out: Path, *, name: str) -> None:
    try:
        if _exchange(stage, out):
            return
        old = stage.with_name(stage.name.removesuffix(".staging") + ".old")
        os.rename(out, old)
        os.rename(stage, out)  # a kill before this line: the next run restores ``old``
        shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        raise OSError(
            f"{name}: could not move the new output into {str(out)!r} ({err.strerror or err}); "
            "it is left as it was"
        ) from err


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step; False where this system cannot (then nothing changed)."""
    libc = _libc()
    if libc is None:
        return False
    src, dst = os.fsencode(a), os.fsencode(b)
    if hasattr(libc, "renameat2"):  # Linux (glibc 2.28+, musl)
        at_fdcwd, rename_exchange = -100, 2
        result = libc.renameat2(at_fdcwd, src, at_fdcwd, dst, rename_exchange)
    elif hasattr(libc, "renamex_np"):  # macOS
        rename_swap = 2
        result = libc.renamex_np(src, dst, rename_swap)
    else:
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # the file system cannot exchange: use the two renames
    raise OSError(code, os.strerror(code), str(b))


_LIBC: list = []


def _libc():
    if not _LIBC:
        library = None
        if sys.platform.startswith("linux") or sys.platform == "darwin":
            with contextlib.suppress(OSError):
                library = ctypes.CDLL(None, use_errno=True)
        path, flags = ctypes.c_char_p, ctypes.c_uint
        if library is not None and hasattr(library, "renameat2"):
            library.renameat2.argtypes = [ctypes.c_int, path, ctypes.c_int, path, flags]
            library.renameat2.restype = ctypes.c_int
        elif library is not None and hasattr(library, "renamex_np"):
            library.renamex_np.argtypes = [path, path, flags]
            library.renamex_np.restype = ctypes.c_int
        _LIBC.append(library)
    return _LIBC[0]
