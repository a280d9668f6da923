"""Attention weights per layer and head for one sentence, and attention rollout.

Attention weights show where each token's query looks; they are not, by themselves, an
explanation of the output (Jain & Wallace 2019, "Attention is not explanation"; Wiegreffe &
Pinter 2019, "Attention is not not explanation"), which is why xaikit shows them next to
gradient and perturbation maps rather than instead of them.

Attention rollout (Abnar & Zuidema 2020, "Quantifying attention flow in transformers") follows
attention through the layers: each layer's head-averaged weights get the residual connection
added as the identity, ``A' = 0.5 A + 0.5 I`` (rows renormalised), and the layers are
multiplied, ``R = A'_L ... A'_1``; ``R[i, j]`` is how much of position ``i``'s last-layer
representation traces back to input token ``j``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xaikit._plotting import new_figure, plain
from xaikit._validation import describe
from xaikit.attribution.rollout import rollout_matrix
from xaikit.text.adapter import TextModel
from xaikit.text.tokenizer import Encoding

REFERENCE_ROLLOUT = (
    "Abnar & Zuidema 2020, Quantifying attention flow in transformers, ACL (arXiv:2005.00928)"
)


@dataclass
class Attention:
    """Attention weights of one sentence.

    Attributes
    ----------
    weights : np.ndarray (layers, heads, L, L)
        Row ``i`` of ``weights[l, h]`` is how query position ``i`` spreads its attention over
        the key positions (each row sums to 1). Positions include [CLS] and [SEP].
    tokens : list of str
        The ``L`` token strings, [CLS] and [SEP] included.
    text : str
    """

    weights: np.ndarray
    tokens: list[str]
    text: str

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.weights.shape)

    def rollout(self, *, residual: bool = True) -> np.ndarray:
        """Attention rollout ``(L, L)`` through all layers (Abnar & Zuidema 2020)."""
        return rollout(self.weights, residual=residual)

    def plot(self, *, layer: int | None = None, head: int | None = None) -> Any:
        """Heat maps of the weights; returns the ``Figure``.

        ``layer`` and ``head`` both given: one large map with the tokens on its axes. Only
        ``layer``: every head of that layer. Neither: a grid of layers (rows) by heads
        (columns), small, the way exBERT and BertViz give an overview.
        """
        n_layers, n_heads = self.weights.shape[:2]
        layer = _check_index(layer, n_layers, "layer")
        head = _check_index(head, n_heads, "head")
        if layer is not None and head is not None:
            fig = new_figure((1.0 + 0.4 * len(self.tokens), 0.8 + 0.4 * len(self.tokens)))
            ax = fig.add_subplot()
            _heatmap(ax, self.weights[layer, head], self.tokens, labels=True)
            ax.set_title(f"layer {layer} · head {head}")
            return fig
        layers = [layer] if layer is not None else list(range(n_layers))
        heads = [head] if head is not None else list(range(n_heads))
        labels = len(layers) == 1 and len(heads) <= 4
        cell = 2.6 if labels else 1.3
        fig = new_figure((cell * len(heads) + 0.5, cell * len(layers) + 0.6))
        axes = fig.subplots(len(layers), len(heads), squeeze=False)
        for r, lay in enumerate(layers):
            for c, hd in enumerate(heads):
                ax = axes[r, c]
                _heatmap(ax, self.weights[lay, hd], self.tokens, labels=labels)
                if r == 0:
                    ax.set_title(f"head {hd}", fontsize=8)
                if c == 0:
                    ax.set_ylabel(f"layer {lay}", fontsize=8)
        fig.suptitle(plain(f"attention: {self.text}"), fontsize=9)
        return fig

    def plot_rollout(self, *, residual: bool = True) -> Any:
        """The rollout matrix with the tokens on its axes; returns the ``Figure``."""
        fig = new_figure((1.0 + 0.4 * len(self.tokens), 0.8 + 0.4 * len(self.tokens)))
        ax = fig.add_subplot()
        _heatmap(ax, self.rollout(residual=residual), self.tokens, labels=True)
        ax.set_title("attention rollout (Abnar & Zuidema 2020)")
        return fig


def attention(
    model: TextModel, text: Any, *, truncate: bool = True, unknown: str = "warn"
) -> Attention:
    """Attention weights of every layer and head for one sentence.

    Parameters
    ----------
    model : TextModel
        Its encoder must expose attention weights (``attn_implementation="eager"``, as
        :func:`~xaikit.text.load_minilm` loads it).
    text : str or Encoding
    truncate, unknown
        As in :meth:`Tokenizer.encode`.

    Returns
    -------
    Attention
        ``weights (layers, heads, L, L)`` with ``L`` = content tokens + 2.
    """
    if not isinstance(model, TextModel):
        raise TypeError(f"model: expected a TextModel, got {describe(model)}")
    enc = text if isinstance(text, Encoding) else None
    if enc is None:
        enc = model.tokenizer.encode(text, truncate=truncate, unknown=unknown)
    weights = model.attentions(enc.ids[None])[0]
    tok = model.tokenizer
    tokens = [tok.token(tok.cls_id), *enc.tokens, tok.token(tok.sep_id)]
    return Attention(weights=weights, tokens=tokens, text=enc.text)


def rollout(weights: Any, *, residual: bool = True) -> np.ndarray:
    """Attention rollout of weights ``(layers, heads, L, L)``: an ``(L, L)`` matrix.

    See :func:`xaikit.attribution.rollout.rollout_matrix` (Abnar & Zuidema 2020).
    """
    return rollout_matrix(weights, residual=residual)


def _heatmap(ax: Any, matrix: np.ndarray, tokens: list[str], *, labels: bool) -> None:
    ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=max(float(matrix.max()), 1e-12))
    if labels:
        ticks = np.arange(len(tokens))
        ax.set_xticks(ticks, labels=[plain(t) for t in tokens], rotation=90, fontsize=8)
        ax.set_yticks(ticks, labels=[plain(t) for t in tokens], fontsize=8)
        ax.set_xlabel("key (attended to)")
    else:
        ax.set_xticks([])
        ax.set_yticks([])


def _check_index(value: Any, size: int, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {describe(value)}")
    if not 0 <= int(value) < size:
        raise ValueError(f"{name}: expected 0 <= {name} < {size}, got {value}")
    return int(value)
