"""2-D projections of a layer's activations, coloured by label, one layer or layer after layer.

A first look inside a network: take what a hidden layer outputs for many inputs,
project it to two dimensions (PCA, t-SNE or UMAP) and see whether the points group by the
property of interest (Mohamed, Hinton & Penn 2012 did this for speech: by speaker at the input,
by sentence in deep layers). :func:`project_layers` draws the same projection for each layer
side by side, so the change from layer to layer is one figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xaikit._plotting import plain
from xaikit._repr import HTMLRepr
from xaikit._validation import check_choice, check_seed
from xaikit.representations._common import check_labels, flat, new_figure, scatter_by_label
from xaikit.representations.activations import DEFAULT_MEMORY_BUDGET, capture, data_length

__all__ = ["LayerProjections", "Projection", "project", "project_layers"]

METHODS = ("pca", "tsne", "umap")
# t-SNE on more features than this is preceded by a PCA to this many (van der Maaten &
# Hinton 2008, section 5; scikit-learn's advice): the neighbours barely change and it is
# much faster.
_TSNE_PCA = 50


@dataclass
class Projection(HTMLRepr):
    """A layer's activations projected to 2-D.

    Attributes
    ----------
    coords : np.ndarray, shape (N, 2)
        One point per item, in the order of the data.
    labels : np.ndarray or None
        The labels that colour the points (given, or the data's own targets).
    layer : str
        The projected layer's path.
    how : str
        ``"pca"``, ``"tsne"`` or ``"umap"``.
    info : dict
        What the projection reports about itself: for PCA ``explained_variance_ratio``.
    """

    coords: np.ndarray
    labels: np.ndarray | None
    layer: str
    how: str
    info: dict = field(default_factory=dict)

    def plot(self, *, ax: Any = None, title: str | None = None, legend: bool = True) -> Any:
        """Scatter the points coloured by label and return the matplotlib ``Figure``."""
        if ax is None:
            ax = new_figure((5.5, 4.5)).add_subplot()
        scatter_by_label(ax, self.coords, self.labels, legend=legend)
        if title is None:
            title = f"{self.layer} · {self.how.upper() if self.how == 'pca' else self.how}"
            ratio = self.info.get("explained_variance_ratio")
            if ratio is not None:
                title += f" ({100 * float(np.sum(ratio)):.0f}% of variance)"
        ax.set_title(plain(title))
        ax.set_xticks([])
        ax.set_yticks([])
        return ax.figure


@dataclass
class LayerProjections(HTMLRepr):
    """One :class:`Projection` per layer, in the order asked for."""

    projections: dict[str, Projection]

    @property
    def layers(self) -> list[str]:
        """The projected layer paths."""
        return list(self.projections)

    def __getitem__(self, layer: str) -> Projection:
        return self.projections[layer]

    def plot(self, *, cols: int | None = None) -> Any:
        """One panel per layer, left to right then top to bottom; one legend for all."""
        n = len(self.projections)
        cols = cols or min(n, 4)
        rows = math.ceil(n / cols)
        fig = new_figure((3.6 * cols + 1.2, 3.4 * rows))
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for i, (ax, p) in enumerate(zip(axes, self.projections.values(), strict=False)):
            p.plot(ax=ax, title=p.layer, legend=False)
            if i == 0 and p.labels is not None and len(np.unique(p.labels)) <= 20:
                handles, names = ax.get_legend_handles_labels()
                fig.legend(handles, names, loc="outside right center", frameon=False, markerscale=3)
        for ax in axes[n:]:
            ax.set_axis_off()
        first = next(iter(self.projections.values()))
        fig.suptitle(f"{first.how.upper() if first.how == 'pca' else first.how} of each layer")
        return fig


def project(
    model: Any,
    data: Any,
    *,
    layer: str,
    how: str = "pca",
    labels: Any = None,
    seed: int = 0,
    pool: Any = None,
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool | None = None,
    **params: Any,
) -> Projection:
    """Project one layer's activations over ``data`` to two dimensions.

    Parameters
    ----------
    model : nn.Module or Model
    data : array, tensor, Dataset or DataLoader
        See :func:`xaikit.activations`.
    layer : str
        Layer path, e.g. ``"pool2"``.
    how : {"pca", "tsne", "umap"}
        ``"pca"``: ``sklearn.decomposition.PCA(n_components=2, random_state=seed)`` on the
        flattened activations (its default ``svd_solver="auto"``). ``"tsne"``:
        ``sklearn.manifold.TSNE(n_components=2, random_state=seed, init="pca")``, after a PCA
        to 50 dimensions when there are more features, with perplexity ``min(30, (N - 1) / 3)``.
        ``"umap"``: ``umap.UMAP(n_components=2, random_state=seed)``; needs the optional
        extra ``pip install 'xaikit[umap]'``.
    labels : sequence, optional
        One label per item to colour the points by. Default: the data's own targets when it
        yields ``(input, target)`` pairs, else none.
    seed : int
        Seeds the projection (PCA's randomised solver, t-SNE, UMAP).
    pool : {"mean", "max"} or callable, optional
        Pool each activation map first; see :func:`xaikit.activations`. Default: the whole
        activation, flattened.
    batch_size, memory_budget, progress
        As in :func:`xaikit.activations`.
    **params
        Passed on to the projection's estimator (e.g. ``perplexity=10``, ``n_neighbors=30``).

    Returns
    -------
    Projection
        ``coords`` (N, 2), ``labels``, ``layer``, ``how``; ``plot()`` draws the scatter.

    References
    ----------
    Mohamed, Hinton & Penn 2012, Understanding how deep belief networks perform acoustic
    modelling, ICASSP. van der Maaten & Hinton 2008, Visualizing data using t-SNE, JMLR 9.
    McInnes, Healy & Melville 2018, UMAP, arXiv:1802.03426.

    Examples
    --------
    >>> from xaikit.datasets import load_default_cnn, load_mnist
    >>> X, y = load_mnist("test")
    >>> p = project(load_default_cnn(), X, layer="relu3", labels=y)
    >>> p.coords.shape
    (1000, 2)
    """
    if not isinstance(layer, str):
        raise TypeError(
            f"layer: expected one layer path (str), got {type(layer).__name__}; use "
            "project_layers for several"
        )
    options = dict(how=how, labels=labels, seed=seed, pool=pool, batch_size=batch_size)
    result = _projections(
        model,
        data,
        [layer],
        "layer",
        memory_budget=memory_budget,
        progress=progress,
        params=params,
        **options,
    )
    return result.projections[layer]


def project_layers(
    model: Any,
    data: Any,
    *,
    layers: list[str],
    how: str = "pca",
    labels: Any = None,
    seed: int = 0,
    pool: Any = None,
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool | None = None,
    **params: Any,
) -> LayerProjections:
    """Project each of several layers to 2-D (one pass over the data for all of them).

    A layer-by-layer figure (as Mohamed, Hinton & Penn 2012 drew for speech):
    ``project_layers(...).plot()`` draws one panel per
    layer, coloured by the same labels. Parameters as in :func:`project`, with ``layers`` a
    list of layer paths; every layer is projected on its own (its own PCA or t-SNE).

    Returns
    -------
    LayerProjections
        ``projections`` (layer -> :class:`Projection`) and ``plot()``.
    """
    options = dict(how=how, labels=labels, seed=seed, pool=pool, batch_size=batch_size)
    return _projections(
        model,
        data,
        layers,
        "layers",
        memory_budget=memory_budget,
        progress=progress,
        params=params,
        **options,
    )


def _projections(
    model: Any,
    data: Any,
    layers: Any,
    layers_name: str,
    *,
    how: str,
    labels: Any,
    seed: int,
    pool: Any,
    batch_size: int | None,
    memory_budget: int,
    progress: bool | None,
    params: dict,
) -> LayerProjections:
    how = check_choice(how, name="how", choices=METHODS)
    seed = check_seed(seed, allow_none=False, bits=32)  # scikit-learn's random_state
    if how == "umap":
        _import_umap()  # fail before the forward passes, not after
    n = data_length(data)
    if labels is not None and n is not None:
        labels = check_labels(labels, n=n, classes=False)
    acts = capture(
        model,
        data,
        layers=layers,
        pool=pool,
        batch_size=batch_size,
        memory_budget=memory_budget,
        progress=progress,
        layers_name=layers_name,
    )
    if labels is None:
        labels = acts.targets
    elif n is None:
        labels = check_labels(labels, n=acts.n, classes=False)
    if acts.n < 3:
        raise ValueError(f"data: a 2-D projection needs at least 3 items, got {acts.n}")
    projections = {}
    for layer in acts.layers:
        coords, info = _project(flat(acts[layer]), how=how, seed=seed, params=params)
        projections[layer] = Projection(coords, labels, layer, how, info)
    return LayerProjections(projections)


def _project(X: np.ndarray, *, how: str, seed: int, params: dict) -> tuple[np.ndarray, dict]:
    if how == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(**{"n_components": 2, "random_state": seed, **params})
        coords = pca.fit_transform(X)
        return coords, {"explained_variance_ratio": pca.explained_variance_ratio_}
    if how == "tsne":
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE

        if X.shape[1] > _TSNE_PCA and X.shape[0] > _TSNE_PCA:
            X = PCA(n_components=_TSNE_PCA, random_state=seed).fit_transform(X)
        options = {
            "n_components": 2,
            "random_state": seed,
            "init": "pca",
            "perplexity": min(30.0, (len(X) - 1) / 3),
            **params,
        }
        return TSNE(**options).fit_transform(X), {}
    umap = _import_umap()
    options = {"n_components": 2, "random_state": seed, **params}
    return np.asarray(umap.UMAP(**options).fit_transform(X)), {}


def _import_umap() -> Any:
    try:
        import umap
    except ImportError as err:
        raise ImportError(
            "how='umap' needs the optional package umap-learn: pip install 'xaikit[umap]' "
            "(or use how='pca' or how='tsne')"
        ) from err
    return umap
