"""TextModel: a transformer encoder and a head as one module, content token ids in, scores out.

``TextModel(ids (N, L)) -> scores (N, K)``, so ``xk.Model``, ``xk.explain``, ``xk.probe`` and
``xk.activations`` take it like any other model. Its forward

1. takes the positions whose id is :data:`~xaikit.text.DELETED` (-1) out of each sequence (the
   later tokens move up; this is batch padding, and token deletion for LIME/KernelSHAP);
2. embeds the content tokens through the submodule ``tokens`` (the encoder's own input
   embedding, called once per forward on ``(N, L)``, so layer attributions there have one
   vector per explained token);
3. adds [CLS] in front and [SEP] after the last kept token (their embeddings are read from the
   same table without calling ``tokens``, so they never become components or attributions);
4. runs the encoder on these embeddings with an attention mask that hides the removed
   positions, and the head on the pooled last layer.

Every hidden state also passes through ``hidden.<i>`` (the full ``(N, 2 + L, D)`` sequence,
``i = 0`` the embedding output) and ``pooled.<i>`` (a masked mean over the sentence's tokens,
``(N, D)``), identity-like submodules that exist so ``xk.activations`` and ``xk.probe`` can
record them by name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from xaikit._torch import embedding_layer_name
from xaikit._validation import check_choice, describe
from xaikit.text.tokenizer import DELETED, Tokenizer, as_tokenizer

POOLINGS = ("mean", "cls")


class TokenEmbedding(nn.Module):
    """The encoder's input embedding, called on the content ids only (the attribution layer)."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.embedding = embedding

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)


class MaskedMean(nn.Module):
    """Mean of a sequence ``(N, L, D)`` over its attended positions: one vector per sentence."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class TextModel(nn.Module):
    """A transformer encoder plus a head: content token ids ``(N, L)`` in, scores ``(N, K)`` out.

    Parameters
    ----------
    encoder : nn.Module
        A Hugging Face encoder (``BertModel``-like): called as ``encoder(inputs_embeds=...,
        attention_mask=..., output_hidden_states=True)``. Load it with
        ``attn_implementation="eager"`` to read attention weights.
    head : nn.Module or None
        Maps the pooled last hidden state ``(N, D)`` to scores ``(N, K)``. ``None``: the
        encoder is a whole classifier (``AutoModelForSequenceClassification``) and its own
        ``logits`` are the scores (see :meth:`from_hf`).
    tokenizer : Tokenizer or Hugging Face tokenizer
        Needs [CLS] and [SEP] ids; its pad id is what a removed or baseline token becomes.
    pooling : {"mean", "cls"}
        Sentence vector for the head: the mean over the sentence's tokens ([CLS] and [SEP]
        included, as sentence-transformers pools), or the [CLS] position.

    Attributes
    ----------
    embedding_layer : str
        ``"tokens"``: the layer that gradient methods attribute to (``layer=``).
    n_layers : int
        Transformer layers; ``hidden.0`` .. ``hidden.<n_layers>`` and ``pooled.*`` exist.
    """

    embedding_layer = "tokens"

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module | None,
        *,
        tokenizer: Any,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder: expected an nn.Module, got {describe(encoder)}")
        if head is not None and not isinstance(head, nn.Module):
            raise TypeError(f"head: expected an nn.Module, got {describe(head)}")
        self.tokenizer: Tokenizer = as_tokenizer(tokenizer)
        if self.tokenizer.cls_id is None or self.tokenizer.sep_id is None:
            raise ValueError("tokenizer: a TextModel needs [CLS] and [SEP] token ids")
        self.pooling = check_choice(pooling, name="pooling", choices=POOLINGS)
        embedding = _input_embedding(encoder)
        config = getattr(encoder, "config", None)
        self.n_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
        if self.n_layers <= 0:
            raise ValueError("encoder: expected a config with num_hidden_layers (a HF encoder)")
        self.n_heads = int(getattr(config, "num_attention_heads", 0) or 0)
        self.encoder = encoder
        self.head = head
        self.tokens = TokenEmbedding(embedding)
        self.hidden = nn.ModuleList(nn.Identity() for _ in range(self.n_layers + 1))
        self.pooled = nn.ModuleList(MaskedMean() for _ in range(self.n_layers + 1))
        self._pad = int(self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0)

    # ------------------------------------------------------------------ forward

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, mask = self._encode(ids, attentions=False)
        hidden = [h(state) for h, state in zip(self.hidden, out.hidden_states, strict=True)]
        pooled = [p(state, mask) for p, state in zip(self.pooled, hidden, strict=True)]
        if self.head is None:  # a whole classifier: its own pooling and head
            return out.logits
        sentence = pooled[-1] if self.pooling == "mean" else hidden[-1][:, 0]
        return self.head(sentence)

    @classmethod
    def from_hf(cls, model: nn.Module, tokenizer: Any) -> TextModel:
        """A Hugging Face sequence classifier and its tokenizer as a :class:`TextModel`.

        ``model`` is any ``AutoModelForSequenceClassification`` (BERT, RoBERTa, DistilBERT,
        ...): it is called with ``inputs_embeds`` and an attention mask and its ``logits`` are
        the scores, so every token method (gradients at ``"tokens"``, LIME, KernelSHAP,
        occlusion, attention rollout) works on it without further plumbing. The model is not
        copied or changed.
        """
        if not callable(getattr(model, "get_input_embeddings", None)):
            raise TypeError(
                "model: expected a Hugging Face classifier (AutoModelForSequenceClassification), "
                f"got {describe(model)}"
            )
        return cls(model, None, tokenizer=tokenizer)

    def _encode(self, ids: torch.Tensor, *, attentions: bool):
        if ids.dtype.is_floating_point:
            raise TypeError(f"x: expected integer token ids, got {describe(ids)}")
        ids = ids.long()
        if ids.ndim != 2:
            raise ValueError(f"x: expected token ids of shape (N, L), got {tuple(ids.shape)}")
        vocab = self.tokens.embedding.num_embeddings
        if ids.numel() and (int(ids.max()) >= vocab or int(ids.min()) < DELETED):
            bad = int(ids.max()) if int(ids.max()) >= vocab else int(ids.min())
            raise ValueError(
                f"x: token id {bad} is outside the vocabulary [0, {vocab}) (and is not "
                f"{DELETED}, the id of a deleted/padding position)"
            )
        keep = ids != DELETED
        if not bool(keep.all()):
            # Deleted positions move to the end (stable: the kept tokens keep their order), so
            # a deletion shifts the later tokens' positions as if the token had never been there.
            order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
            ids, keep = ids.gather(1, order), keep.gather(1, order)
        content = self.tokens(torch.where(keep, ids, self._pad))  # (N, L, D): the attribution layer
        table = self.tokens.embedding.weight
        n, length = ids.shape
        cls = table[self.tokenizer.cls_id].expand(n, 1, -1)
        tail = table[self._pad].expand(n, 1, -1)
        full = torch.cat([cls, content, tail], dim=1)  # [CLS] content [pad]
        kept = keep.sum(dim=1)
        position = torch.arange(length + 2, device=ids.device)
        # [SEP] right after the last kept token; everything behind it is masked out.
        sep_at = (position[None, :] == (kept + 1)[:, None]).unsqueeze(-1)
        full = torch.where(sep_at, table[self.tokenizer.sep_id], full)
        keep_full = torch.cat(
            [torch.ones_like(keep[:, :1]), keep, torch.zeros_like(keep[:, :1])], 1
        )
        mask = keep_full | sep_at.squeeze(-1)
        out = self.encoder(
            inputs_embeds=full,
            attention_mask=mask.long(),
            output_hidden_states=True,
            output_attentions=attentions,
        )
        return out, mask

    # ------------------------------------------------------------------ helpers

    def layer_names(self, kind: str = "pooled") -> list[str]:
        """``["pooled.0", ..., "pooled.<n_layers>"]`` (or ``"hidden.*"``), shallow to deep."""
        check_choice(kind, name="kind", choices=("pooled", "hidden"))
        return [f"{kind}.{i}" for i in range(self.n_layers + 1)]

    def encode(self, texts: Any, *, truncate: bool = True, unknown: str = "warn") -> np.ndarray:
        """Token ids of one text ``(L,)`` or of a list of texts ``(N, L_max)`` (padded with -1)."""
        if isinstance(texts, str):
            return self.tokenizer.encode(texts, truncate=truncate, unknown=unknown).ids
        return self.tokenizer.encode_batch(texts, truncate=truncate, unknown=unknown)

    def attentions(self, ids: Any) -> np.ndarray:
        """Attention weights ``(N, layers, heads, 2 + L, 2 + L)`` (with [CLS] and [SEP]).

        Runs in eval mode without gradients; every module's training flag is restored.
        """
        ids_t = torch.as_tensor(np.asarray(ids), device=self.tokens.embedding.weight.device)
        with eval_mode(self), torch.inference_mode():
            out, _ = self._encode(ids_t, attentions=True)
        found = getattr(out, "attentions", None)
        if not found:
            raise ValueError(
                "model: the encoder returned no attention weights; load it with "
                'attn_implementation="eager" (SDPA and flash attention do not expose them)'
            )
        return torch.stack([a.float() for a in found], dim=1).cpu().numpy()

    def hidden_states(self, ids: Any) -> np.ndarray:
        """Hidden states ``(N, layers + 1, 2 + L, D)``: the embedding output, then each layer."""
        ids_t = torch.as_tensor(np.asarray(ids), device=self.tokens.embedding.weight.device)
        with eval_mode(self), torch.inference_mode():
            out, _ = self._encode(ids_t, attentions=False)
        return torch.stack([h.float() for h in out.hidden_states], dim=1).cpu().numpy()


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; each module's own training flag restored afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    try:
        for m, _ in flags:
            m.training = False
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def embedding_layer(module: nn.Module, layer: str | None = None) -> str:
    """The layer path that gradient methods attribute to for a token model.

    ``layer`` given: checked to exist. Otherwise a :class:`TextModel`'s ``"tokens"``, else the
    module's input embedding (``get_input_embeddings()``), else its only ``nn.Embedding``.
    """
    if layer is not None:
        if layer not in dict(module.named_modules()):
            raise ValueError(f"layer: no layer {layer!r} in the model")
        return layer
    if isinstance(module, TextModel):
        return module.embedding_layer
    name = embedding_layer_name(module)
    if name is not None:
        return name
    found = [name for name, m in module.named_modules() if isinstance(m, nn.Embedding)]
    raise ValueError(
        "layer: cannot tell which layer embeds the tokens "
        + (f"(embeddings: {found}); " if found else "(the model has no nn.Embedding); ")
        + "pass layer='path.to.embedding'"
    )


def _input_embedding(encoder: nn.Module) -> nn.Embedding:
    getter = getattr(encoder, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else None
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(
            "encoder: expected a Hugging Face encoder whose get_input_embeddings() returns an "
            f"nn.Embedding, got {type(encoder).__name__}"
        )
    return embedding
