"""Loading users' models and inputs: every form, and one clear error for each bad one."""

from __future__ import annotations

import pickle
import textwrap
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import xaikit as xk
from xaikit.loading import (
    LoadError,
    load_class_names,
    load_inputs,
    load_labels,
    load_model,
)

NET_PY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
        )

    def make_other():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 5))

    def not_a_model():
        return 42
    """
)


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(NET_PY)
    return path


def _reference():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3),
    )


X = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)


def export_onnx(net, path, *, dynamic: bool) -> None:
    """Export with the TorchScript-based exporter (no onnxscript needed), quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, torch.zeros(2, 1, 8, 8), str(path), input_names=["x"],
            dynamic_axes={"x": {0: "n"}} if dynamic else None, dynamo=False,
        )  # fmt: skip


def _scores(module, x=X):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _trained_state():
    net = _reference()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # differs from make()'s initialisation, so loading must take effect
    return net


def test_factory_with_safetensors_weights(net_file, tmp_path):
    from safetensors.torch import save_file

    net = _trained_state()
    save_file(net.state_dict(), tmp_path / "w.safetensors")
    loaded = load_model(f"{net_file}:make", weights=tmp_path / "w.safetensors")
    assert loaded.kind == "torch" and loaded.has_gradients and loaded.input_channels == 1
    np.testing.assert_allclose(_scores(loaded.model), _scores(net), rtol=0, atol=0)


def test_factory_with_a_torch_checkpoint(net_file, tmp_path):
    net = _trained_state()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # DataParallel names
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "ckpt.pt")
    loaded = load_model(f"{net_file}:make", weights=tmp_path / "ckpt.pt")
    np.testing.assert_array_equal(_scores(loaded.model), _scores(net))


def test_weights_that_do_not_fit(net_file, tmp_path):
    torch.save(torch.nn.Linear(64, 5).state_dict(), tmp_path / "other.pt")
    with pytest.raises(LoadError, match=r"^weights: .*does not fit the model") as info:
        load_model(f"{net_file}:make", weights=tmp_path / "other.pt")
    assert "missing 0.weight" in str(info.value) and "\n" not in str(info.value)
    bad = _reference()
    bad[3] = torch.nn.Linear(144, 7)
    torch.save(bad.state_dict(), tmp_path / "shape.pt")
    with pytest.raises(LoadError, match=r"shape mismatch: 3.weight \(7, 144\) in the file"):
        load_model(f"{net_file}:make", weights=tmp_path / "shape.pt")


def test_weights_file_that_is_no_weights(net_file, tmp_path):
    (tmp_path / "w.pt").write_bytes(b"not a zip")
    with pytest.raises(LoadError, match=r"^weights: .* is not a safetensors file or a torch"):
        load_model(f"{net_file}:make", weights=tmp_path / "w.pt")


def test_a_pickled_module_is_refused_as_weights(net_file, tmp_path):
    torch.save(_reference(), tmp_path / "whole.pt")  # a pickle of the module, not a state dict
    with pytest.raises(LoadError, match="weights_only=True"):
        load_model(f"{net_file}:make", weights=tmp_path / "whole.pt")


def test_factory_errors(net_file):
    with pytest.raises(LoadError, match=r"has no 'missing'; it defines \[.*'make'"):
        load_model(f"{net_file}:missing")
    with pytest.raises(LoadError, match=r"returned int, not a torch.nn.Module"):
        load_model(f"{net_file}:not_a_model")
    with pytest.raises(LoadError, match=r"without a factory"):
        load_model(str(net_file))
    with pytest.raises(LoadError, match=r"^model: no file"):
        load_model("nowhere.py:make")


def test_torchscript_file(tmp_path):
    net = _reference()
    torch.jit.script(net).save(str(tmp_path / "net.ts"))
    loaded = load_model(tmp_path / "net.ts")
    assert loaded.kind == "torchscript" and loaded.has_gradients
    np.testing.assert_allclose(_scores(loaded.model), _scores(net), atol=1e-6)


def test_a_file_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(LoadError, match=r"^model: .*notes.pt' is not a model file"):
        load_model(tmp_path / "notes.pt")
    torch.save(_reference().state_dict(), tmp_path / "state.pt")
    with pytest.raises(LoadError, match=r"holds weights \(a state dict\), not a model"):
        load_model(tmp_path / "state.pt")


def test_onnx_model_matches_torch(tmp_path):
    net = _reference()
    export_onnx(net, tmp_path / "net.onnx", dynamic=True)
    loaded = load_model(tmp_path / "net.onnx")
    assert loaded.kind == "onnx" and not loaded.has_gradients
    np.testing.assert_allclose(loaded.model(X), _scores(net), atol=1e-5)


def test_onnx_with_a_fixed_batch_size(tmp_path):
    net = _reference()
    export_onnx(net, tmp_path / "b2.onnx", dynamic=False)
    loaded = load_model(tmp_path / "b2.onnx")
    assert loaded.model.fixed_batch == 2
    np.testing.assert_allclose(loaded.model(X), _scores(net), atol=1e-5)  # 5 items: 2+2+1


def test_broken_onnx_file(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x00\x01garbage")
    with pytest.raises(LoadError, match=r"^model: .* is not an ONNX model"):
        load_model(tmp_path / "bad.onnx")


def test_pickle_needs_trust(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rows = np.random.default_rng(0).random((40, 3))
    clf = LogisticRegression().fit(rows, (rows[:, 0] > 0.5).astype(int))
    with (tmp_path / "clf.pkl").open("wb") as f:
        pickle.dump(clf, f)
    with pytest.raises(LoadError, match=r"^model: .* is a pickle.*--trust-pickle"):
        load_model(tmp_path / "clf.pkl")
    loaded = load_model(tmp_path / "clf.pkl", trust_pickle=True)
    assert loaded.kind == "sklearn" and loaded.output is None  # xk.Model decides
    assert xk.Model(loaded.model, output=loaded.output).output == "probabilities"
    np.testing.assert_array_equal(loaded.model.predict_proba(rows), clf.predict_proba(rows))
    with (tmp_path / "list.pkl").open("wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(LoadError, match="holds a list, not a model"):
        load_model(tmp_path / "list.pkl", trust_pickle=True)


def test_weights_only_with_a_factory(tmp_path):
    torch.jit.script(_reference()).save(str(tmp_path / "net.pt"))
    with pytest.raises(LoadError, match=r"^weights: only with --model file.py:factory"):
        load_model(tmp_path / "net.pt", weights=tmp_path / "net.pt")


# ---------------------------------------------------------------------- inputs


def _png(path, array, mode="L"):
    Image.fromarray(array, mode=mode).save(path)
    return path


GREY = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
RGB = np.stack([GREY, GREY // 2, 255 - GREY], axis=-1)


def test_grey_png_loads_as_one_channel_in_0_1(tmp_path):
    a = _png(tmp_path / "a.png", GREY)
    data = load_inputs([a])
    assert data.kind == "image" and data.names == ["a.png"] and data.x.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(data.x[0, 0], GREY / 255.0, atol=1e-7)


def test_rgb_png_is_normalised_by_mean_with_std(tmp_path):
    b = _png(tmp_path / "b.png", RGB, mode="RGB")
    data = load_inputs([b], mean=[0.5], std=[0.25])
    assert data.x.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(data.x[0, 2], ((255 - GREY) / 255.0 - 0.5) / 0.25, atol=1e-6)


def test_rgb_png_turns_grey_for_a_one_channel_model(tmp_path):
    b = _png(tmp_path / "b.png", RGB, mode="RGB")
    data = load_inputs([b], channels=1, resize=(4, 6))
    assert data.x.shape == (1, 1, 4, 6)


def _jpeg_with_png(tmp_path):
    img = np.full((10, 12, 3), 200, dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "c.jpg", quality=95)
    _png(tmp_path / "d.png", np.zeros((8, 8, 3), np.uint8), mode="RGB")
    return [tmp_path / "c.jpg", tmp_path / "d.png"]


def test_images_of_different_sizes_need_resize(tmp_path):
    with pytest.raises(LoadError, match=r"images of different sizes.*pass --resize H W"):
        load_inputs(_jpeg_with_png(tmp_path))


def test_resize_brings_images_to_one_size(tmp_path):
    data = load_inputs(_jpeg_with_png(tmp_path), resize=(8, 8))
    assert data.x.shape == (2, 3, 8, 8)
    assert abs(float(data.x[0].mean()) - 200 / 255) < 0.02


def test_image_that_does_not_decode(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(LoadError, match=r"^input: .*broken.png' is not a readable image"):
        load_inputs([tmp_path / "broken.png"])
    good = tmp_path / "good.png"
    _png(good, np.zeros((16, 16), np.uint8))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:40])  # truncated
    with pytest.raises(LoadError, match="is not a readable image"):
        load_inputs([tmp_path / "cut.png"])


def test_npy_inputs(tmp_path):
    np.save(tmp_path / "x.npy", X)
    data = load_inputs([tmp_path / "x.npy"])
    assert data.kind == "array" and data.names[4] == "x.npy[4]"
    np.testing.assert_array_equal(data.x, X)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(LoadError, match="is not a plain NumPy array file"):
        load_inputs([tmp_path / "obj.npy"])
    np.save(tmp_path / "flat.npy", np.zeros(3))
    with pytest.raises(LoadError, match=r"leading item axis"):
        load_inputs([tmp_path / "flat.npy"])


def test_csv_rows(tmp_path):
    (tmp_path / "t.csv").write_text("age,income\n30,1.5\n41,2.25\n")
    data = load_inputs([tmp_path / "t.csv"])
    assert data.kind == "table" and data.feature_names == ["age", "income"]
    np.testing.assert_array_equal(data.x, np.array([[30, 1.5], [41, 2.25]], np.float32))
    assert data.names == ["t.csv:row 1", "t.csv:row 2"]
    (tmp_path / "u.csv").write_text("1,2\n3,x\n")
    with pytest.raises(LoadError, match=r"line 2 column 2: 'x' is not a number"):
        load_inputs([tmp_path / "u.csv"])


def test_text_file_gives_one_input_per_non_empty_line(tmp_path):
    (tmp_path / "s.txt").write_text("a good film\n\nterrible\n")
    data = load_inputs([tmp_path / "s.txt"])
    assert data.kind == "text" and data.lines == ["a good film", "terrible"]
    assert data.names == ["s.txt:1", "s.txt:3"]


def test_a_file_of_unknown_kind_is_refused(tmp_path):
    (tmp_path / "m.xyz").write_text("?")
    with pytest.raises(LoadError, match="unknown kind"):
        load_inputs([tmp_path / "m.xyz"])


def test_inputs_of_mixed_kinds_are_refused(tmp_path):
    (tmp_path / "s.txt").write_text("a good film\n")
    png = _png(tmp_path / "e.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(LoadError, match="mixed kinds"):
        load_inputs([tmp_path / "s.txt", png])


def test_class_names_are_read_as_given(tmp_path):
    (tmp_path / "c.txt").write_text("cat\ndog\n<script>alert(1)</script>\n")
    assert load_class_names(tmp_path / "c.txt", n_classes=3)[2] == "<script>alert(1)</script>"
    (tmp_path / "c.json").write_text('["a", "b"]')
    assert load_class_names(tmp_path / "c.json") == ["a", "b"]


def test_class_names_must_name_every_class(tmp_path):
    (tmp_path / "c.txt").write_text("cat\ndog\n<script>alert(1)</script>\n")
    with pytest.raises(LoadError, match=r"names 3 classes; the model has 10"):
        load_class_names(tmp_path / "c.txt", n_classes=10)


def test_labels_are_read_one_per_line(tmp_path):
    (tmp_path / "y.txt").write_text("1\n0\n2\n")
    np.testing.assert_array_equal(load_labels(tmp_path / "y.txt", n=3), [1, 0, 2])


def test_labels_must_label_every_input(tmp_path):
    (tmp_path / "y.txt").write_text("1\n0\n2\n")
    with pytest.raises(LoadError, match="has 3 labels for 4 inputs"):
        load_labels(tmp_path / "y.txt", n=4)


# ---------------------------------------------------------------------- image modes and depths


def test_sixteen_bit_png_is_scaled_by_its_depth(tmp_path):
    # Mode I;16: 0..65535. Converting through 8 bits clipped every value above 255 to 1.0.
    depth16 = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    Image.fromarray(depth16).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    data = load_inputs([tmp_path / "sixteen.png"])
    assert data.x.shape == (1, 1, 8, 8) and data.x.dtype == np.float32
    np.testing.assert_allclose(data.x[0, 0], depth16 / 65535.0, rtol=1e-6)
    # An RGB model gets the grey values in three channels; --resize works on the 16-bit values.
    rgb = load_inputs([tmp_path / "sixteen.png"], channels=3)
    np.testing.assert_array_equal(rgb.x[0], np.repeat(data.x[0], 3, axis=0))
    small = load_inputs([tmp_path / "sixteen.png"], resize=(4, 4))
    assert small.x.shape == (1, 1, 4, 4) and 0.3 < float(small.x.mean()) < 0.7


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_sixteen_bit_tiffs(tmp_path, mode):
    values = np.array([[0, 1, 32768, 65535]], dtype=">u2" if mode == "I;16B" else "<u2")
    img = Image.new(mode, (4, 1))
    img.frombytes(values.tobytes())
    img.save(tmp_path / "t.tif")
    data = load_inputs([tmp_path / "t.tif"])
    np.testing.assert_allclose(data.x[0, 0, 0], [0, 1 / 65535, 32768 / 65535, 1.0], rtol=1e-6)


def test_sixteen_bit_pgm(tmp_path):
    # Pillow reads a PGM with maxval 1000 as mode I, scaled to 0..65535.
    (tmp_path / "p.pgm").write_bytes(b"P5\n2 1\n1000\n" + np.array([0, 500], ">u2").tobytes())
    data = load_inputs([tmp_path / "p.pgm"])
    np.testing.assert_allclose(data.x[0, 0, 0], [0.0, 500 / 1000], atol=1e-4)


def test_float_tiff_in_unit_range_keeps_its_values(tmp_path):
    values = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    data = load_inputs([tmp_path / "f.tif"])
    np.testing.assert_array_equal(data.x[0, 0], values)  # read as they are (was / 255: black)


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        ([[-0.5, 0.0, 2.0]], r"values in \[-0.5, 2\]"),
        ([[0.0, np.nan, 1.0]], r"NaN or infinite"),
    ],
)
def test_float_tiff_outside_unit_range_is_refused(tmp_path, values, pattern):
    Image.fromarray(np.array(values, dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(
        LoadError, match=rf"^input: .*f\.tif' is a float image \(mode 'F'\).*{pattern}"
    ):
        load_inputs([tmp_path / "f.tif"])


def test_32_bit_integer_tiff_is_refused(tmp_path):
    Image.fromarray(np.array([[0, -5, 70000]], dtype=np.int32)).save(tmp_path / "i.tif")
    with pytest.raises(LoadError, match=r"^input: .*i\.tif' is a 32-bit or signed integer image"):
        load_inputs([tmp_path / "i.tif"])


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr"])
def test_eight_bit_modes_are_scaled_by_255(tmp_path, mode):
    img = Image.new("RGB", (4, 2), (255, 255, 255)).convert(mode)
    img.putpixel((0, 0), Image.new("RGB", (1, 1), (0, 0, 0)).convert(mode).getpixel((0, 0)))
    img.save(tmp_path / "m.tif")
    for channels in (1, 3):
        x = load_inputs([tmp_path / "m.tif"], channels=channels).x[0]
        assert x.shape == (channels, 2, 4)
        assert x[:, 0, 0].max() <= 0.02 and x[:, 1, 3].min() >= 0.98  # black and white


def test_a_mode_that_cannot_be_converted_is_named_with_its_file(tmp_path, monkeypatch):
    img = Image.new("La", (2, 2))
    from xaikit.loading import inputs

    monkeypatch.setattr(inputs, "_open_image", lambda path: (img, None))
    (tmp_path / "la.png").write_bytes(b"")
    with pytest.raises(LoadError, match=r"^input: .*la\.png' has image mode 'La'"):
        load_inputs([tmp_path / "la.png"], channels=1)


def _png_bomb(path, width, height):
    """A real PNG of width x height zero pixels: a few hundred KB that decode to width*height B."""
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    compressor = zlib.compressobj(1)
    rows = bytes((width + 1) * 500)
    idat = b"".join(compressor.compress(rows) for _ in range(height // 500)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def test_huge_png_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    bomb = _png_bomb(tmp_path / "bomb.png", 12000, 12000)
    assert bomb.stat().st_size < 2_000_000

    def no_decoding(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    with pytest.raises(
        LoadError,
        match=r"^input: .*bomb\.png' is 12000x12000 pixels, more than the limit of 67108864 "
        r"pixels.*XAIKIT_MAX_IMAGE_PIXELS",
    ):
        load_inputs([bomb])


def test_pillows_own_bomb_error_names_the_file(tmp_path):
    # Past twice Pillow's limit Pillow refuses at open; the message still names the file.
    bomb = _png_bomb(tmp_path / "huge.png", 20000, 10000)
    with pytest.raises(
        LoadError,
        match=r"^input: .*huge\.png' is too large to decode .*200000000 pixels.*the limit is "
        r"67108864 pixels, raised with the environment variable XAIKIT_MAX_IMAGE_PIXELS",
    ):
        load_inputs([bomb])


def test_the_pixel_limit_is_read_from_the_environment(tmp_path, monkeypatch):
    png = _png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    monkeypatch.setenv("XAIKIT_MAX_IMAGE_PIXELS", "63")
    with pytest.raises(LoadError, match=r"is 8x8 pixels, more than the limit of 63 pixels"):
        load_inputs([png])
    monkeypatch.setenv("XAIKIT_MAX_IMAGE_PIXELS", "64")
    assert load_inputs([png]).x.shape == (1, 1, 8, 8)


def test_a_bad_pixel_limit_in_the_environment_is_named(tmp_path, monkeypatch):
    png = _png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    monkeypatch.setenv("XAIKIT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(LoadError, match=r"^XAIKIT_MAX_IMAGE_PIXELS: expected a positive whole"):
        load_inputs([png])


# ---------------------------------------------------------------------- declared sizes


def _npy_header(shape, dtype="<f4"):
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    text = repr(header).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    body = text + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


def test_npy_declaring_more_than_the_limit_is_refused_before_reading(tmp_path):
    # 96 bytes on disk whose header declares a (3 GiB / 4,) float32 array.
    path = tmp_path / "big.npy"
    path.write_bytes(_npy_header((3 * 2**30 // 4, 1)) + bytes(32))
    with pytest.raises(
        LoadError,
        match=r"^input: .*big\.npy' declares an array \(805306368, 1\) float32 of 3\.0 GiB, "
        r"more than the limit of 2\.0 GiB.*XAIKIT_MAX_LOAD_BYTES=3G",
    ):
        load_inputs([path])
    with pytest.raises(LoadError, match=r"^labels: .*big\.npy' declares an array"):
        load_labels(path)


def test_truncated_npy_is_named(tmp_path):
    path = tmp_path / "cut.npy"
    path.write_bytes(_npy_header((10, 4)) + bytes(16))
    with pytest.raises(LoadError, match=r"^input: .*cut\.npy' is truncated: its header declares"):
        load_inputs([path])


def test_the_byte_limit_can_be_lowered_for_every_file_kind(tmp_path, monkeypatch, net_file):
    np.save(tmp_path / "x.npy", X)  # 1280 bytes of data
    (tmp_path / "t.csv").write_text("a,b\n" + "1,2\n" * 400)
    (tmp_path / "s.txt").write_text("words " * 300)
    torch.save(_reference().state_dict(), tmp_path / "w.pt")
    monkeypatch.setenv("XAIKIT_MAX_LOAD_BYTES", "1K")
    with pytest.raises(
        LoadError,
        match=r"^input: .*x\.npy' declares .* of 1\.2 KiB, more than the limit of 1\.0 KiB",
    ):
        load_inputs([tmp_path / "x.npy"])
    for name in ("t.csv", "s.txt"):
        with pytest.raises(LoadError, match=rf"^input: .*{name}' is .*, more than the limit"):
            load_inputs([tmp_path / name])
    with pytest.raises(LoadError, match=r"^weights: .*w\.pt' would take, once read, .* more than"):
        load_model(f"{net_file}:make", weights=tmp_path / "w.pt")
    monkeypatch.setenv("XAIKIT_MAX_LOAD_BYTES", "1M")
    assert load_inputs([tmp_path / "x.npy"]).x.shape == X.shape
    assert load_model(f"{net_file}:make", weights=tmp_path / "w.pt").kind == "torch"


# ---------------------------------------------------------------------- factories


def test_a_factory_file_that_calls_sys_exit_is_an_error(tmp_path):
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(
        LoadError, match=r"^model: importing .*quits\.py' failed: it called sys\.exit\(3\)"
    ):
        load_model(f"{tmp_path / 'quits.py'}:make")
    (tmp_path / "quits_later.py").write_text("import sys\n\ndef make():\n    sys.exit('no')\n")
    with pytest.raises(
        LoadError, match=r"^model: .*quits_later\.py:make\(\) failed: it called sys\.exit\('no'\)"
    ):
        load_model(f"{tmp_path / 'quits_later.py'}:make")


def test_a_factory_module_has_the_same_name_in_every_process(net_file):
    # The name is part of the model's hash, which an audit's manifest records to resume from
    # another process: it must not come from Python's salted hash() of the path.
    import hashlib
    import sys

    digest = hashlib.sha256(str(net_file.resolve()).encode()).hexdigest()[:16]
    load_model(f"{net_file}:make")
    assert f"_xaikit_user_{digest}" in sys.modules


# ---------------------------------------------------------------------- found by review


def test_a_pickled_module_is_loaded_as_a_torch_model(tmp_path):
    # It was taken for a scikit-learn model returning probabilities: its logits were shown
    # as probabilities, and the gradient methods were refused.
    net = _reference()
    with (tmp_path / "net.pkl").open("wb") as f:
        pickle.dump(net, f)
    loaded = load_model(tmp_path / "net.pkl", trust_pickle=True)
    assert (loaded.kind, loaded.output, loaded.has_gradients) == ("torch", "logits", True)
    np.testing.assert_allclose(_scores(loaded.model), _scores(net))


def test_a_module_saved_whole_with_torch_save_needs_trust(tmp_path):
    # "is not a model file", even with --trust-pickle: now named, and loaded when trusted.
    net = _reference()
    torch.save(net, tmp_path / "whole.pt")
    with pytest.raises(LoadError, match=r"^model: .*whole.pt' is a whole torch module saved "):
        load_model(tmp_path / "whole.pt")
    loaded = load_model(tmp_path / "whole.pt", trust_pickle=True)
    assert (loaded.kind, loaded.output, loaded.input_channels) == ("torch", "logits", 1)
    np.testing.assert_allclose(_scores(loaded.model), _scores(net))


def test_a_directory_as_model_is_called_a_directory(tmp_path):
    (tmp_path / "net.pt").mkdir()
    with pytest.raises(LoadError, match=r"^model: .*net.pt' is a directory"):
        load_model(tmp_path / "net.pt")


@pytest.mark.parametrize("groups", [1, 3])  # a traced grouped convolution: in / groups
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_tells_the_channels_of_its_first_convolution(tmp_path, how, groups):
    # Images were read without it: a grey image for an RGB TorchScript model came out with
    # one channel, and the model failed.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, groups=groups), torch.nn.Flatten()).eval()
    saved = (
        torch.jit.script(net) if how == "script" else torch.jit.trace(net, torch.zeros(1, 3, 8, 8))
    )
    saved.save(str(tmp_path / "rgb.pt"))
    assert load_model(tmp_path / "rgb.pt").input_channels == 3


def test_onnx_tells_the_channels_of_its_declared_input(tmp_path):
    export_onnx(_reference(), tmp_path / "net.onnx", dynamic=True)
    assert load_model(tmp_path / "net.onnx").input_channels == 1


def test_onnx_refuses_items_its_declared_input_rules_out(tmp_path):
    # The raw "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions ..." came out.
    export_onnx(_reference(), tmp_path / "net.onnx", dynamic=True)
    model = load_model(tmp_path / "net.onnx").model
    with pytest.raises(ValueError, match=r"takes inputs of shape \(n, 1, 8, 8\), not items of "):
        model(np.zeros((2, 3, 8, 8), np.float32))


def test_an_onnx_runtime_failure_is_one_short_line(tmp_path, monkeypatch):
    export_onnx(_reference(), tmp_path / "net.onnx", dynamic=True)
    model = load_model(tmp_path / "net.onnx").model

    def fail(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code")

    monkeypatch.setattr(model.session, "run", fail)
    with pytest.raises(ValueError, match=r"failed to run on it: Non-zero status code$"):
        model(X)


def test_a_photo_is_read_upright_by_its_exif_orientation(tmp_path):
    # Phone photos were read as stored, sideways, not as every viewer shows them.
    a = np.zeros((6, 10), np.uint8)
    a[:, :2] = 255  # a bar down the left side, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view", as phones write
    Image.fromarray(a).save(tmp_path / "photo.jpg", exif=exif, quality=100)
    x = load_inputs([tmp_path / "photo.jpg"], channels=1).x[0, 0]
    assert x.shape == (10, 6)  # upright: the bar runs along the top
    assert x[:2].mean() > 0.9 and x[2:].mean() < 0.1


def test_a_directory_as_input_is_called_a_directory(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(LoadError, match=r"^input: .*photos' is a directory; give the files"):
        load_inputs([tmp_path / "photos"])


@pytest.mark.parametrize(
    ("file", "options", "pattern"),
    [
        ("x.npy", {"resize": (4, 4)}, r"^resize: applies to image files; .npy arrays are read"),
        ("t.csv", {"mean": [1.0]}, r"^mean: --mean and --std normalise the channels of images"),
        ("t.csv", {"std": [2.0]}, r"^std: --mean and --std .*; CSV rows have no channels"),
        ("rows.npy", {"mean": [1.0]}, r"^mean: .*\.npy arrays of items of shape \(3,\) have no"),
    ],
    ids=["resize on npy", "mean on csv", "std on csv", "mean on rows npy"],
)
def test_an_option_that_does_not_apply_is_refused(tmp_path, file, options, pattern):
    # They were ignored: the inputs reached the model as they were, without a word.
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "rows.npy", np.ones((2, 3), np.float32))
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(LoadError, match=pattern):
        load_inputs([tmp_path / file], **options)


def test_csv_files_are_each_put_in_the_fitted_column_order(tmp_path):
    # Files whose headers list the columns in other orders were joined by position.
    (tmp_path / "abc.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "cab.csv").write_text("c,a,b\n30,10,20\n")
    data = load_inputs([tmp_path / "abc.csv", tmp_path / "cab.csv"], columns=["b", "c", "a"])
    np.testing.assert_array_equal(data.x, [[2, 3, 1], [20, 30, 10]])
    assert data.feature_names == ["b", "c", "a"]


def test_csv_headers_in_other_orders_are_refused_without_fitted_columns(tmp_path):
    (tmp_path / "abc.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "cab.csv").write_text("c,a,b\n30,10,20\n")
    with pytest.raises(LoadError, match=r"^input: .*abc.csv' and .*cab.csv' have different"):
        load_inputs([tmp_path / "abc.csv", tmp_path / "cab.csv"])


@pytest.mark.parametrize("columns", [None, ["a", "b", "c"]], ids=["no columns", "fitted"])
def test_a_csv_without_header_beside_one_with_a_header_is_refused(tmp_path, columns):
    (tmp_path / "bare.csv").write_text("1,2,3\n")
    (tmp_path / "cab.csv").write_text("c,a,b\n30,10,20\n")
    with pytest.raises(LoadError, match=r"^input: .*bare.csv' has no header row but .*cab.csv'"):
        load_inputs([tmp_path / "bare.csv", tmp_path / "cab.csv"], columns=columns)


def test_a_header_of_numbers_naming_the_fitted_columns_is_a_header(tmp_path):
    # Years as column names were read as a first data row.
    (tmp_path / "years.csv").write_text("2021,2019,2020\n0.1,0.2,0.3\n")
    data = load_inputs([tmp_path / "years.csv"], columns=["2019", "2020", "2021"])
    np.testing.assert_allclose(data.x, [[0.2, 0.3, 0.1]])
    assert data.feature_names == ["2019", "2020", "2021"]
    assert len(load_inputs([tmp_path / "years.csv"])) == 2  # without the model's names: data
