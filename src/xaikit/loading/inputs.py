"""Read the inputs a user brings to the ``xaikit`` command, and their class names and labels.

Image files (PNG, JPEG, anything Pillow reads; Pillow ships with matplotlib), ``.npy`` arrays
(a batch with a leading item axis), CSV rows (a header row of names is recognised) and text
files (one input per line). Images are turned upright by their EXIF orientation (as viewers
show a phone photo), resized, scaled to [0, 1] by their bit depth (8-bit modes by 255, 16-bit
by 65535; float images must already lie in [0, 1] and are kept as they are) and normalised per
channel; a mode that cannot be scaled so is refused. CSV columns are matched by each file's
header to the columns a model was fitted on, when it names them.

Files are checked against their declared sizes before they are read (image header
dimensions, ``.npy`` headers): see :mod:`xaikit._files` for the limits and the environment
variables that raise them. Every failure is a :class:`~xaikit.loading.LoadError` naming
``input``, ``resize``, ``mean``, ``std``, ``classes`` or ``labels``.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xaikit import _files
from xaikit._validation import one_line
from xaikit.loading.errors import LoadError, checked

__all__ = [
    "IMAGE_SUFFIXES",
    "TEXT_SUFFIXES",
    "Inputs",
    "load_class_names",
    "load_inputs",
    "load_labels",
]

IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm",
)  # fmt: skip
TEXT_SUFFIXES = (".txt",)


@dataclass
class Inputs:
    """Inputs read from files, as one batch.

    Attributes
    ----------
    x : np.ndarray or None
        ``(N, ...)`` float32 (images ``(N, C, H, W)``, rows ``(N, F)``); None for text.
    names : list of str
        One display name per item (``file.png``, ``file.npy[3]``, ``file.csv:row 2``).
    kind : {"image", "array", "table", "text"}
    feature_names : list of str, optional
        A CSV header.
    lines : list of str, optional
        Text inputs, one per item.
    """

    x: np.ndarray | None
    names: list[str]
    kind: str
    feature_names: list[str] | None = None
    lines: list[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.names)


def load_inputs(
    paths: Sequence[str | os.PathLike],
    *,
    resize: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int | None = None,
    columns: Sequence[str] | None = None,
) -> Inputs:
    """Read input files into one batch.

    Parameters
    ----------
    paths : sequence of paths
        Image files, ``.npy`` arrays (with a leading item axis), ``.csv`` tables or ``.txt``
        files (one text per line); all of one kind.
    resize : (height, width), optional
        Resize images to this size (bilinear); without it all images must share one size.
    mean, std : sequence of float, optional
        Per-channel normalisation ``(x - mean) / std`` after scaling to [0, 1] (one value, or
        one per channel); for image files and ``(N, C, H, W)`` ``.npy`` arrays only (refused
        for other inputs, as ``resize`` is for anything but image files).
    channels : {1, 3}, optional
        Read images as gray (1) or RGB (3); default gray when every image is gray, else RGB.
    columns : sequence of str, optional
        The columns a table model was fitted on (``feature_names_in_``): each CSV's columns
        are put in this order by its own header, and a first row listing these names (in any
        order) is a header even when the names look like numbers ("2019").

    Raises
    ------
    LoadError
        One line naming ``input`` (or ``resize``, ``mean``, ``std``).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise LoadError("input: expected at least one input file")
    for p in paths:
        if p.is_dir():
            raise LoadError(f"input: {str(p)!r} is a directory; give the files in it")
        if not p.is_file():
            raise LoadError(f"input: no file {str(p)!r}")
    kinds = {_input_kind(p) for p in paths}
    if len(kinds) > 1:
        raise LoadError(f"input: mixed kinds of files {sorted(kinds)}; give one kind at a time")
    kind = kinds.pop()
    if resize is not None and kind != "image":  # refused, not ignored: the user asked for it
        raise LoadError(f"resize: applies to image files; {_KIND_WORDS[kind]} are read as they are")
    if resize is not None:
        if len(resize) != 2 or any(int(s) < 1 for s in resize):
            raise LoadError(f"resize: expected (height, width) >= 1, got {tuple(resize)}")
        resize = (int(resize[0]), int(resize[1]))
    if kind == "image":
        x = np.stack(_read_images(paths, resize=resize, channels=channels))
        x = _normalize(x, mean=mean, std=std)
        return Inputs(x, [p.name for p in paths], "image")
    if kind == "array":
        arrays = [_read_npy(p) for p in paths]
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) > 1:
            raise LoadError(f"input: .npy files hold items of different shapes {sorted(shapes)}")
        names = [
            f"{p.name}[{i}]" for p, a in zip(paths, arrays, strict=True) for i in range(len(a))
        ]
        x = np.concatenate(arrays).astype(np.float32, copy=False)
        if mean is not None or std is not None:
            if x.ndim != 4:
                _refuse_normalization(mean, f".npy arrays of items of shape {x.shape[1:]}")
            x = _normalize(x, mean=mean, std=std)
        return Inputs(x, names, "array")
    if mean is not None or std is not None:
        _refuse_normalization(mean, _KIND_WORDS[kind])
    if kind == "table":
        return _read_tables(paths, columns=None if columns is None else [str(c) for c in columns])
    lines = []
    names = []
    for p in paths:
        for i, line in enumerate(_read_text(p, what="input").splitlines()):
            if line.strip():
                lines.append(line)
                names.append(f"{p.name}:{i + 1}")
    if not lines:
        raise LoadError(f"input: no text lines in {[str(p) for p in paths]}")
    return Inputs(None, names, "text", lines=lines)


_KIND_WORDS = {"array": ".npy arrays", "table": "CSV rows", "text": "text lines"}


def _refuse_normalization(mean, what: str) -> None:
    option = "mean" if mean is not None else "std"
    raise LoadError(
        f"{option}: --mean and --std normalise the channels of images (image files or "
        f"(N, C, H, W) .npy arrays); {what} have no channels and are read as they are"
    )


def _input_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix == ".npy":
        return "array"
    if suffix == ".csv":
        return "table"
    if suffix in TEXT_SUFFIXES:
        return "text"
    raise LoadError(
        f"input: {str(path)!r} has an unknown kind; expected an image "
        f"({', '.join(IMAGE_SUFFIXES[:3])}, ...), .npy, .csv or .txt"
    )


# Modes Pillow decodes to 8 bits per channel: converted to gray or RGB by Pillow, then / 255.
EIGHT_BIT_MODES = (
    "1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
)  # fmt: skip
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _read_images(paths: list[Path], *, resize, channels) -> list[np.ndarray]:
    if channels not in (None, 1, 3):
        raise LoadError(f"channels: expected 1 (gray) or 3 (RGB), got {channels!r}")
    opened = [_open_image(p) for p in paths]
    if channels is None:
        channels = 1 if all(img.mode in GRAY_MODES for img, _ in opened) else 3
    out = []
    for p, (img, bits) in zip(paths, opened, strict=True):
        out.append(_image_array(img, p, bits=bits, channels=channels, resize=resize))
        if out[-1].shape != out[0].shape:
            raise LoadError(
                f"input: images of different sizes ({out[0].shape[1]}x{out[0].shape[2]} for "
                f"{paths[0].name!r}, {out[-1].shape[1]}x{out[-1].shape[2]} for {p.name!r}); "
                "pass --resize H W"
            )
    return out


def _open_image(path: Path):
    """Open and decode one image, after checking its header's size against the pixel limit.

    Returns the image and, for mode "I", its bits per sample where the file says (else None).
    """
    from PIL import Image, UnidentifiedImageError

    limit = checked(_files.max_image_pixels)
    pillows = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow warns past its own limit; ours is checked below and names the file.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if pillows is not None and limit > pillows:  # the user raised ours above Pillow's
                Image.MAX_IMAGE_PIXELS = limit
            with Image.open(path) as img:
                checked(_files.check_image_size, *img.size, name="input", path=path)
                img.load()  # decode now: a truncated file fails here, not later
                return _upright(img, path), _integer_bits(img)
    except Image.DecompressionBombError as err:
        raise LoadError(
            f"input: {str(path)!r} is too large to decode ({one_line(err, with_type=True)}); "
            f"the limit is {limit} pixels, raised with the environment variable "
            f"{_files.IMAGE_PIXELS}"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, LoadError):
            raise
        raise LoadError(
            f"input: {str(path)!r} is not a readable image ({one_line(err, with_type=True)})"
        ) from err
    finally:
        Image.MAX_IMAGE_PIXELS = pillows


def _upright(img, path: Path):
    """The image as viewers show it: a phone photo's EXIF orientation applied."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(img)  # a copy, also when there is nothing to turn
    except Exception as err:  # Pillow's EXIF parser raises many kinds on damaged tags
        raise LoadError(
            f"input: {str(path)!r} has EXIF orientation data that cannot be read "
            f"({one_line(err, with_type=True)})"
        ) from err


def _image_array(img, path: Path, *, bits: int | None, channels: int, resize) -> np.ndarray:
    """(C, H, W) float32 in [0, 1]: 8-bit modes through Pillow, deeper ones by their depth."""
    from PIL import Image

    size = None if resize is None else (resize[1], resize[0])
    if img.mode in EIGHT_BIT_MODES:
        target = "L" if channels == 1 else "RGB"
        try:
            img = img.convert(target)
        except ValueError as err:  # a mode Pillow opens but cannot convert (e.g. "La")
            raise LoadError(
                f"input: {str(path)!r} has image mode {img.mode!r}, which cannot be converted "
                f"to {target} ({one_line(err, with_type=True)})"
            ) from err
        if size is not None:
            img = img.resize(size, Image.Resampling.BILINEAR)
        a = np.asarray(img, dtype=np.float32) / 255.0
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    gray = _deep_gray(img, path, bits=bits)
    if size is not None:
        gray = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR))
    return np.repeat(gray[None], channels, axis=0).astype(np.float32)


def _deep_gray(img, path: Path, *, bits: int | None) -> np.ndarray:
    """A 16-bit, 32-bit integer or float gray image as (H, W) float32 in [0, 1]."""
    mode = img.mode
    a = np.asarray(img)
    if mode.startswith("I;16"):
        return (a.astype(np.float32) / 65535.0).astype(np.float32)
    if mode == "I":
        if bits is not None and a.size and (a.min() < 0 or a.max() > 2**bits - 1):
            bits = None
        if bits is None:
            raise LoadError(
                f"input: {str(path)!r} is a 32-bit or signed integer image (mode 'I'), which has "
                "no bit depth to scale it to [0, 1] by; save it with 8 or 16 bits, as a float "
                "image in [0, 1], or as a .npy array (read as it is)"
            )
        return (a.astype(np.float64) / (2**bits - 1)).astype(np.float32)
    if mode == "F":
        a = np.array(a, dtype=np.float32)
        finite = a[np.isfinite(a)]
        if finite.size < a.size or (a.size and (finite.min() < 0.0 or finite.max() > 1.0)):
            where = (
                "NaN or infinite values"
                if finite.size < a.size
                else (f"values in [{finite.min():.6g}, {finite.max():.6g}]")
            )
            raise LoadError(
                f"input: {str(path)!r} is a float image (mode 'F') with {where}; float images are "
                "read as they are and must lie in [0, 1]: rescale it, or save it as a .npy "
                "array (read without scaling)"
            )
        return a
    raise LoadError(
        f"input: {str(path)!r} has image mode {mode!r}, which xaikit cannot scale to [0, 1]; "
        "save it as an 8- or 16-bit image, a float image in [0, 1], or a .npy array"
    )


def _integer_bits(img) -> int | None:
    """Bits per sample of a mode-"I" image, where the file says so; None where unknown."""
    if img.mode != "I":
        return None
    if img.format in ("PNG", "PPM"):  # Pillow reads their 16-bit samples as "I" (0..65535)
        return 16
    if img.format == "TIFF":
        tags = getattr(img, "tag_v2", {})
        bits = tags.get(258, (32,))
        sample_format = tags.get(339, (1,))
        bits = bits[0] if isinstance(bits, tuple) else bits
        sample_format = sample_format[0] if isinstance(sample_format, tuple) else sample_format
        if sample_format == 1 and int(bits) <= 16:  # unsigned integers of at most 16 bits
            return int(bits)
    return None


def _normalize(x: np.ndarray, *, mean, std) -> np.ndarray:
    c = x.shape[1]
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, c):
            expected = "1 value" if c == 1 else f"1 or {c} values (one per channel)"
            raise LoadError(f"{name}: expected {expected}, got {len(values)}")
    if std is not None and any(float(s) <= 0 for s in std):
        raise LoadError(f"std: expected positive values, got {list(std)}")
    shape = (1, -1, 1, 1)
    if mean is not None:
        x = x - np.asarray(mean, dtype=np.float32).reshape(shape)
    if std is not None:
        x = x / np.asarray(std, dtype=np.float32).reshape(shape)
    return np.ascontiguousarray(x, dtype=np.float32)


def _read_npy(path: Path) -> np.ndarray:
    a = checked(_files.load_npy, path, name="input")
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiub":
        raise LoadError(f"input: {str(path)!r} holds no numeric array")
    if a.ndim < 2:
        raise LoadError(
            f"input: {str(path)!r} has shape {a.shape}; expected a batch with a leading item "
            "axis, e.g. (N, C, H, W) or (N, features); one item is (1, ...)"
        )
    if not np.isfinite(a).all():
        raise LoadError(f"input: {str(path)!r} contains NaN or infinite values")
    return a


def _read_tables(paths: list[Path], *, columns: list[str] | None) -> Inputs:
    """CSV files as one batch; each file's columns matched by its own header."""
    tables = [_read_csv(p, columns=columns) for p in paths]
    headed = [(p, h) for p, (h, _) in zip(paths, tables, strict=True) if h is not None]
    bare = [p for p, (h, _) in zip(paths, tables, strict=True) if h is None]
    if headed and bare:  # the bare file's columns have no names to be matched by
        raise LoadError(
            f"input: {str(bare[0])!r} has no header row but {str(headed[0][0])!r} has one, so "
            "their columns cannot be matched by name; give every CSV a header, or none"
        )
    parts = []
    for p, (header, rows) in zip(paths, tables, strict=True):
        if columns is None:
            if header is not None and header != headed[0][1]:
                raise LoadError(
                    f"input: {str(headed[0][0])!r} and {str(p)!r} have different headers "
                    f"({headed[0][1]} and {header}); the model has no column names to match "
                    "them by, so give every CSV the same columns in the same order"
                )
        elif header is not None:
            rows = _as_fitted(rows, header, columns, p)
        elif rows.shape[1] != len(columns):
            raise LoadError(
                f"input: {str(p)!r} has {rows.shape[1]} columns; the model was fitted on "
                f"{len(columns)} ({columns})"
            )
        parts.append(rows)
    widths = {rows.shape[1] for rows in parts}
    if len(widths) > 1:
        raise LoadError(f"input: CSV files have different numbers of columns {sorted(widths)}")
    names = [
        f"{p.name}:row {i + 1}" for p, rows in zip(paths, parts, strict=True)
        for i in range(len(rows))
    ]  # fmt: skip
    x = np.concatenate(parts).astype(np.float32)
    if not headed:
        return Inputs(x, names, "table")
    return Inputs(x, names, "table", feature_names=list(columns or headed[0][1]))


def _as_fitted(rows: np.ndarray, header: list[str], columns: list[str], path: Path):
    """A file's columns in the order the model was fitted on, found by its header."""
    if len(set(header)) != len(header) or sorted(header) != sorted(columns):
        raise LoadError(
            f"input: {str(path)!r} has the columns {header}, not the columns the model was "
            f"fitted on {columns}"
        )
    return rows[:, [header.index(name) for name in columns]]


def _read_csv(path: Path, *, columns: list[str] | None) -> tuple[list[str] | None, np.ndarray]:
    rows = list(csv.reader(_read_text(path, what="input").splitlines()))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise LoadError(f"input: {str(path)!r} has no rows")
    header = None
    first = [c.strip() for c in rows[0]]
    # Names that look like numbers ("2019") are a header when they are the model's columns.
    fitted = columns is not None and sorted(first) == sorted(columns)
    if fitted or not all(_is_number(c) for c in first):
        header, rows = first, rows[1:]
    if not rows:
        raise LoadError(f"input: {str(path)!r} has a header but no data rows")
    width = len(header) if header else len(rows[0])
    values = np.empty((len(rows), width), dtype=np.float64)
    for i, row in enumerate(rows):
        line = i + (2 if header else 1)
        if len(row) != width:
            raise LoadError(
                f"input: {str(path)!r} line {line} has {len(row)} columns, expected {width}"
            )
        for j, cell in enumerate(row):
            if not _is_number(cell):
                raise LoadError(
                    f"input: {str(path)!r} line {line} column {j + 1}: {cell.strip()!r} is not a "
                    "number"
                )
            values[i, j] = float(cell)
    if not np.isfinite(values).all():
        raise LoadError(f"input: {str(path)!r} contains NaN or infinite values")
    return header, values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_text(path: Path, *, what: str) -> str:
    return checked(_files.read_text, path, name=what)


def load_class_names(path: str | os.PathLike, *, n_classes: int | None = None) -> list[str]:
    """Class names from a text file (one per line) or a JSON list; checked against the model."""
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"classes: no file {str(path)!r}")
    text = _read_text(path, what="classes")
    if path.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as err:
            raise LoadError(f"classes: {str(path)!r} is not valid JSON ({err.msg})") from err
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise LoadError(f"classes: {str(path)!r} must hold a JSON list of strings")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise LoadError(f"classes: {str(path)!r} names no classes")
    if n_classes is not None and len(names) != n_classes:
        raise LoadError(
            f"classes: {str(path)!r} names {len(names)} classes; the model has {n_classes}"
        )
    return names


def load_labels(path: str | os.PathLike, *, n: int | None = None) -> np.ndarray:
    """Labels from a ``.npy`` array or a text/CSV file with one label per line."""
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"labels: no file {str(path)!r}")
    if path.suffix.lower() == ".npy":
        labels = checked(_files.load_npy, path, name="labels").ravel()
    else:
        lines = [ln.strip() for ln in _read_text(path, what="labels").splitlines() if ln.strip()]
        labels = np.asarray(lines)
        if all(_is_number(v) and float(v).is_integer() for v in lines):
            labels = labels.astype(np.float64).astype(np.int64)
    if n is not None and len(labels) != n:
        raise LoadError(f"labels: {str(path)!r} has {len(labels)} labels for {n} inputs")
    return labels
