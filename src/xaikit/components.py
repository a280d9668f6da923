"""Component maps: the parts of one input that a person can name and a method can remove.

A component map gives every element of an input its component id: ``(H, W)`` for an image
``(C, H, W)`` or ``(H, W)`` (channels share a component), ``(F,)`` for a tabular row, ``(L,)``
for a token sequence. Ids are always ``0 .. M-1``, contiguous, every id used, so a method can
allocate ``M`` coalition bits without checking for holes (the homework bug: SLIC's default
``start_label=1`` left feature 0 empty and biased every surrogate fitted on it).

Segmenters are scikit-image's SLIC (Achanta et al. 2012), quickshift (Vedaldi & Soatto 2008)
and Felzenszwalb & Huttenlocher (2004). ``how="auto"`` chooses per input size: SLIC for
images of 64 px or more, a grid below (quickshift costs ~10x SLIC on 224 px and returns a single
segment on a small digit; see DESIGN.md's field notes).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from xaikit._validation import describe

KINDS = ("image", "tabular", "text")
HOWS = ("auto", "grid", "slic", "quickshift", "felzenszwalb", "features", "tokens")

# Default options of each segmenter. Images are rescaled to [0, 1] first, so the values do not
# depend on how the user normalised the input. SLIC's compactness is in LAB units (0..100) for
# color images and in intensity units (0..1) otherwise, hence two defaults.
_SLIC = {"n_segments": 50, "compactness": None, "sigma": 1.0}
_QUICKSHIFT = {"kernel_size": 4, "max_dist": 200.0, "ratio": 0.2}  # lime's defaults
_FELZENSZWALB = {"scale": 100.0, "sigma": 0.5, "min_size": None}
_OPTIONS = {
    "grid": {"cell"},
    "slic": set(_SLIC),
    "quickshift": set(_QUICKSHIFT),
    "felzenszwalb": set(_FELZENSZWALB),
    "features": {"groups"},
    "tokens": {"groups"},
}


def input_kind(x: Any, kind: str | None = None) -> str:
    """The kind of one input: a 2-D/3-D item is an image, 1-D float tabular, 1-D integer text.

    The rule is Explanation's; ``kind`` overrides it (checked against the number of axes).
    """
    arr = _as_array(x)
    if kind is None:
        if arr.ndim in (2, 3):
            return "image"
        if arr.ndim == 1:
            return "text" if arr.dtype.kind in "iu" else "tabular"
        raise ValueError(
            f"x: expected one input (C, H, W), (H, W), (F,) or (L,), got shape {arr.shape}"
        )
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    want = (2, 3) if kind == "image" else (1,)
    if arr.ndim not in want:
        raise ValueError(f"x: a {kind} input must have {want} axes, got shape {arr.shape}")
    return kind


def component_shape(x: Any, kind: str | None = None) -> tuple[int, ...]:
    """Shape of a component map for ``x``: the spatial axes of an image, else the input's."""
    arr = _as_array(x)
    return tuple(arr.shape[-2:]) if input_kind(arr, kind) == "image" else tuple(arr.shape)


def make_components(x: Any, how: Any = "auto", *, kind: str | None = None, **options: Any):
    """Component map of one input: an int64 array of ids ``0 .. M-1``, every id used.

    Parameters
    ----------
    x : array or tensor
        One input: image ``(C, H, W)`` or ``(H, W)``, tabular row ``(F,)``, token ids ``(L,)``.
    how : str or int array
        ``"auto"`` (images: ``"slic"`` from 64 px, ``"grid"`` below; tabular: ``"features"``;
        text: ``"tokens"``), ``"grid"`` (option ``cell=(h, w)`` in pixels), ``"slic"``
        (``n_segments``, ``compactness``, ``sigma``), ``"quickshift"`` (``kernel_size``,
        ``max_dist``, ``ratio``; grey images are repeated to RGB), ``"felzenszwalb"``
        (``scale``, ``sigma``, ``min_size``), ``"features"`` / ``"tokens"`` (one component
        per element; ``groups=[[0, 3], [5, 6, 7]]`` makes one component per group, each other
        element stays its own component, after the groups), or a user map of the shape of
        :func:`component_shape` with ids ``0 .. M-1``, every id used (an empty id is an
        error: ``component_values[i]`` is always the value of the user's id ``i``).
    kind : {"image", "tabular", "text"}, optional
        Overrides the inferred kind.

    Returns
    -------
    np.ndarray of int64, shape :func:`component_shape`

    References
    ----------
    Achanta et al. 2012, SLIC superpixels compared to state-of-the-art superpixel methods.
    Vedaldi & Soatto 2008, Quick shift and kernel methods for mode seeking.
    Felzenszwalb & Huttenlocher 2004, Efficient graph-based image segmentation.
    """
    arr = _as_array(x)
    kind = input_kind(arr, kind)
    shape = component_shape(arr, kind)
    if not isinstance(how, str):
        if options:
            raise TypeError(f"{sorted(options)[0]}: options apply only to a named segmentation")
        return _user_map(how, shape)
    if how not in HOWS:
        raise ValueError(
            f"components: expected one of {HOWS} or an int array of shape {shape}, got {how!r}"
        )
    if how == "auto":
        if kind == "image":
            how = "slic" if min(shape) >= 64 else "grid"
        else:
            how = "features" if kind == "tabular" else "tokens"
    unknown = sorted(set(options) - _OPTIONS[how])
    if unknown:
        raise TypeError(
            f"{unknown[0]}: not an option of components={how!r}; its options are "
            f"{sorted(_OPTIONS[how])}"
        )
    if how in ("features", "tokens"):
        return _elements(shape, options.get("groups"))
    if kind != "image":
        raise ValueError(f"components: {how!r} segments images; got a {kind} input {arr.shape}")
    if how == "grid":
        return _grid(shape, options.get("cell"))
    return _segment(arr, how, options)


def n_components(components: Any) -> int:
    """Number of components ``M`` of a map with ids ``0 .. M-1`` (``max id + 1``)."""
    comp = np.asarray(components)
    if comp.dtype.kind not in "iu":
        raise TypeError(f"components: expected integer ids, got {describe(comp)}")
    return int(comp.max()) + 1 if comp.size else 0


def default_cell(side: int) -> int:
    """Grid cell side for an image side: 7 cells across small images, 14 across large ones."""
    return max(1, math.ceil(side / (7 if side < 64 else 14)))


# ---------------------------------------------------------------------- helpers


def _as_array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == bool or arr.dtype.kind not in "fiu":
        raise TypeError(f"x: expected an array of numbers, got {describe(arr)}")
    return arr


def _relabel(ids: np.ndarray) -> np.ndarray:
    """Map the ids present to ``0 .. M-1`` keeping their order."""
    _, inverse = np.unique(ids, return_inverse=True)
    return inverse.reshape(ids.shape).astype(np.int64)


def _user_map(how: Any, shape: tuple[int, ...]) -> np.ndarray:
    comp = how.detach().cpu().numpy() if isinstance(how, torch.Tensor) else np.asarray(how)
    if comp.dtype == bool or comp.dtype.kind not in "iu":
        raise TypeError(
            f"components: expected a name in {HOWS} or an integer id array, got {describe(how)}"
        )
    if comp.shape != shape:
        raise ValueError(
            f"components: expected an id map of shape {shape} (the input without channels), "
            f"got shape {comp.shape}"
        )
    if comp.size and comp.min() < 0:
        raise ValueError(f"components: ids must be >= 0, got {comp.min()}")
    # A user's ids must be 0..M-1, each used: component_values[i] then means the user's id i.
    # Silently renumbering would shift every value; an unused id is the homework's bug (SLIC's
    # start_label=1 left feature 0 empty and never perturbed).
    present = np.unique(comp)
    if comp.size and (present[0] != 0 or present[-1] != len(present) - 1):
        missing = np.setdiff1d(np.arange(present[-1] + 1), present)[:5].tolist()
        raise ValueError(
            f"components: ids must run from 0 to M-1 with every id used; ids {missing} are "
            "empty. Renumber the map, e.g. "
            "np.unique(map, return_inverse=True)[1].reshape(map.shape)"
        )
    return comp.astype(np.int64)


def _elements(shape: tuple[int, ...], groups: Any) -> np.ndarray:
    size = math.prod(shape)
    if groups is None:
        return np.arange(size, dtype=np.int64).reshape(shape)
    if len(shape) != 1:
        raise ValueError(f"groups: only for 1-D inputs (features, tokens), got shape {shape}")
    comp = np.full(size, -1, dtype=np.int64)
    for g, members in enumerate(groups):
        idx = np.asarray(members)
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
            raise ValueError(f"groups: group {g} must be a non-empty list of ints, got {members!r}")
        if idx.min() < -size or idx.max() >= size:
            raise ValueError(f"groups: group {g} has an index outside [0, {size}): {members!r}")
        if (comp[idx] >= 0).any() or len(np.unique(idx % size)) != idx.size:
            raise ValueError(f"groups: group {g} repeats an element of an earlier group")
        comp[idx] = g
    rest = comp < 0  # ungrouped elements stay components of their own, after the groups
    comp[rest] = len(groups) + np.arange(int(rest.sum()))
    return comp


def _grid(shape: tuple[int, int], cell: Any) -> np.ndarray:
    if cell is None:
        cell = tuple(default_cell(s) for s in shape)
    elif isinstance(cell, (int, np.integer)):
        cell = (int(cell), int(cell))
    cell = tuple(cell)
    if len(cell) != 2 or not all(isinstance(c, (int, np.integer)) and c >= 1 for c in cell):
        raise ValueError(f"cell: expected an int >= 1 or a pair (h, w) of them, got {cell!r}")
    rows = np.arange(shape[0]) // cell[0]
    cols = np.arange(shape[1]) // cell[1]
    n_cols = -(-shape[1] // cell[1])  # the last cell of a row may be partial
    return (rows[:, None] * n_cols + cols[None, :]).astype(np.int64)


def _segment(arr: np.ndarray, how: str, options: dict[str, Any]) -> np.ndarray:
    from skimage import segmentation  # scikit-image is slow to import; only when segmenting

    img = arr.astype(np.float64)
    if img.ndim == 3:
        img = np.moveaxis(img, 0, -1)  # (C, H, W) -> (H, W, C), scikit-image's layout
        if img.shape[-1] == 1:
            img = img[..., 0]
    # Rescale to [0, 1]: the options' units then do not depend on the user's normalisation.
    low, high = img.min(), img.max()
    img = (img - low) / (high - low) if high > low else np.zeros_like(img)
    color = img.ndim == 3
    channel_axis = -1 if color else None
    if how == "slic":
        opts = {**_SLIC, **options}
        if opts["compactness"] is None:
            opts["compactness"] = 10.0 if color and img.shape[-1] == 3 else 0.1
        seg = segmentation.slic(
            img,
            **opts,
            start_label=0,
            convert2lab=color and img.shape[-1] == 3,
            channel_axis=channel_axis,
        )
    elif how == "quickshift":
        if not color:
            img = np.repeat(img[..., None], 3, axis=-1)  # scikit-image's quickshift needs RGB
        elif img.shape[-1] != 3:
            raise ValueError(
                f"components: quickshift needs 1 or 3 channels, got {img.shape[-1]}; use 'slic'"
            )
        seg = segmentation.quickshift(img, **{**_QUICKSHIFT, **options})
    else:
        opts = {**_FELZENSZWALB, **options}
        if opts["min_size"] is None:  # ~50 px on 224x224, scaled with the image area
            opts["min_size"] = max(5, img.shape[0] * img.shape[1] // 1000)
        seg = segmentation.felzenszwalb(img, **opts, channel_axis=channel_axis)
    return _relabel(np.asarray(seg))
