"""Contextual embeddings of one word across sentences, layer by layer.

The homework's question: is "apple" in "I ate an apple" closer to "apple" in "the apple was
sweet" than to "apple" in "Apple released a phone"? In a static embedding every occurrence is
the same vector; a transformer mixes in the context layer after layer. :func:`word_embeddings`
collects the word's vector in each sentence at every layer (the embedding output, then each
transformer layer), and :class:`WordEmbeddings` gives the cosine or Euclidean distance tables
between the occurrences, how far apart the groups are per layer, and a 2-D projection per layer
(Ethayarajh 2019, "How contextual are contextualized word representations?").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xaikit._plotting import legend_text, new_figure, plain
from xaikit._validation import check_choice, describe
from xaikit.text.adapter import TextModel

METRICS = ("cosine", "euclidean")


@dataclass
class WordEmbeddings:
    """A word's contextual vectors: ``vectors[l, i]`` in sentence ``i`` at layer ``l``.

    Attributes
    ----------
    vectors : np.ndarray (layers + 1, N, D)
        Layer 0 is the embedding output, layer ``l`` the output of transformer layer ``l``.
    sentences : list of str
    word : str
    positions : list of list of int
        The content-token positions averaged in each sentence (the word's pieces).
    groups : np.ndarray or None
        A label per sentence (e.g. "fruit" / "company") for the within/between table.
    """

    vectors: np.ndarray
    sentences: list[str]
    word: str
    positions: list[list[int]]
    groups: np.ndarray | None = None

    @property
    def n_layers(self) -> int:
        return self.vectors.shape[0] - 1

    def distances(self, layer: int, *, metric: str = "cosine") -> np.ndarray:
        """Pairwise distances ``(N, N)`` at ``layer``: cosine distance (1 - cos) or Euclidean."""
        metric = check_choice(metric, name="metric", choices=METRICS)
        v = self.vectors[self._layer(layer)].astype(np.float64)
        if metric == "euclidean":
            squared = (v**2).sum(axis=1)
            d2 = squared[:, None] + squared[None, :] - 2.0 * v @ v.T
            out = np.sqrt(np.clip(d2, 0.0, None))
        else:
            unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            out = 1.0 - unit @ unit.T
        np.fill_diagonal(out, 0.0)
        return out

    def similarity(self, layer: int) -> np.ndarray:
        """Cosine similarity ``(N, N)`` at ``layer`` (1 - the cosine distance)."""
        return 1.0 - self.distances(layer, metric="cosine")

    def group_table(self, *, metric: str = "cosine") -> list[dict[str, float]]:
        """Per layer: mean distance within groups, between groups, and their ratio.

        A ratio (between / within) above 1 means the layer separates the word's senses.
        """
        if self.groups is None:
            raise ValueError("groups: pass groups= to word_embeddings for a within/between table")
        same = self.groups[:, None] == self.groups[None, :]
        off = ~np.eye(len(self.groups), dtype=bool)
        if not (same & off).any() or not (~same).any():
            raise ValueError("groups: need two groups, one with at least two sentences")
        rows = []
        for layer in range(self.n_layers + 1):
            d = self.distances(layer, metric=metric)
            within, between = float(d[same & off].mean()), float(d[~same].mean())
            rows.append(
                {
                    "layer": layer,
                    "within": within,
                    "between": between,
                    "ratio": between / within if within > 0 else float("inf"),
                }
            )
        return rows

    def project(self, *, how: str = "pca", seed: int = 0) -> np.ndarray:
        """2-D coordinates ``(layers + 1, N, 2)``, one projection fitted per layer."""
        how = check_choice(how, name="how", choices=("pca", "tsne"))
        out = np.zeros((*self.vectors.shape[:2], 2))
        for layer, v in enumerate(self.vectors.astype(np.float64)):
            if how == "pca":
                centered = v - v.mean(axis=0)
                _, _, vt = np.linalg.svd(centered, full_matrices=False)
                coords = centered @ vt[:2].T
                out[layer, :, : coords.shape[1]] = coords
            else:
                from sklearn.manifold import TSNE

                perplexity = max(1.0, min(30.0, (len(v) - 1) / 3))
                out[layer] = TSNE(2, perplexity=perplexity, random_state=seed).fit_transform(v)
        return out

    def plot_distances(self, layer: int, *, metric: str = "cosine") -> Any:
        """The distance table at ``layer`` as an annotated matrix; returns the ``Figure``."""
        d = self.distances(layer, metric=metric)
        n = len(self.sentences)
        fig = new_figure((2.5 + 0.55 * n, 1.5 + 0.5 * n))
        ax = fig.add_subplot()
        im = ax.imshow(d, cmap="viridis_r")
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{d[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w")
        labels = [plain(_short(s)) for s in self.sentences]
        ax.set_xticks(np.arange(n), labels=[str(i) for i in range(n)], fontsize=7)
        ax.set_yticks(np.arange(n), labels=labels, fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.8, label=f"{metric} distance")
        ax.set_title(plain(f"{self.word!r} at layer {layer}"))
        return fig

    def plot_projection(self, *, layers: Any = None, how: str = "pca") -> Any:
        """Scatter of the 2-D projection per layer, coloured by group; returns the ``Figure``."""
        coords = self.project(how=how)
        layers = (
            list(range(self.n_layers + 1)) if layers is None else [self._layer(i) for i in layers]
        )
        cols = min(4, len(layers))
        rows = -(-len(layers) // cols)
        fig = new_figure((3.0 * cols, 2.8 * rows))
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        groups = self.groups if self.groups is not None else np.zeros(len(self.sentences), int)
        names = list(dict.fromkeys(groups.tolist()))
        for ax, layer in zip(axes, layers, strict=False):
            for k, name in enumerate(names):
                sel = groups == name
                ax.scatter(*coords[layer, sel].T, s=18, color=f"C{k}", label=legend_text(name))
            ax.set_title(f"layer {layer}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[len(layers) :]:
            ax.set_axis_off()
        if self.groups is not None:
            axes[0].legend(fontsize=7, frameon=False)
        fig.suptitle(plain(f"{self.word!r} in {len(self.sentences)} sentences ({how.upper()})"))
        return fig

    def _layer(self, layer: Any) -> int:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layer: expected an int, got {describe(layer)}")
        if not 0 <= int(layer) <= self.n_layers:
            raise ValueError(f"layer: expected 0 <= layer <= {self.n_layers}, got {layer}")
        return int(layer)


def word_embeddings(
    model: TextModel,
    sentences: Any,
    word: str,
    *,
    positions: Any = None,
    groups: Any = None,
) -> WordEmbeddings:
    """The contextual vectors of ``word`` in each sentence, at every layer.

    Parameters
    ----------
    model : TextModel
    sentences : list of str
    word : str
        Found in each sentence by its word pieces (its first occurrence); a word of several
        pieces is the mean of their vectors.
    positions : list of int, optional
        The content-token position of the word in each sentence instead of searching for it
        (the homework's ``select_word_index``).
    groups : sequence, optional
        A label per sentence (e.g. the word's sense) for :meth:`WordEmbeddings.group_table`.
    """
    if not isinstance(model, TextModel):
        raise TypeError(f"model: expected a TextModel, got {describe(model)}")
    if isinstance(sentences, str) or not isinstance(sentences, (list, tuple)) or not sentences:
        raise TypeError(f"sentences: expected a non-empty list of str, got {describe(sentences)}")
    if not isinstance(word, str) or not word.strip():
        raise ValueError(f"word: expected a non-empty string, got {word!r}")
    tok = model.tokenizer
    encodings = [tok.encode(s) for s in sentences]
    if positions is None:
        pieces = tok.encode(word).ids.tolist()
        spans = [_find(e.ids.tolist(), pieces, i, e, word) for i, e in enumerate(encodings)]
    else:
        if len(positions) != len(sentences):
            raise ValueError(
                f"positions: expected one per sentence ({len(sentences)}), got {len(positions)}"
            )
        spans = []
        for i, (p, e) in enumerate(zip(positions, encodings, strict=True)):
            if not 0 <= int(p) < len(e):
                raise ValueError(
                    f"positions: {p} is outside sentence {i} ({len(e)} tokens: {e.tokens})"
                )
            spans.append([int(p)])
    ids = tok.encode_batch([e.text for e in encodings])
    hidden = model.hidden_states(ids)  # (N, layers + 1, 2 + L, D)
    # Content position p is sequence position p + 1 (after [CLS]); no padding comes before it.
    vectors = np.stack(
        [hidden[i][:, [p + 1 for p in span]].mean(axis=1) for i, span in enumerate(spans)], axis=1
    )
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (len(sentences),):
            raise ValueError(
                f"groups: expected one label per sentence ({len(sentences)}), got shape "
                f"{groups.shape}"
            )
    return WordEmbeddings(vectors, [e.text for e in encodings], word, spans, groups)


def _find(ids: list[int], pieces: list[int], i: int, enc: Any, word: str) -> list[int]:
    for start in range(len(ids) - len(pieces) + 1):
        if ids[start : start + len(pieces)] == pieces:
            return list(range(start, start + len(pieces)))
    raise ValueError(
        f"sentences: {word!r} is not in sentence {i} ({enc.text!r}, tokens {enc.tokens}); pass "
        "positions= to pick a token"
    )


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
