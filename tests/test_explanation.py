"""Tests for xaikit.explanation: validation, container protocol, save/load, plot."""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from matplotlib.figure import Figure

from xaikit.explanation import Explanation


def image(*, signed: bool = True, **kw) -> Explanation:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 8, 8)).astype(np.float32)
    if not signed:
        values = np.abs(values)
    comps = np.repeat(np.repeat(np.arange(4).reshape(2, 2), 4, axis=0), 4, axis=1)
    args = dict(
        values=values,
        x=rng.random((3, 8, 8)).astype(np.float32),
        target=3,
        prediction=rng.random(10),
        method="occlusion",
        params={"window": [4, 4], "stride": 2, "baseline": np.zeros((3, 8, 8), np.float32)},
        components=comps,
        component_values=np.array([0.5, -1.0, 2.0, 0.0]),
        info={"completeness_gap": 0.01, "per_step": np.arange(5, dtype=np.int16)},
    )
    return Explanation(**{**args, **kw})


def tabular(**kw) -> Explanation:
    args = dict(
        values=np.array([0.1, -2.0, 0.5, 3.0, 0.0]),
        x=np.array([1.0, 2.0, 3.0, 4.0, 5.0]),
        target=1,
        prediction=np.array([0.3, 0.7]),
        method="kernel_shap",
        params={"samples": 100, "seed": 0, "background": np.ones((4, 5))},
        feature_names=["age", "bmi", "bp", "s1", "s2"],
    )
    return Explanation(**{**args, **kw})


def text(**kw) -> Explanation:
    args = dict(
        values=np.array([0.2, -0.4, 1.0, 0.0]),
        x=np.array([5, 17, 3, 9]),
        target=0,
        prediction=np.array([2.0, -1.0]),
        method="integrated_gradients",
        params={"steps": 32, "rule": "riemann_middle"},
        tokens=["the", "film", "was", "great"],
    )
    return Explanation(**{**args, **kw})


def batch(**kw) -> Explanation:
    rng = np.random.default_rng(1)
    args = dict(
        values=rng.normal(size=(5, 1, 6, 6)),
        x=rng.random((5, 1, 6, 6)),
        target=np.array([0, 1, 2, 1, 0]),
        prediction=rng.random((5, 3)),
        method="lime",
        params={"samples": 50, "components": "grid"},
        components=rng.integers(0, 4, (5, 6, 6)),
        component_values=rng.normal(size=(5, 4)),
        batch=True,
    )
    return Explanation(**{**args, **kw})


# ---------------------------------------------------------------- construction


def test_kind_is_inferred_from_the_fields():
    assert image().kind == "image"
    assert (
        image(
            values=np.zeros((8, 8)), x=np.zeros((8, 8)), components=None, component_values=None
        ).kind
        == "image"
    )
    assert tabular().kind == "tabular"
    assert text().kind == "text"


def test_fields_become_arrays_keeping_float_dtypes():
    e = Explanation(
        values=[1, 2], x=[0.5, 0.5], target=np.int64(1), prediction=[0.1, 0.9], method="saliency"
    )
    assert e.values.dtype == np.float64 and isinstance(e.x, np.ndarray)
    assert type(e.target) is int
    assert image().values.dtype == np.float32  # float dtypes are kept


@pytest.mark.parametrize(
    ("change", "error", "field"),
    [
        ({"values": np.zeros((3, 8, 7))}, ValueError, "values"),
        ({"kind": "audio"}, ValueError, "kind"),
        ({"kind": "tabular"}, ValueError, "x"),
        ({"target": 1.5}, TypeError, "target"),
        ({"target": True}, TypeError, "target"),
        ({"target": 10}, ValueError, "target"),
        ({"prediction": np.zeros((2, 10))}, ValueError, "prediction"),
        ({"components": np.zeros((3, 8), int)}, ValueError, "components"),
        ({"components": np.zeros((8, 8))}, TypeError, "components"),
        ({"component_values": np.zeros(3)}, ValueError, "component_values"),
        ({"components": None}, ValueError, "component_values"),
        ({"feature_names": ["a"]}, ValueError, "feature_names"),
        ({"params": []}, TypeError, "params"),
    ],
)
def test_validation_names_the_field(change, error, field):
    # The house vocabulary: a wrong type is a TypeError, a wrong value a ValueError.
    with pytest.raises(error, match=f"^{field}: "):
        image(**change)


def test_shape_mismatch_message_has_both_shapes():
    with pytest.raises(ValueError, match=r"values.*\(3, 8, 8\).*\(3, 8, 7\)"):
        image(values=np.zeros((3, 8, 7)))


@pytest.mark.parametrize(
    ("make", "change", "field"),
    [
        (tabular, {"feature_names": ["a", "b"]}, "feature_names"),
        (text, {"tokens": ["a"]}, "tokens"),
        (tabular, {"tokens": ["a"] * 5}, "tokens"),
    ],
    ids=["feature_names", "tokens of text", "tokens of a table"],
)
def test_names_of_the_wrong_length_are_refused(make, change, field):
    with pytest.raises(ValueError, match=field):
        make(**change)


def test_a_scalar_target_applies_to_every_item_of_a_batch():
    e = batch(target=2)
    assert e.target.tolist() == [2] * 5 and len(e) == 5


def test_a_batch_target_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="target"):
        batch(target=np.array([1, 2]))


def test_a_single_explanation_has_no_len():
    with pytest.raises(TypeError):
        len(image())


def test_getitem_on_batch():
    e = batch()
    item = e[2]
    assert not item.batch and item.target == int(e.target[2])
    np.testing.assert_array_equal(item.values, e.values[2])
    np.testing.assert_array_equal(item.components, e.components[2])
    np.testing.assert_array_equal(item.component_values, e.component_values[2])
    np.testing.assert_array_equal(e[-1].x, e.x[4])
    assert len(e[1:3]) == 2
    with pytest.raises(IndexError):
        e[5]
    with pytest.raises(TypeError):
        image()[0]
    shared = batch(components=np.zeros((6, 6), int), component_values=np.ones((5, 1)))
    np.testing.assert_array_equal(shared[0].components, shared.components)
    texts = Explanation(
        values=np.zeros((2, 3)),
        x=np.zeros((2, 3), int),
        target=[0, 1],
        prediction=np.zeros((2, 2)),
        method="m",
        batch=True,
        tokens=[["a", "b", "c"], ["d", "e", "f"]],
    )
    assert texts[1].tokens == ["d", "e", "f"]


def test_top():
    assert tabular().top(2).tolist() == [3, 1]
    assert image().top(2).tolist() == [2, 1]  # component ids
    coords = image(components=None, component_values=None).top(3)
    assert coords.shape == (3, 3)
    v = image().values
    assert abs(v[tuple(coords[0])]) == np.abs(v).max()
    assert batch().top(2).shape == (5, 2)


def test_repr_is_short():
    r = repr(image())
    assert "occlusion" in r and "target=3" in r and "(3, 8, 8)" in r and "array" not in r


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize("make", [image, tabular, text, batch])
def test_round_trip(tmp_path, make):
    e = make()
    e.scores["deletion"] = np.float64(0.25)
    path = e.save(tmp_path / "e")
    assert path == tmp_path / "e.npz" and path.exists()
    back = Explanation.load(path)
    assert back == e
    assert type(back.scores["deletion"]) is float
    for name in ("values", "x", "prediction", "components", "component_values"):
        a, b = getattr(e, name), getattr(back, name)
        assert (a is None and b is None) or (a.dtype == b.dtype and a.shape == b.shape)
    assert Explanation.load(tmp_path / "e") == e  # suffix found on load too


def test_round_trip_keeps_none_fields_with_odd_params(tmp_path):
    e = tabular(
        feature_names=None,
        params={
            "f": print,
            "n": np.int32(3),
            "t": (1, 2),
            "nested": {"a": np.arange(3)},
            "nested/a": np.ones(2),
        },
    )
    back = Explanation.load(e.save(tmp_path / "e.npz"))
    assert back.feature_names is None and back.components is None and back.tokens is None
    assert back.params["f"] == repr(print)
    assert back.params["n"] == 3 and type(back.params["n"]) is int
    assert back.params["t"] == [1, 2]
    np.testing.assert_array_equal(back.params["nested"]["a"], np.arange(3))
    np.testing.assert_array_equal(back.params["nested/a"], np.ones(2))  # no name clash
    with np.load(tmp_path / "e.npz", allow_pickle=False) as data:
        meta = bytes(data["__xaikit__"]).decode()
    assert "repr" in meta  # the note about the callable


def test_no_pickle_in_file(tmp_path):
    path = image().save(tmp_path / "e.npz")
    with np.load(path, allow_pickle=False) as data:
        assert "params/baseline" in data.files and "info/per_step" in data.files
        for key in data.files:
            assert not data[key].dtype.hasobject
    with zipfile.ZipFile(path) as zf:
        assert all(name.endswith(".npy") for name in zf.namelist())


def _fail_mid_write(member, array, **kw):
    member.write(b"partial bytes")
    raise OSError("disk full")


def test_a_failed_save_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "e.npz"
    monkeypatch.setattr(np.lib.format, "write_array", _fail_mid_write)
    with pytest.raises(OSError, match="disk full"):
        image().save(path)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "e.npz"
    tabular().save(path)
    before = path.read_bytes()
    monkeypatch.setattr(np.lib.format, "write_array", _fail_mid_write)
    with pytest.raises(OSError):
        image().save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["e.npz"]


def test_atomic_save_fails_at_rename(tmp_path, monkeypatch):
    def no_replace(src, dst):
        raise PermissionError("read-only")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(PermissionError):
        image().save(tmp_path / "e.npz")
    assert list(tmp_path.iterdir()) == []


def test_load_of_a_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        Explanation.load(tmp_path / "missing.npz")


def _other_npz(path):
    np.savez(path, a=np.arange(3))


def _junk(path):
    path.write_bytes(b"not a zip at all")


def _pickled(path):
    np.savez(path, __xaikit__=np.array([{"a": 1}], dtype=object))


@pytest.mark.parametrize(
    "write", [_other_npz, _junk, _pickled], ids=["other npz", "junk", "pickle"]
)
def test_load_of_a_file_that_is_not_an_explanation_names_it(tmp_path, write):
    path = tmp_path / "file.npz"
    write(path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        Explanation.load(path)


FLOATS = st.sampled_from([np.float16, np.float32, np.float64])
INPUTS = st.sampled_from([np.float32, np.float64, np.uint8, np.int64, np.bool_])


@settings(max_examples=40, deadline=None)
@given(data=st.data(), ndim=st.integers(1, 3), vdtype=FLOATS, xdtype=INPUTS, batched=st.booleans())
def test_round_trip_property(data, ndim, vdtype, xdtype, batched):
    shape = data.draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=1, max_side=5))
    full = (data.draw(st.integers(1, 3)), *shape) if batched else shape
    values = data.draw(hnp.arrays(vdtype, full))  # NaN and inf included
    x = data.draw(hnp.arrays(xdtype, full))
    spatial = shape[-2:] if ndim > 1 else shape
    comps = data.draw(hnp.arrays(np.int32, spatial, elements=st.integers(0, 6)))
    m = int(comps.max()) + 1
    lead = (full[0],) if batched else ()
    e = Explanation(
        values=values,
        x=x,
        target=np.zeros(full[0], np.int64) if batched else 0,
        prediction=np.linspace(0, 1, 3 * (full[0] if batched else 1)).reshape(*lead, 3),
        method="rise",
        params={"p": 0.5, "mask": np.ones(spatial, np.bool_)},
        components=comps,
        component_values=np.arange(m * (full[0] if batched else 1), dtype=vdtype).reshape(*lead, m),
        kind="tabular" if ndim == 1 else None,
        batch=batched,
    )
    with tempfile.TemporaryDirectory() as tmp:
        back = Explanation.load(e.save(Path(tmp) / "e"))
    assert back == e
    assert back.values.dtype == vdtype and back.x.dtype == x.dtype


# ---------------------------------------------------------------- plot


def test_plot_image_signed_uses_diverging_symmetric_map():
    e = image()
    fig = e.plot()
    assert isinstance(fig, Figure)
    im = fig.axes[0].images[-1]
    assert im.get_cmap().name == "RdBu_r"
    lo, hi = im.get_clim()
    assert lo == -hi and hi == pytest.approx(np.abs(e.values.sum(axis=0)).max())
    assert len(fig.axes) == 2  # image + colour bar
    assert fig.axes[0].get_title() == "occlusion · target 3"


def test_plot_image_nonnegative_uses_sequential_map():
    fig = image(signed=False).plot()
    im = fig.axes[0].images[-1]
    assert im.get_cmap().name == "inferno"
    assert im.get_clim()[0] == 0
    forced = image(signed=False).plot(signed=True, cmap="PuOr", title="t").axes[0].images[-1]
    assert forced.get_cmap().name == "PuOr" and forced.get_clim()[0] < 0
    assert len(image().plot(show_input=False).axes[0].images) == 1


def test_plot_tabular_bars_with_feature_names():
    fig = tabular().plot(top_k=3)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["bp", "bmi", "s1"]  # the largest |value| at the top
    assert len(ax.patches) == 3
    fig = tabular(feature_names=None).plot()
    assert "x[3]" in [t.get_text() for t in fig.axes[0].get_yticklabels()]


def test_plot_text_draws_tokens():
    fig = text().plot()
    assert isinstance(fig, Figure)
    drawn = [t.get_text() for t in fig.axes[0].texts]
    assert drawn == ["the", "film", "was", "great"]
    ids = [t.get_text() for t in text(tokens=None).plot().axes[0].texts]
    assert ids == ["5", "17", "3", "9"]
    fig.canvas.draw()  # renders without a GUI backend


def test_plot_of_a_batch_draws_a_grid_of_its_items():
    fig = batch().plot()
    assert isinstance(fig, Figure) and "5 items" in fig.get_suptitle()


def _big_batch():
    rng = np.random.default_rng(0)
    return Explanation(
        values=rng.normal(size=(20, 4)),
        x=rng.random((20, 4)),
        target=np.zeros(20, int),
        prediction=rng.random((20, 2)),
        method="saliency",
        batch=True,
    )


def test_plot_of_a_big_batch_draws_the_first_16_items():
    assert "first 16 of 20" in _big_batch().plot().get_suptitle()


def test_plot_of_a_batch_refuses_one_given_axes():
    big = _big_batch()
    fig = big.plot()
    with pytest.raises(ValueError, match="ax"):
        big.plot(ax=fig.axes[0])


def test_plot_into_given_axes():
    fig = Figure()
    ax = fig.add_subplot()
    assert tabular().plot(ax=ax) is fig


# ---------------------------------------------------------------- untrusted files


def _inflating_npz(path: Path, declared: int) -> None:
    """A zip whose one .npy member declares ``declared`` bytes of zeros and holds a deflate
    stream of them (about 1/1000 of the size): a small file that inflates to a huge array."""
    import struct
    import zlib

    header = {"descr": "<f4", "fortran_order": False, "shape": (declared // 4,)}
    text = repr(header).encode("latin1")
    text += b" " * (64 - (10 + len(text) + 1) % 64) + b"\n"
    npy_header = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = squeeze.compress(npy_header) + squeeze.flush(zlib.Z_FULL_FLUSH)
    mib = squeeze.compress(bytes(2**20)) + squeeze.flush(zlib.Z_FULL_FLUSH)  # same bytes per MiB
    stream += mib * (declared // 2**20) + squeeze.flush()
    size = len(npy_header) + declared
    name = b"values.npy"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, 0, len(stream), size,
                        len(name), 0) + name  # fmt: skip
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, 0, len(stream),
                          size, len(name), 0, 0, 0, 0, 0, 0) + name  # fmt: skip
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central),
                      len(local) + len(stream), 0)  # fmt: skip
    path.write_bytes(local + stream + central + end)


def test_load_refuses_an_npz_that_inflates_from_its_declared_sizes(tmp_path, monkeypatch):
    path = tmp_path / "bomb.npz"
    _inflating_npz(path, 3 * 2**30)
    assert path.stat().st_size < 4 * 2**20  # 3 MB on disk, 3 GiB once read

    def no_reading(*args, **kwargs):
        raise AssertionError("an array was read")

    monkeypatch.setattr(np.lib.format, "read_array", no_reading)
    with pytest.raises(
        ValueError,
        match=r"^path: .*bomb\.npz' would take, once read, 3\.0 GiB, more than the limit of "
        r"2\.0 GiB; .*XAIKIT_MAX_LOAD_BYTES=4G",
    ):
        Explanation.load(path)


def test_load_names_a_damaged_file(tmp_path):
    good = image().save(tmp_path / "e.npz")
    data = good.read_bytes()
    for name, payload in [
        ("empty.npz", b""),
        ("cut.npz", data[: len(data) // 2]),
        ("crc.npz", data[:200] + bytes([data[200] ^ 0xFF]) + data[201:]),
    ]:
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ValueError, match=rf"^path: .*{name}'.* is damaged"):
            Explanation.load(tmp_path / name)


def test_the_load_limit_can_be_raised(tmp_path, monkeypatch):
    path = image().save(tmp_path / "e.npz")
    monkeypatch.setenv("XAIKIT_MAX_LOAD_BYTES", "1K")
    with pytest.raises(ValueError, match=r"^path: .*more than the limit of 1\.0 KiB"):
        Explanation.load(path)
    monkeypatch.setenv("XAIKIT_MAX_LOAD_BYTES", "1M")
    np.testing.assert_array_equal(Explanation.load(path).values, image().values)


def test_save_with_a_long_name(tmp_path):
    # The temporary file beside it must not pass the file system's 255-byte limit.
    path = tmp_path / ("n" * 240 + ".npz")
    tabular().save(path)
    assert Explanation.load(path).method == "kernel_shap"


# ---------------------------------------------------------------- names as text


ODD = r"$\undefinedmacro$"


def _is_literal(texts) -> None:
    from matplotlib import cbook

    shown = [t.get_text() for t in texts]
    assert shown and not any(cbook.is_math_text(s) for s in shown), shown


def test_names_holding_dollars_are_drawn_as_text():
    # A CSV header, tokens or a method name with $...$ crashed the draw through mathtext.
    fig = tabular(feature_names=[ODD, "bmi", "a $ b $ c", "s1", "s2"]).plot()
    fig.canvas.draw()
    _is_literal(fig.axes[0].get_yticklabels())
    assert r"\$\undefinedmacro\$" in [t.get_text() for t in fig.axes[0].get_yticklabels()]
    fig = text(tokens=["$x", ODD, "$", "y$"]).plot()
    fig.canvas.draw()
    _is_literal(fig.axes[0].texts)
    fig = image(method=ODD).plot()
    fig.canvas.draw()
    _is_literal([fig.axes[0].title])
    fig = batch(method=ODD).plot()
    fig.canvas.draw()
    _is_literal([fig._suptitle])


def test_a_tensor_parameter_is_saved_as_its_values(tmp_path):
    # It was stored as its repr text (cut short), and the loaded baseline was unusable
    import torch

    baseline = torch.full((1, 4, 4), 0.5, requires_grad=True)
    e = Explanation(values=np.ones((1, 4, 4)), x=np.zeros((1, 4, 4)), target=0,
                    prediction=np.array([1.0, 0.0]), method="integrated_gradients",
                    params={"baseline": baseline})  # fmt: skip
    e.save(tmp_path / "e.npz")
    loaded = Explanation.load(tmp_path / "e.npz")
    np.testing.assert_array_equal(loaded.params["baseline"], np.full((1, 4, 4), 0.5))
