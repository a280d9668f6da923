"""Sanity checks for explanations: model-parameter randomisation (Adebayo et al. 2018).

Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim 2018, "Sanity checks for saliency maps"
(NeurIPS): an explanation that explains *the model* must change when the model's learned
weights are replaced by random ones. Methods that stay the same (e.g. Guided Backpropagation,
which in effect reconstructs the input's edges) do not depend on what the model learned.

:func:`sanity_check` works on a ``copy.deepcopy`` of the model, so the user's model is never
touched. Parameterised layers (modules with parameters of their own) are re-drawn from the
output back:

- ``mode="cascading"``: the last layer, then the last two, ... until every layer is random;
- ``mode="independent"``: each layer alone, the others keeping their trained weights.

Each layer is re-drawn by its own ``reset_parameters()`` (PyTorch's default initialisation)
under ``torch.manual_seed(seed)`` inside a forked RNG, so the user's global random state is
untouched; a layer without ``reset_parameters`` gets normal weights (std 0.02). Seeding every
layer with the same seed is Quantus's rule (``MPRT``, with its ``seed + 1``), which makes the two
comparable draw for draw.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from xaikit._plotting import new_figure, plain
from xaikit._repr import HTMLRepr
from xaikit._validation import check_choice, check_number, check_seed, check_targets, describe
from xaikit.metrics._common import as_batch, check_explained, explainer
from xaikit.model import Model

MODES = ("cascading", "independent")
SIMILARITIES = ("spearman", "pearson")
_COPY_BATCH = 64  # items per forward pass on the randomized copies


@dataclass
class SanityResult(HTMLRepr):
    """The outcome of a model-parameter randomisation check.

    Attributes
    ----------
    method : str
    mode : str
        ``"cascading"`` or ``"independent"``.
    layers : list of str
        The randomized layers in order (cascading: from the output back).
    similarity : dict
        Layer -> mean over the items of the rank correlation between ``|attribution|`` of the
        original and of the randomized model (channels summed). In cascading mode the entry for
        a layer means "this layer and all after it are random"; the last entry is the fully
        random model.
    ssim : dict
        Layer -> mean structural similarity (Wang et al. 2004) of the maps normalised to
        [0, 1]; ``None`` entries for inputs that are not images.
    passed : bool
        The verdict; see ``rule``.
    rule : str
        The rule behind ``passed``, in words.
    threshold : float
    original : array
        Channel-summed ``|attribution|`` maps of the trained model, one per item.
    randomized : dict
        Layer -> the maps of the randomized model (first item only, for plotting).
    """

    method: str
    mode: str
    layers: list[str]
    similarity: dict[str, float]
    ssim: dict[str, float | None]
    passed: bool
    rule: str
    threshold: float
    original: np.ndarray
    randomized: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    @property
    def randomised(self) -> dict[str, np.ndarray]:
        """The spelling of earlier releases for :attr:`randomized`."""
        return self.randomized

    def plot(self) -> Any:
        """The original map, the map after each randomisation step, and the similarity curves."""
        n = len(self.layers) + 1
        fig = new_figure((2.0 * n + 3.5, 2.6), layout="constrained")
        grid = fig.add_gridspec(1, n + 2)
        maps = [("original", self.original[0])] + [(k, self.randomized[k]) for k in self.layers]
        for i, (name, img) in enumerate(maps):
            ax = fig.add_subplot(grid[0, i])
            if img.ndim == 2:
                ax.imshow(img, cmap="inferno")
            else:
                ax.bar(np.arange(img.size), img.ravel())
            shown = name if i == 0 else f"{'...' if self.mode == 'cascading' else ''}{name}"
            ax.set_title(plain(shown))
            ax.set_axis_off()
        ax = fig.add_subplot(grid[0, n:])
        xs = np.arange(len(self.layers))
        ax.plot(xs, [self.similarity[k] for k in self.layers], "o-", label="rank correlation")
        if any(v is not None for v in self.ssim.values()):
            ax.plot(
                xs, [np.nan if v is None else v for v in self.ssim.values()], "s--", label="SSIM"
            )
        ax.axhline(self.threshold, color="grey", linewidth=0.8)
        ax.set_xticks(xs, [plain(k) for k in self.layers], rotation=45, ha="right")
        ax.set_ylim(-0.2, 1.05)
        ax.legend(fontsize=7)
        verdict = "PASSED" if self.passed else "FAILED"
        fig.suptitle(plain(f"{self.method}: {self.mode} randomisation, {verdict}"))
        return fig


def randomizable_layers(module: nn.Module) -> list[str]:
    """Paths of the modules that hold parameters of their own, in forward-definition order."""
    return [
        name
        for name, sub in module.named_modules()
        if name and any(True for _ in sub.parameters(recurse=False))
    ]


def sanity_check(
    model: Any,
    x: Any,
    method: Any = "saliency",
    *,
    mode: str = "cascading",
    similarity: str = "spearman",
    target: Any = None,
    batch: bool = False,
    seed: int = 0,
    threshold: float = 0.5,
    **method_params: Any,
) -> SanityResult:
    """Model-parameter randomisation test (Adebayo et al. 2018) for one method.

    Parameters
    ----------
    model : nn.Module or xaikit.Model wrapping one
        Never modified: the randomisation happens on a deep copy.
    x : array
        One input, or a batch with ``batch=True`` (similarities are averaged over the items).
    method : str or callable
        A name from ``xk.methods()``, or ``explain_fn(model, x (N, ...), targets (N,)) ->
        attributions (N, ...)`` (e.g. a model-blind edge detector).
    mode : {"cascading", "independent"}
    similarity : {"spearman", "pearson"}
        Correlation of the ``|attribution|`` maps (Spearman rank correlation in the paper).
    target : int or sequence of int, optional
        Explained class per item; default the trained model's prediction. The same targets are
        explained on every randomized copy.
    seed : int
        Seed of the re-drawn weights.
    threshold : float
        ``passed`` rule: the mean of ``similarity`` over the randomisation steps (the area under
        the cascade curve; in independent mode the mean over the layers) must be below
        ``threshold``: the explanation must forget the learned weights early and for good, not
        only once every layer is random. A constant map (no ranking) counts as similarity 0.
    **method_params
        Parameters of the named method.

    Returns
    -------
    SanityResult
    """
    mode = check_choice(mode, name="mode", choices=MODES)
    similarity = check_choice(similarity, name="similarity", choices=SIMILARITIES)
    threshold = check_number(threshold, name="threshold")
    seed = check_seed(seed, allow_none=False)
    module = model.module if isinstance(model, Model) else model
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"model: the randomisation test needs a PyTorch model (its weights are re-drawn), got "
            f"{describe(model)}"
        )
    name, explain_fn = explainer(method, method_params)
    xb = as_batch(x, batch=batch)
    trained = Model(module)
    scores = trained.scores(xb)
    if target is None:
        targets = scores.argmax(axis=1)
    else:
        targets = check_targets(target, n=len(xb), n_classes=scores.shape[1])
    original = _maps(check_explained(explain_fn(module, xb, targets), xb), xb)

    work = copy.deepcopy(module)
    trained_state = copy.deepcopy(work.state_dict())
    layers = randomizable_layers(work)[::-1]  # from the output back
    if not layers:
        raise ValueError("model: it has no layer with parameters to randomise")
    sims: dict[str, float] = {}
    ssims: dict[str, float | None] = {}
    randomized: dict[str, np.ndarray] = {}
    # A named method gets the copy wrapped with a fixed batch size: the deep copy is a new
    # object, so "auto" would time batch sizes again for it; a callable gets the plain module.
    wrapped = Model(work, batch_size=_COPY_BATCH) if isinstance(method, str) else work
    for layer in layers:
        if mode == "independent":
            work.load_state_dict(trained_state)
        _redraw(work.get_submodule(layer), seed=seed)
        maps = _maps(check_explained(explain_fn(wrapped, xb, targets), xb), xb)
        sims[layer] = float(
            np.mean([_correlation(a, b, similarity) for a, b in zip(original, maps, strict=True)])
        )
        ssims[layer] = _mean_ssim(original, maps)
        randomized[layer] = maps[0]
    # The verdict reads the whole randomisation curve, not only its end: a method that ignores
    # the top layers' weights (Guided Backprop in Adebayo et al.'s Fig. 2) keeps a high
    # similarity for most of the cascade even if the fully random model finally moves it.
    mean = float(np.mean(list(sims.values())))
    passed = mean < threshold
    rule = f"mean similarity over the {mode} randomisations ({mean:.3f}) < {threshold}"
    return SanityResult(
        name, mode, layers, sims, ssims, bool(passed), rule, threshold, original, randomized
    )


def _redraw(module: nn.Module, *, seed: int) -> None:
    """Re-draw ``module``'s own parameters, seeded, without touching the global RNG."""
    devices = [p.device.index or 0 for p in module.parameters(recurse=False) if p.is_cuda]
    with torch.random.fork_rng(devices=sorted(set(devices))):
        torch.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            with torch.no_grad():
                for p in module.parameters(recurse=False):
                    p.normal_(0.0, 0.02)


def _maps(values: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """``|attribution|`` summed over channels, one map per item."""
    a = np.abs(values)
    if xb.ndim == 4 and a.ndim == 4:
        a = a.sum(axis=1)
    return a


def _correlation(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    from scipy.stats import pearsonr, spearmanr

    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0  # a constant map ranks nothing: it shares no ordering with the other
    r = spearmanr(a, b).statistic if kind == "spearman" else pearsonr(a, b).statistic
    return float(r)


def _mean_ssim(original: np.ndarray, maps: np.ndarray) -> float | None:
    if original.ndim != 3 or min(original.shape[1:]) < 3:
        return None
    from skimage.metrics import structural_similarity

    side = min(original.shape[1:])
    win = min(7, side if side % 2 else side - 1)
    out = []
    for a, b in zip(original, maps, strict=True):
        a = a / a.max() if a.max() > 0 else a
        b = b / b.max() if b.max() > 0 else b
        out.append(structural_similarity(a, b, data_range=1.0, win_size=win))
    return float(np.mean(out))
