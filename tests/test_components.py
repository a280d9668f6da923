"""Component maps and baselines: ids, coverage, relabelling, values, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.ndimage import gaussian_filter

from xaikit.baselines import Baseline, make_baseline
from xaikit.components import component_shape, input_kind, make_components, n_components


def smooth_image(channels: int, side: int, seed: int = 0) -> np.ndarray:
    """Blobs of colour: something a segmenter can split into several regions."""
    noise = np.random.default_rng(seed).random((channels, side, side))
    return gaussian_filter(noise, sigma=(0, side / 20, side / 20)).astype(np.float32)


def assert_contiguous(comp: np.ndarray, shape: tuple[int, ...]) -> None:
    assert comp.dtype == np.int64 and comp.shape == shape
    m = n_components(comp)
    assert np.array_equal(np.unique(comp), np.arange(m))  # every id 0..M-1 used: no empty one


# ---------------------------------------------------------------------- kinds and grids


@pytest.mark.parametrize(
    ("x", "options", "kind"),
    [
        (np.zeros((3, 8, 8)), {}, "image"),
        (np.zeros((8, 8)), {}, "image"),
        (np.zeros(5, np.float32), {}, "tabular"),
        (np.zeros(5, np.int64), {}, "text"),
        (np.zeros(5, np.float32), {"kind": "text"}, "text"),
    ],
    ids=["CHW", "HW", "float vector", "int vector", "kind given"],
)
def test_input_kind_is_inferred_unless_given(x, options, kind):
    assert input_kind(x, **options) == kind


def test_component_shape_is_the_last_two_axes_of_an_image():
    assert component_shape(torch.zeros(3, 8, 9)) == (8, 9)


@pytest.mark.parametrize(
    ("x", "options", "pattern"),
    [(np.zeros(5), {"kind": "audio"}, r"^kind: "), (np.zeros((2, 3, 4, 5)), {}, r"^x: ")],
    ids=["unknown kind", "4-d input"],
)
def test_input_kind_refuses_by_name(x, options, pattern):
    with pytest.raises(ValueError, match=pattern):
        input_kind(x, **options)


def test_grid_default_is_7_by_7_cells_of_4_px_on_a_digit():
    comp = make_components(np.zeros((1, 28, 28), np.float32), "grid")
    assert_contiguous(comp, (28, 28))
    assert n_components(comp) == 49
    assert np.all(comp[:4, :4] == 0) and comp[0, 4] == 1 and comp[4, 0] == 7


def test_grid_cells_that_do_not_tile_are_cut_at_the_border():
    comp = make_components(np.zeros((3, 17, 23)), "grid", cell=(5, 6))
    assert_contiguous(comp, (17, 23))
    assert n_components(comp) == 4 * 4  # ceil(17/5) rows x ceil(23/6) columns
    sizes = np.bincount(comp.ravel())
    assert sizes[0] == 30 and sizes[-1] == 2 * 5  # last cell: 2 rows x 5 columns


def test_grid_on_224_px_uses_16_px_cells():
    assert n_components(make_components(np.zeros((3, 224, 224)), "grid")) == 14 * 14


# ---------------------------------------------------------------------- superpixels


@pytest.mark.parametrize("how", ["slic", "quickshift", "felzenszwalb"])
@pytest.mark.parametrize("channels", [1, 3])
def test_segmenters_give_contiguous_ids_covering_the_image(how, channels):
    x = smooth_image(channels, 64)
    comp = make_components(x, how)
    assert_contiguous(comp, (64, 64))
    assert n_components(comp) > 1


def test_slic_segments_a_2d_tensor_as_its_array():
    x = smooth_image(1, 64)[0]
    a = make_components(x, "slic", n_segments=10)
    b = make_components(torch.from_numpy(x), "slic", n_segments=10)
    assert np.array_equal(a, b)
    assert_contiguous(a, (64, 64))


def test_slic_n_segments_sets_the_number_of_components():
    x = smooth_image(1, 64)[0]
    few = make_components(x, "slic", n_segments=10)
    assert n_components(few) < n_components(make_components(x, "slic", n_segments=80))


def test_segmentation_does_not_depend_on_the_input_scale():
    x = smooth_image(3, 64)
    assert np.array_equal(make_components(x, "slic"), make_components(x * 50 - 7, "slic"))


def test_auto_picks_grid_slic_or_one_component_per_feature():
    small = smooth_image(1, 28)
    assert np.array_equal(make_components(small), make_components(small, "grid"))
    large = smooth_image(3, 64)
    assert np.array_equal(make_components(large), make_components(large, "slic"))
    assert np.array_equal(make_components(np.ones(6, np.float32)), np.arange(6))
    assert np.array_equal(make_components(np.array([5, 9, 2])), np.arange(3))


# ---------------------------------------------------------------------- features, tokens, user maps


def test_feature_groups_come_first_then_each_ungrouped_feature():
    comp = make_components(np.zeros(7), "features", groups=[[0, 3], [5, 6]])
    assert comp.tolist() == [0, 2, 3, 0, 4, 1, 1]
    assert_contiguous(comp, (7,))
    assert make_components(np.array([1, 2, 3]), "tokens", groups=[[1, 2]]).tolist() == [1, 0, 0]


def test_user_map_is_kept_as_given():
    user = np.array([[1, 1, 0], [2, 0, 2]])
    comp = make_components(np.zeros((3, 2, 3)), user)
    assert comp.tolist() == user.tolist() and comp.dtype == np.int64
    assert np.array_equal(make_components(np.zeros((2, 3)), torch.from_numpy(user)), comp)


@pytest.mark.parametrize("user", [[[5, 5, 1], [7, 1, 7]], [[1, 1, 2], [2, 1, 2]]])
def test_user_map_with_empty_ids_is_an_error(user):
    with pytest.raises(ValueError, match=r"^components: ids must run from 0 to M-1.*\[0"):
        make_components(np.zeros((2, 3)), np.array(user))


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.int32, hnp.array_shapes(min_dims=2, max_dims=2), elements=st.integers(0, 9)))
def test_segmenters_output_contiguous_ids(user):
    # Our own segmentations are always renumbered; a renumbered user map passes unchanged.
    renumbered = np.unique(user, return_inverse=True)[1].reshape(user.shape)
    comp = make_components(np.zeros(user.shape), renumbered)
    assert_contiguous(comp, user.shape)
    flat_u, flat_c = user.ravel(), comp.ravel()
    assert np.array_equal(flat_u[:, None] == flat_u[None], flat_c[:, None] == flat_c[None])


@pytest.mark.parametrize(
    ("x", "how", "options", "error", "pattern"),
    [
        (np.zeros((1, 8, 8)), np.zeros((8, 7), int), {}, ValueError, "^components: .*shape"),
        (np.zeros((1, 8, 8)), np.zeros((1, 8, 8), int), {}, ValueError, "^components: .*shape"),
        (np.zeros(4), np.array([0, 1, -1, 2]), {}, ValueError, "^components: ids must be >= 0"),
        (np.zeros(4), np.array([0.0, 1, 1, 2]), {}, TypeError, "^components: "),
        (np.zeros((8, 8)), "watershed", {}, ValueError, "^components: expected one of"),
        (np.zeros(4), "slic", {}, ValueError, "^components: 'slic' segments images"),
        (np.zeros((8, 8)), "grid", {"n_segments": 5}, TypeError, "^n_segments: "),
        (np.zeros((8, 8)), "grid", {"cell": 0}, ValueError, "^cell: "),
        (np.zeros((4, 8, 8)), "quickshift", {}, ValueError, "^components: quickshift"),
        (np.zeros(4), "features", {"groups": [[0, 1], [1]]}, ValueError, "^groups: "),
        (np.zeros(4), "features", {"groups": [[0, 4]]}, ValueError, "^groups: "),
        (np.zeros(4), "features", {"groups": [[]]}, ValueError, "^groups: "),
    ],
)
def test_bad_components_name_the_argument(x, how, options, error, pattern):
    with pytest.raises(error, match=pattern):
        make_components(x, how, **options)


def test_n_components_rejects_float_maps():
    assert n_components(np.array([0, 2, 1])) == 3
    with pytest.raises(TypeError, match=r"^components: "):
        n_components(np.array([0.0, 1.0]))


# ---------------------------------------------------------------------- baselines


def test_constant_baseline_fills_the_input_layout():
    x = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    values, background = make_baseline(x, 0.25)
    assert values.shape == x.shape and values.dtype == np.float32 and not background
    assert np.all(values == 0.25)


def test_array_baseline_broadcasts_over_the_input():
    x = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    per_channel = make_baseline(x, np.array([1.0, 2.0, 3.0])[:, None, None]).values
    assert np.array_equal(per_channel[:, 0, 0], [1, 2, 3]) and per_channel.shape == x.shape


def test_baseline_keeps_a_float64_input_dtype():
    x = np.random.default_rng(0).random((3, 8, 8))
    assert make_baseline(x, 0).values.dtype == np.float64


@pytest.fixture(scope="module")
def image16():
    return np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)


def test_mean_baseline_is_the_per_channel_mean(image16):
    x = image16
    mean = make_baseline(x, "mean").values
    assert np.allclose(mean, x.mean(axis=(1, 2), keepdims=True))


def test_blur_baseline_is_a_gaussian_filter_per_channel(image16):
    x = image16
    blur = make_baseline(x, "blur", sigma=2.0).values
    assert np.allclose(blur[1], gaussian_filter(x[1].astype(np.float64), 2.0, mode="nearest"))
    assert blur.std() < x.std()


def test_noise_baseline_is_seeded_within_the_channel_range(image16):
    x = image16
    noise = make_baseline(x, "noise", seed=3).values
    assert np.array_equal(noise, make_baseline(x, "noise", seed=3).values)
    assert not np.array_equal(noise, make_baseline(x, "noise", seed=4).values)
    low, high = x.min(axis=(1, 2)), x.max(axis=(1, 2))
    assert np.all(noise.min(axis=(1, 2)) >= low) and np.all(noise.max(axis=(1, 2)) <= high)


def test_background_rows():
    rows = np.random.default_rng(0).random((10, 4))
    base = make_baseline(np.zeros(4, np.float32), rows)
    assert isinstance(base, Baseline) and base.background and base.values.shape == (10, 4)
    assert make_baseline(np.zeros(4), rows, background=True).background


@pytest.mark.parametrize(
    ("x", "baseline", "options", "pattern"),
    [
        (np.zeros(4), np.zeros((10, 5)), {}, r"^baseline: background rows .*\(R, 4\)"),
        (np.zeros(4), np.zeros((0, 4)), {}, "^baseline: expected at least one"),
        (np.zeros(4), np.zeros(5), {}, "^baseline: expected a number"),
        (np.zeros(4), "mean", {}, "^baseline: 'mean' is defined for images"),
        (np.zeros(4, int), "noise", {}, "^baseline: 'noise'"),
        (np.zeros((2, 4, 4)), "median", {}, "^baseline: expected"),
        (np.zeros((2, 4, 4)), np.nan, {}, "^baseline: expected finite"),
        (np.zeros(4), np.zeros((3, 4)), {"background": False}, "^baseline: this method"),
        (np.zeros(4), 0.0, {"background": True}, "^baseline: expected background rows"),
        (np.zeros((2, 4, 4)), "blur", {"sigma": -1}, "^sigma: "),
        (np.zeros((2, 4, 4)), "noise", {"distribution": "beta"}, "^distribution: "),
    ],
)
def test_bad_baselines_name_the_argument(x, baseline, options, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_baseline(x, baseline, **options)


def test_baseline_of_the_wrong_type():
    with pytest.raises(TypeError, match=r"^baseline: "):
        make_baseline(np.zeros(4), {"a": 1})
