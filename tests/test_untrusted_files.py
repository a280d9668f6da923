"""Untrusted files, damaged at random: every loader gives a result or an error naming its argument.

Valid files of each kind a user brings (an Explanation, a .npy batch, images of several modes,
a CSV table, labels, a saved audit) are truncated, or have bytes changed, at places hypothesis
draws. Whatever the damage, a loader returns what it returns for a good file, or raises a
ValueError whose message starts with the argument's name: never another exception.
"""

from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from xaikit import Explanation
from xaikit.audit import Audit
from xaikit.loading import load_inputs, load_labels

NAMED = re.compile(r"^(path|input|labels|directory|XAIKIT_[A-Z_]+): ")


def _explanation() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        e = Explanation(
            values=np.arange(12, dtype=np.float32).reshape(3, 4), x=np.ones((3, 4), np.float32),
            target=1, prediction=np.array([0.2, 0.8]), method="saliency",
        )  # fmt: skip
        return e.save(Path(folder) / "e.npz", compress=True).read_bytes()


def _npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.linspace(0, 1, 2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4))
    return buffer.getvalue()


def _image(mode: str, fmt: str) -> bytes:
    if mode == "F":
        img = Image.fromarray(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4))
    elif mode == "I;16":
        img = Image.fromarray((np.arange(16, dtype=np.uint16) * 4000).reshape(4, 4))
    else:
        img = Image.fromarray((np.arange(48, dtype=np.uint8) * 5).reshape(4, 4, 3)).convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def _audit() -> tuple[bytes, bytes]:
    from xaikit.audit import analyze

    rng = np.random.default_rng(0)
    a = analyze(
        maps=rng.random((6, 4, 4)).astype(np.float32), background=np.zeros((6, 4, 4), np.float32),
        targets=np.arange(6) % 2, predictions=np.arange(6) % 2, labels=None, pool=1,
        input_shape=(4, 4),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        a.save(folder)
        return (Path(folder) / "audit.npz").read_bytes(), (Path(folder) / "audit.json").read_bytes()


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # the EXIF orientation a phone writes: damaged, it must still be named
    buffer = io.BytesIO()
    Image.fromarray((np.arange(48, dtype=np.uint8) * 5).reshape(4, 4, 3)).save(
        buffer, format="JPEG", exif=exif
    )
    return buffer.getvalue()


GOOD = {
    "explanation.npz": _explanation(),
    "batch.npy": _npy(),
    "rgb.png": _image("RGB", "PNG"),
    "sixteen.png": _image("I;16", "PNG"),
    "float.tif": _image("F", "TIFF"),
    "cmyk.tif": _image("CMYK", "TIFF"),
    "photo.jpg": _image("RGB", "JPEG"),
    "rotated.jpg": _rotated_jpeg(),
    "table.csv": b"a,b,c\n1,2,3\n4,5.5,6\n",
    "labels.txt": b"0\n1\n",
}
AUDIT_NPZ, AUDIT_JSON = _audit()


def _damage(data: bytes, draw) -> bytes:
    how = draw(st.sampled_from(["truncate", "change", "both"]))
    if how in ("truncate", "both"):
        data = data[: draw(st.integers(0, len(data)))]
    if how in ("change", "both") and data:
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data) - 1))
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    return data


def _load(path: Path):
    if path.name == "explanation.npz":
        return Explanation.load(path)
    if path.name == "labels.txt":
        return load_labels(path)
    return load_inputs([path])


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_files_load(name, tmp_path):
    (tmp_path / name).write_bytes(GOOD[name])
    assert _load(tmp_path / name) is not None


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow's notes on corrupt TIFF tags
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(GOOD)), data=st.data())
def test_damaged_files_give_a_result_or_a_named_error(name, data):
    damaged = _damage(GOOD[name], data.draw)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(damaged)
        try:
            result = _load(path)
        except ValueError as err:
            assert NAMED.match(str(err)), str(err)
            return
    if name.endswith((".png", ".tif", ".jpg", ".npy", ".csv")):
        x = result.x
        assert x.dtype == np.float32 and np.isfinite(x).all()
        if name.endswith((".png", ".tif", ".jpg")):
            assert x.min() >= 0.0 and x.max() <= 1.0  # whatever the damage: scaled to [0, 1]


@settings(max_examples=60, deadline=None)
@given(which=st.sampled_from(["npz", "json"]), data=st.data())
def test_a_damaged_saved_audit_gives_a_result_or_a_named_error(which, data):
    npz, meta = AUDIT_NPZ, AUDIT_JSON
    if which == "npz":
        npz = _damage(npz, data.draw)
    else:
        meta = _damage(meta, data.draw)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "audit.npz").write_bytes(npz)
        (Path(folder) / "audit.json").write_bytes(meta)
        try:
            Audit.load(folder)
        except ValueError as err:
            assert NAMED.match(str(err)), str(err)
