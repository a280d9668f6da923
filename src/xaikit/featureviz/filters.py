"""Filter activation maps: where a filter fires on given images (the homework's "filter
activation"), drawn beside the filter's visualisation.

The two views answer complementary questions: the activation map ``a_ij`` of channel ``k`` on
real images says *where* in those images the filter responds; the visualisation
``argmax_X sum_ij a_ij`` (:func:`xaikit.visualize`) says *what* it responds to most (Erhan et
al. 2009; Zeiler & Fergus 2014 show both side by side).

References
----------
.. [1] Erhan, Bengio, Courville, Vincent (2009). Visualizing higher-layer features of a deep
   network. Technical Report 1341, University of Montreal.
.. [2] Zeiler, Fergus (2014). Visualizing and understanding convolutional networks. ECCV.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xaikit._plotting import plain
from xaikit._repr import HTMLRepr
from xaikit._validation import check_batch, describe
from xaikit.model import as_model

__all__ = ["FilterActivations", "filter_activations"]


@dataclass
class FilterActivations(HTMLRepr):
    """Activation maps of some channels of one layer on given images.

    Attributes
    ----------
    maps : np.ndarray, shape (N, K, ...)
        ``maps[i, j]`` is channel ``channels[j]``'s activation map on image ``i`` (the layer's
        spatial size, e.g. 14x14 for a 28x28 input after one pooling).
    images : np.ndarray, shape (N, C, H, W)
        The images.
    layer : str
        The layer path.
    channels : list of int
        The channels, in the order of ``maps``' axis 1.
    """

    maps: np.ndarray
    images: np.ndarray
    layer: str
    channels: list[int]

    def plot(
        self,
        *,
        visualization: Any = None,
        max_images: int = 6,
        max_channels: int = 16,
        cmap: str = "inferno",
        size: float = 1.2,
    ) -> Any:
        """A grid: one row per image (the image, then each channel's map), optionally a first
        row with each channel's visualisation; returns a matplotlib ``Figure``.

        Each channel's maps share one colour scale across the images, so a brighter map means a
        stronger response, not just a different normalisation.

        Parameters
        ----------
        visualization : Visualization, optional
            The result of :func:`xaikit.visualize` for this layer: one item per channel of the
            layer (``objectives.channels(layer)``) or one per entry of :attr:`channels`.
        max_images, max_channels : int
            How many images (rows) and channels (columns) to draw at most.
        """
        from xaikit._plotting import new_figure

        n = min(len(self.images), max_images)
        k = min(len(self.channels), max_channels)
        vis = _visualization_images(visualization, self.channels[:k])
        rows = n + (vis is not None)
        fig = new_figure((size * (k + 1), size * rows + 0.4), layout=None)
        grid = fig.add_gridspec(rows, k + 1, wspace=0.05, hspace=0.1)
        maps = self.maps[:n, :k].reshape(n, k, -1) if self.maps.ndim > 3 else None
        low = maps.min(axis=(0, 2)) if maps is not None else None
        high = maps.max(axis=(0, 2)) if maps is not None else None
        row = 0
        if vis is not None:
            ax = fig.add_subplot(grid[0, 0])
            ax.text(0.5, 0.5, "visualisation", ha="center", va="center", fontsize=7)
            ax.set_axis_off()
            for j in range(k):
                ax = fig.add_subplot(grid[0, j + 1])
                ax.imshow(_gray(vis[j]), cmap="gray", interpolation="nearest")
                ax.set_title(plain(f"{self.layer}:{self.channels[j]}"), fontsize=7)
                ax.set_axis_off()
            row = 1
        for i in range(n):
            ax = fig.add_subplot(grid[row + i, 0])
            ax.imshow(_gray(self.images[i]), cmap="gray", interpolation="nearest")
            ax.set_axis_off()
            for j in range(k):
                ax = fig.add_subplot(grid[row + i, j + 1])
                amap = self.maps[i, j]
                if amap.ndim == 2:
                    ax.imshow(amap, cmap=cmap, vmin=low[j], vmax=high[j], interpolation="nearest")
                else:  # a unit without spatial axes: its value as text
                    ax.text(0.5, 0.5, f"{float(np.mean(amap)):.3g}", ha="center", va="center")
                if i == 0 and vis is None:
                    ax.set_title(plain(f"{self.layer}:{self.channels[j]}"), fontsize=7)
                ax.set_axis_off()
        return fig


def filter_activations(
    model: Any,
    images: Any,
    *,
    layer: str,
    channels: Sequence[int] | None = None,
) -> FilterActivations:
    """Activation maps of ``layer``'s channels on ``images``: where each filter fires.

    Runs the model once over the images (batched, eval mode, the model left as it was) and
    records the layer's output with a hook removed afterwards.

    Parameters
    ----------
    model : nn.Module or xaikit.Model
        A PyTorch model.
    images : array or tensor, shape (N, C, H, W)
        The images.
    layer : str
        Layer path from ``named_modules()``.
    channels : sequence of int, optional
        Which channels; default all.

    Returns
    -------
    FilterActivations
        ``maps`` (N, K, h, w), ``plot(visualization=...)``.

    Examples
    --------
    >>> fa = filter_activations(cnn, X[:4], layer="conv2", channels=[0, 1, 2])  # doctest: +SKIP
    >>> v = visualize(cnn, objectives.channels("conv2", [0, 1, 2]))             # doctest: +SKIP
    >>> fa.plot(visualization=v)                                                # doctest: +SKIP
    """
    m = as_model(model)
    if not m.is_torch:
        raise TypeError("model: activation maps need a PyTorch model, not a callable")
    if not isinstance(layer, str):
        raise TypeError(f"layer: expected a layer path (str), got {describe(layer)}")
    x = check_batch(images, name="images", item_shape=m.input_shape)
    m.find_layer(layer, argument="layer")
    with m.layer(layer, argument="layer") as recording:
        m.scores(x)
    acts = recording.activations
    if acts.ndim < 2:
        raise ValueError(f"layer: {layer!r} has output shape {acts.shape} without a channel axis")
    count = acts.shape[1]
    if channels is None:
        chosen = list(range(count))
    else:
        if isinstance(channels, (str, bytes)) or not isinstance(channels, (Sequence, np.ndarray)):
            raise TypeError(f"channels: expected a sequence of ints, got {describe(channels)}")
        chosen = []
        for c in channels:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < count:
                raise ValueError(
                    f"channels: expected channel indices in [0, {count}) for layer {layer!r}, "
                    f"got {c!r}"
                )
            chosen.append(int(c))
        if not chosen:
            raise ValueError("channels: expected at least one channel, got none")
    images_np = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return FilterActivations(acts[:, chosen], images_np, layer, chosen)


def _gray(img: np.ndarray) -> np.ndarray:
    """An image as something imshow can draw: (H, W) for one channel, (H, W, 3) for RGB."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3 and img.shape[0] == 3:
        lo, hi = img.min(), img.max()
        return (img.transpose(1, 2, 0) - lo) / (hi - lo + 1e-12)
    if img.ndim == 3:
        return img.mean(axis=0)
    return img if img.ndim == 2 else img.reshape(1, -1)


def _visualization_images(vis: Any, channels: list[int]) -> np.ndarray | None:
    """The visualisation image for each of ``channels``, or None when none was given."""
    if vis is None:
        return None
    images = np.asarray(vis.images)
    if len(images) == len(channels):  # one item per plotted channel, in order
        return images
    if max(channels) < len(images):  # one item per channel of the layer: pick by number
        return images[channels]
    raise ValueError(
        f"visualization: expected one image per channel, got {len(images)} for channels {channels}"
    )
