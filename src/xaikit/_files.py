"""Reading the files users bring, within limits they can raise; naming temporary files.

A file says how big it is before it is read: a ``.npy`` header gives the shape and dtype, a
zip (``.npz``, torch checkpoints) lists each member's uncompressed size, an image header gives
its width and height. These declarations are checked first, so a 3 MB ``.npz`` that would
inflate to 3 GiB, or a 12000 x 12000 PNG, is refused before any memory is taken, and a file
whose data is shorter than its header says is called damaged rather than half read.

Two limits, read from the environment at each call (one mechanism for the library and the
command):

- ``XAIKIT_MAX_LOAD_BYTES`` (default ``2G``): the most one file may take once read (arrays
  of ``.npy``/``.npz`` files and weights, the size of CSV and text files);
- ``XAIKIT_MAX_IMAGE_PIXELS`` (default ``8192 * 8192``): width x height of one image.

Values are whole numbers with an optional K, M, G or T (powers of 1024) for bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import secrets
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from xaikit._validation import one_line

LOAD_BYTES = "XAIKIT_MAX_LOAD_BYTES"
IMAGE_PIXELS = "XAIKIT_MAX_IMAGE_PIXELS"
DEFAULT_LOAD_BYTES = 2 * 1024**3
DEFAULT_IMAGE_PIXELS = 8192 * 8192
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
# Longest part of a file name kept in a derived name: the result, with a hash and the suffixes
# xaikit adds for temporary files, stays well under the usual 255-byte limit of file systems.
NAME_PART = 80


def _limit(variable: str, default: int) -> int:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    match = re.fullmatch(r"(\d+)\s*([kmgt]?)(i?b)?", text, flags=re.IGNORECASE)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(
            f"{variable}: expected a positive whole number, optionally followed by K, M, G or T "
            f"(powers of 1024), got {text!r}"
        )
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def max_load_bytes() -> int:
    """The most bytes one file may take once read (``XAIKIT_MAX_LOAD_BYTES``, default 2 GiB)."""
    return _limit(LOAD_BYTES, DEFAULT_LOAD_BYTES)


def max_image_pixels() -> int:
    """The most pixels (width x height) of one image (``XAIKIT_MAX_IMAGE_PIXELS``)."""
    return _limit(IMAGE_PIXELS, DEFAULT_IMAGE_PIXELS)


def size_text(n: int) -> str:
    """``n`` bytes for people: ``512 bytes``, ``3.0 GiB``."""
    if n < 1024:
        return f"{n} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def check_bytes(n: int, *, name: str, path: Any, what: str = "would take, once read,") -> None:
    """Raise a ValueError naming ``name`` and ``path`` when ``n`` bytes exceed the limit."""
    cap = max_load_bytes()
    if n > cap:
        raise ValueError(
            f"{name}: {str(path)!r} {what} {size_text(n)}, more than the limit of "
            f"{size_text(cap)}; if you trust the file, raise the limit with the environment "
            f"variable {LOAD_BYTES} (e.g. {LOAD_BYTES}={max(2, math.ceil(n / 1024**3))}G)"
        )


def check_image_size(width: int, height: int, *, name: str, path: Any) -> None:
    """Raise a ValueError naming the file and its size when it has too many pixels."""
    cap = max_image_pixels()
    if width * height > cap:
        raise ValueError(
            f"{name}: {str(path)!r} is {width}x{height} pixels, more than the limit of {cap} "
            f"pixels (decoding it would take at least {size_text(width * height * 4)} as floats);"
            f" resize it first, or if you trust the file, raise the limit with the environment "
            f"variable {IMAGE_PIXELS} (e.g. {IMAGE_PIXELS}={width * height})"
        )


def read_text(path: Path, *, name: str) -> str:
    """A UTF-8 text file, after checking its size against the limit."""
    check_bytes(path.stat().st_size, name=name, path=path, what="is")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{name}: {str(path)!r} is not UTF-8 text") from err


# ---------------------------------------------------------------------- .npy and .npz


def _npy_header(handle, *, name: str, path: Any, where: str) -> tuple[tuple, np.dtype, int]:
    """Read a .npy header from ``handle``: (shape, dtype, bytes of data it declares)."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(handle)
        readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f".npy format version {version} is not supported")
        shape, _, dtype = readers[version](handle)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:  # the bytes, not the format
        raise ValueError(
            f"{name}: {str(path)!r}{where} is damaged ({one_line(err, with_type=True)})"
        ) from err
    except Exception as err:  # numpy raises ValueError, SyntaxError, ...
        raise ValueError(
            f"{name}: {str(path)!r}{where} is not a plain NumPy array file "
            f"({one_line(err, with_type=True)})"
        ) from err
    if dtype.hasobject:
        raise ValueError(
            f"{name}: {str(path)!r}{where} is not a plain NumPy array file: it holds Python "
            "objects (a pickle)"
        )
    return tuple(shape), dtype, math.prod(shape) * dtype.itemsize


def load_npy(path: str | os.PathLike, *, name: str) -> np.ndarray:
    """Read a ``.npy`` file after checking its declared size (limit, and the file's length)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        shape, dtype, nbytes = _npy_header(handle, name=name, path=path, where="")
        check_bytes(nbytes, name=name, path=path, what=f"declares an array {shape} {dtype} of")
        if handle.tell() + nbytes > size:
            raise ValueError(
                f"{name}: {str(path)!r} is truncated: its header declares {shape} {dtype} "
                f"({size_text(nbytes)}) but the file holds {size_text(size - handle.tell())}"
            )
        handle.seek(0)
        return np.lib.format.read_array(handle, allow_pickle=False)


def load_npz(path: str | os.PathLike, *, name: str) -> dict[str, np.ndarray]:
    """Every ``.npy`` member of an ``.npz`` as a dict, after checking the declared sizes.

    The zip directory gives each member's uncompressed size and each member's ``.npy`` header
    its shape; both are checked (against the limit, and against each other) before any array
    is read. A damaged file (bad CRC, truncated, empty, not a zip) is a ValueError naming
    ``name`` and the file.
    """
    path = Path(path)
    try:
        return _read_npz(path, name=name)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except ValueError as err:
        if str(err).startswith(f"{name}: "):
            raise
        cause: Exception = err
    except Exception as err:  # BadZipFile, EOFError, zlib.error, ... of a damaged file
        cause = err
    raise ValueError(
        f"{name}: {str(path)!r} is damaged or not a NumPy .npz file "
        f"({one_line(cause, with_type=True)})"
    ) from cause


def _read_npz(path: Path, *, name: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        infos = [i for i in archive.infolist() if i.filename.endswith(".npy")]
        check_bytes(sum(i.file_size for i in archive.infolist()), name=name, path=path)
        for info in infos:
            where = f" (member {info.filename!r})"
            with archive.open(info) as member:
                shape, dtype, nbytes = _npy_header(member, name=name, path=path, where=where)
                if member.tell() + nbytes != info.file_size:
                    raise ValueError(
                        f"{name}: {str(path)!r}{where} is damaged: its header declares "
                        f"{shape} {dtype} ({size_text(nbytes)}), the zip "
                        f"{size_text(info.file_size - member.tell())}"
                    )
        out = {}
        for info in infos:
            with archive.open(info) as member:
                out[info.filename[:-4]] = np.lib.format.read_array(member, allow_pickle=False)
        return out


def check_zip(path: str | os.PathLike, *, name: str) -> None:
    """For a zip file (torch checkpoints, TorchScript): check its members' declared sizes."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(i.file_size for i in archive.infolist())
    except (zipfile.BadZipFile, OSError, EOFError):
        return  # not a readable zip: the reader that follows says what it is
    check_bytes(total, name=name, path=path)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------------- names


def short_name(name: str, *, keep: int = NAME_PART) -> str:
    """``name`` itself when short, else its first characters and a hash of the whole name.

    Two long names that share their beginning still get different short names.
    """
    if len(name.encode("utf-8")) <= keep:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    head = name.encode("utf-8")[: keep - 11].decode("utf-8", "ignore")
    return f"{head}-{digest}"


def temp_path(path: Path) -> Path:
    """A fresh hidden name beside ``path`` for writing it (``.name.<pid>-<random>.tmp``).

    The process id lets a later run tell a file left by a killed writer from one being
    written now (:func:`stale_temp_files`).
    """
    return path.with_name(f".{short_name(path.name)}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, *, mode: int | None = None, name: str = "path"
) -> Iterator[BinaryIO]:
    """Write ``path`` whole or not at all: the one way xaikit writes a file.

    Yields a binary handle on a temporary file beside ``path`` (:func:`temp_path`); when the
    block ends without error the data is flushed and fsynced, and the file renamed over
    ``path`` (``os.replace``: atomic on one file system), so a reader, or a run after a kill or
    a power cut, sees the old file or the new one, never half of one. On error the temporary
    file is removed. ``mode`` sets the permissions (default: ``0o666`` less the umask). A folder
    that cannot be written is an OSError naming ``name`` and ``path``, not the temporary file.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise cannot_write(err, name=name, path=path) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        try:
            os.replace(tmp, path)
        except OSError as err:  # e.g. path is a folder
            raise cannot_write(err, name=name, path=path) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cannot_write(err: OSError, *, name: str, path: Any) -> OSError:
    """``err`` as an OSError of its kind whose message names the argument and the path it was
    about (the temporary or staging name in ``err`` means nothing to the user)."""
    reason = err.strerror or one_line(err)
    blocker = _file_in_the_way(path)
    if blocker is not None:  # the OS says "File exists" or "Not a directory" about the parent
        reason = f"{str(blocker)!r} is a file, not a folder"
    new = type(err)(f"{name}: cannot write {str(path)!r} ({reason})")
    new.errno = err.errno
    return new


def _file_in_the_way(path: Any) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is a file (a folder cannot be made
    under it), else None."""
    try:
        for parent in Path(path).absolute().parents:
            if parent.exists():
                return None if parent.is_dir() else parent
    except (OSError, TypeError, ValueError):
        return None
    return None


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path, mode=mode) as handle:
        handle.write(data)
    return Path(path)


_TEMP = re.compile(r"^\.(?P<stem>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
_OLD_TEMP = re.compile(r"^\.(?P<stem>.+)\.[0-9a-f]{12}\.tmp$")  # xaikit <= 0.x: no process id


def stale_temp_files(folder: Path, names: re.Pattern) -> list[Path]:
    """Temporary files in ``folder`` of targets matching ``names`` whose writer is gone."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is not None and not pid_alive(int(match.group("pid"))):
            stem = match.group("stem")
        else:
            match = _OLD_TEMP.match(entry.name)
            stem = None if match is None else match.group("stem")
        if stem is not None and names.match(stem) and entry.is_file(follow_symlinks=False):
            found.append(Path(entry.path))
    return found


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (on this machine); True where that cannot be told."""
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True
