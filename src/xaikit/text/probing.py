"""Probing a text model layer by layer: where does each property become linearly decodable?

:func:`probe_properties` records the sentence vector (masked mean over tokens) of every layer
once for the generated sentences (:func:`~xaikit.text.make_sentences`) and runs
:func:`xaikit.probe` per property on those recordings, each with its control task (Hewitt &
Liang 2019): the same probe on labels that carry no information about the sentences.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from xaikit._validation import check_choice, describe
from xaikit.model import Model
from xaikit.representations import ProbeResult, activations, probe
from xaikit.text.adapter import TextModel
from xaikit.text.data import PROPERTIES, SentenceData, make_sentences
from xaikit.text.explain import TEXT_BATCH_SIZE

CONTROLS = ("sentence", "subject")


class _Recorded(nn.Module):
    """Replays recorded layer vectors ``(N, layers, D)`` through modules named like the model's.

    ``xk.probe`` records layers during a forward; feeding it the vectors already recorded
    avoids running the transformer again for every property (one pass instead of three).
    """

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.pooled = nn.ModuleList(nn.Identity() for _ in range(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.pooled):
            layer(x[:, i])
        return x[:, -1, :1]


def probe_properties(
    model: TextModel,
    data: SentenceData | None = None,
    *,
    properties: Any = PROPERTIES,
    control: str = "sentence",
    kind: str = "linear",
    seed: int = 0,
) -> dict[str, ProbeResult]:
    """A probe per layer and property, with control tasks; returns ``{property: ProbeResult}``.

    Parameters
    ----------
    model : TextModel
    data : SentenceData, optional
        Default :func:`make_sentences` ``(400, seed=seed)``.
    properties : sequence of str
        Keys of ``data.labels``.
    control : {"sentence", "subject"}
        The control task's "types" (Hewitt & Liang 2019). ``"sentence"``: each sentence its
        own type, so the control labels are a permutation of the real ones and a probe can
        only memorise them (held-out control accuracy is chance). ``"subject"``: one random
        label per subject noun; on the generated sentences a linear probe learns any labelling
        of the 12 nouns perfectly at every layer, so selectivity against it is 0: the nouns are
        trivially decodable, and this control says so.
    kind : {"linear", "mlp"}
        The probe (:func:`xaikit.probe`).
    seed : int
        Seeds the data, the split and the control labels.

    Returns
    -------
    dict of str to ProbeResult
        Layers are ``pooled.0`` (embedding output) .. ``pooled.<n_layers>``.
    """
    if not isinstance(model, TextModel):
        raise TypeError(f"model: expected a TextModel, got {describe(model)}")
    control = check_choice(control, name="control", choices=CONTROLS)
    data = make_sentences(400, seed=seed) if data is None else data
    properties = [properties] if isinstance(properties, str) else list(properties)
    for name in properties:
        if name not in data.labels:
            raise ValueError(f"properties: {name!r} is not one of {sorted(data.labels)}")
    ids = model.encode(data.texts)
    layers = model.layer_names("pooled")
    recorded = activations(Model(model, batch_size=TEXT_BATCH_SIZE), ids, layers=layers)
    stacked = np.stack([recorded[name] for name in layers], axis=1).astype(np.float32)
    replay = _Recorded(len(layers))
    types = data.types if control == "subject" else None
    return {
        name: probe(
            replay, stacked, data.labels[name], layers=layers, kind=kind, types=types, seed=seed
        )
        for name in properties
    }
