"""Token attributions of one text through xaikit's engines, with the tokens shown as text.

:func:`explain` tokenizes, chooses what "removing a token" means, picks the embedding layer
for gradient methods, and calls :func:`xaikit.explain`, so LIME, KernelSHAP, occlusion,
saliency and Integrated Gradients on text are the same code as on images and tables:

- **perturbation** (``lime``, ``kernel_shap``, ``occlusion``): a removed token becomes the
  [MASK] token (``removal="mask"``, what BERT saw in pre-training for a missing word), the pad
  token (``"pad"``), or is deleted from the sequence (``"delete"``, a :class:`TextModel` only:
  the later tokens move up, as if the word had never been written). ``occlusion`` slides a
  window of ``window`` tokens.
- **gradients** (``saliency``, ``input_x_gradient``, ``integrated_gradients``) at the output of
  the embedding layer, summed over the embedding dimension: one value per token. Integrated
  Gradients' path starts at the pad token's embedding in every content position ([CLS] and
  [SEP] stay), so completeness reads sum(values) = F(text) - F(pads).
- ``attention_rollout`` (Abnar & Zuidema 2020): how much the sentence vector traces back to
  each token through the attention layers, as one more map to set next to the others.

Special tokens are never components: a :class:`TextModel` adds them inside its forward.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaikit._validation import check_choice, describe
from xaikit.attribution import explain as xk_explain
from xaikit.explanation import Explanation
from xaikit.model import Model
from xaikit.text.adapter import TextModel, embedding_layer
from xaikit.text.attention import REFERENCE_ROLLOUT, rollout
from xaikit.text.tokenizer import Encoding, Tokenizer, as_tokenizer

PERTURBATION = ("lime", "kernel_shap", "occlusion")
GRADIENT = ("saliency", "input_x_gradient", "integrated_gradients")
METHODS = (*PERTURBATION, *GRADIENT, "attention_rollout")
REMOVALS = ("mask", "pad", "delete")
#: Batch size for a TextModel given without an xk.Model: the automatic search would run again
#: for every new sentence length (its key holds the input shape), and on a CPU a transformer's
#: throughput is flat from about 16 sentences per batch.
TEXT_BATCH_SIZE = 32


def explain(
    model: Any,
    text: Any,
    *,
    method: str = "integrated_gradients",
    target: int | None = None,
    tokenizer: Any = None,
    removal: str = "mask",
    truncate: bool = True,
    unknown: str = "warn",
    **params: Any,
) -> Explanation:
    """Explain a text model's output for ``target`` on one text, one value per token.

    Parameters
    ----------
    model : TextModel, nn.Module on token ids, xaikit.Model, or callable on id batches
        A :class:`TextModel` brings its tokenizer and embedding layer. Another module takes
        the content ids ``(N, L)`` the ``tokenizer`` gives (without special tokens).
    text : str or Encoding
    method : str
        One of :data:`METHODS`.
    target : int, optional
        The explained class; default the predicted one.
    tokenizer : Tokenizer or Hugging Face tokenizer, optional
        Default ``model.tokenizer``.
    removal : {"mask", "pad", "delete"}
        What a removed token becomes for ``lime``, ``kernel_shap`` and ``occlusion`` (ignored
        when ``baseline=`` is given).
    truncate, unknown
        Long texts and unknown words, as in :meth:`Tokenizer.encode` (warn by default).
    **params
        The method's parameters (``xk.methods()``), e.g. ``samples=500``, ``window=2``,
        ``steps=50``; ``layer=`` names another embedding layer; ``baseline=`` a token id (or
        ids ``(L,)``) to use instead of the default.

    Returns
    -------
    Explanation
        ``values (L,)`` per content token, ``tokens`` their strings, ``x`` their ids.

    Examples
    --------
    >>> from xaikit import text
    >>> m = text.load_minilm("sentiment")
    >>> e = text.explain(m, "The movie was not good.", method="integrated_gradients")
    >>> e.tokens
    ['the', 'movie', 'was', 'not', 'good', '.']
    """
    method = check_choice(method, name="method", choices=METHODS)
    removal = check_choice(removal, name="removal", choices=REMOVALS)
    module = model.module if isinstance(model, Model) else model
    tok = _tokenizer(module, tokenizer)
    enc = (
        text if isinstance(text, Encoding) else tok.encode(text, truncate=truncate, unknown=unknown)
    )
    wrapped = model if isinstance(model, Model) else _wrap(model)
    if method == "attention_rollout":
        return _rollout_explanation(wrapped, enc, target=target, **params)
    if method in PERTURBATION:
        if "baseline" not in params:
            if removal == "delete" and not isinstance(module, TextModel):
                raise ValueError(
                    "removal: 'delete' needs a TextModel (its forward drops positions whose id "
                    "is -1); use 'mask' or 'pad' for this model"
                )
            params["baseline"] = tok.removal_id(removal)
    else:
        if not wrapped.is_torch:
            raise TypeError(
                f"model: method {method!r} needs gradients, so a PyTorch model; use one of "
                f"{PERTURBATION} for a callable"
            )
        params["layer"] = embedding_layer(wrapped.module, params.get("layer"))
        if method == "integrated_gradients":
            params["baseline"] = _ig_baseline(params.get("baseline"), enc, tok)
    return xk_explain(wrapped, enc.ids, method=method, target=target, tokens=enc.tokens, **params)


def _tokenizer(module: Any, tokenizer: Any) -> Tokenizer:
    if tokenizer is not None:
        return as_tokenizer(tokenizer)
    own = getattr(module, "tokenizer", None)
    if own is None:
        raise TypeError(
            "tokenizer: expected a Tokenizer (or a Hugging Face tokenizer) for this model; only "
            "a TextModel brings its own"
        )
    return as_tokenizer(own)


def _wrap(model: Any) -> Model:
    if isinstance(model, TextModel):
        return Model(model, batch_size=TEXT_BATCH_SIZE)
    return Model(model)


def _ig_baseline(baseline: Any, enc: Encoding, tok: Tokenizer) -> np.ndarray:
    """Baseline token ids ``(L,)``: the pad token in every content position by default."""
    if baseline is None:
        if tok.pad_id is None:
            raise ValueError("baseline: the tokenizer has no pad token; pass baseline=<token id>")
        return np.full(len(enc), tok.pad_id, dtype=np.int64)
    arr = np.asarray(baseline)
    if arr.dtype.kind not in "iu" or arr.ndim > 1 or (arr.ndim == 1 and len(arr) != len(enc)):
        raise ValueError(
            f"baseline: expected a token id or {len(enc)} token ids, got {describe(baseline)}"
        )
    if arr.size and (arr.min() < 0 or arr.max() >= tok.vocab_size):
        raise ValueError(f"baseline: token ids must lie in [0, {tok.vocab_size})")
    return np.broadcast_to(arr, (len(enc),)).astype(np.int64)


def _rollout_explanation(
    model: Model, enc: Encoding, *, target: int | None, residual: bool = True
) -> Explanation:
    """Rollout as an Explanation: the sentence vector's share of each content token."""
    module = model.module
    if not isinstance(module, TextModel):
        raise TypeError(f"model: attention_rollout needs a TextModel, got {describe(module)}")
    scores = model.scores(enc.ids[None])[0]
    weights = module.attentions(enc.ids[None])[0]
    matrix = rollout(weights, residual=residual)
    # The head reads the [CLS] row (pooling="cls") or the mean of all rows (mean pooling).
    row = matrix[0] if module.pooling == "cls" else matrix.mean(axis=0)
    return Explanation(
        values=row[1:-1],
        x=enc.ids,
        target=int(np.argmax(scores)) if target is None else int(target),
        prediction=scores,
        method="attention_rollout",
        params={"residual": bool(residual)},  # the method's parameters only
        info={
            "rollout": matrix,
            "special_share": float(row[0] + row[-1]),
            "reference": REFERENCE_ROLLOUT,
        },
        tokens=enc.tokens,
    )
