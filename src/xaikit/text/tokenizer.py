"""Tokenizers for text models: text in, content token ids and their strings out.

xaikit explains *content* tokens only. The special tokens a transformer needs ([CLS], [SEP],
padding) are added by :class:`~xaikit.text.TextModel` inside its forward, so they are never a
component that LIME, KernelSHAP or occlusion can remove, and never receive an attribution.
An explained input is therefore the ``(L,)`` ids of the text's word pieces, and the tokens
shown next to the values are those word pieces' strings.

Padding in a batch is the id :data:`DELETED` (-1), not the tokenizer's pad id: a -1 position is
taken out of the sequence (the later tokens move up, nothing attends to it), which is also what
``removal="delete"`` means. The real pad id stays a token the model sees, which is what a
pad-token baseline of Integrated Gradients needs.

Two backends: a Hugging Face tokenizer (:meth:`Tokenizer.from_hf`, the word pieces of BERT-like
models) and a word list (:meth:`Tokenizer.from_words`, lower-cased words and punctuation, for
small models built by hand).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xaikit._validation import check_choice, check_int, describe

#: The id of a position that is not part of the text (batch padding, or a deleted token).
DELETED = -1
UNKNOWN = ("warn", "error", "ignore")

_WORDS = re.compile(r"[\w']+|[^\w\s]")  # words (with apostrophes) and single punctuation marks


@dataclass
class Encoding:
    """One text as content tokens: ids ``(L,)``, their strings, and what happened on the way.

    Attributes
    ----------
    ids : np.ndarray of int64 (L,)
    tokens : list of str
        The token strings (word pieces for a Hugging Face tokenizer).
    text : str
    truncated : int
        Tokens dropped from the end because the text exceeded the model's limit (0 if none).
    unknown : list of str
        Words that the vocabulary does not hold and that became the unknown token.
    """

    ids: np.ndarray
    tokens: list[str]
    text: str
    truncated: int = 0
    unknown: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


class Tokenizer:
    """Text to content token ids, with the ids a text model and the removal methods need.

    Build one with :meth:`from_hf` or :meth:`from_words`.

    Attributes
    ----------
    pad_id, unk_id, cls_id, sep_id, mask_id : int or None
        Special token ids (``None`` when the vocabulary has no such token).
    max_length : int
        Most tokens a model takes, special tokens included (512 for BERT).
    n_special : int
        Special tokens the model adds around the content (2: [CLS] and [SEP]).
    """

    def __init__(
        self,
        *,
        split: Callable[[str], tuple[list[int], list[str], list[str]]],
        id_to_token: Callable[[int], str],
        vocab_size: int,
        pad_id: int | None,
        unk_id: int | None,
        cls_id: int | None = None,
        sep_id: int | None = None,
        mask_id: int | None = None,
        max_length: int = 512,
        n_special: int = 2,
    ) -> None:
        self._split = split
        self._id_to_token = id_to_token
        self.vocab_size = int(vocab_size)
        self.pad_id, self.unk_id = pad_id, unk_id
        self.cls_id, self.sep_id, self.mask_id = cls_id, sep_id, mask_id
        self.n_special = check_int(n_special, name="n_special", minimum=0)
        self.max_length = check_int(max_length, name="max_length", minimum=self.n_special + 1)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_hf(cls, tokenizer: Any, *, max_length: int | None = None) -> Tokenizer:
        """Wrap a Hugging Face tokenizer (word pieces; [CLS]/[SEP] added by the model)."""
        if not callable(getattr(tokenizer, "convert_ids_to_tokens", None)):
            raise TypeError(
                f"tokenizer: expected a Hugging Face tokenizer, got {describe(tokenizer)}"
            )
        limit = max_length or getattr(tokenizer, "model_max_length", 512)
        if not isinstance(limit, int) or limit > 100_000:  # "no limit" is a huge sentinel in HF
            limit = 512
        unk_id = tokenizer.unk_token_id

        def split(text: str):
            enc = tokenizer(text, add_special_tokens=False, verbose=False)
            ids = list(enc["input_ids"])
            unknown: list[str] = []
            if unk_id is not None and unk_id in ids:
                unknown = _unknown_words(text, ids, enc, unk_id)
            return ids, tokenizer.convert_ids_to_tokens(ids), unknown

        return cls(
            split=split,
            id_to_token=lambda i: tokenizer.convert_ids_to_tokens(int(i)),
            vocab_size=len(tokenizer),
            pad_id=tokenizer.pad_token_id,
            unk_id=unk_id,
            cls_id=tokenizer.cls_token_id,
            sep_id=tokenizer.sep_token_id,
            mask_id=tokenizer.mask_token_id,
            max_length=limit,
            n_special=2 if tokenizer.cls_token_id is not None else 0,
        )

    @classmethod
    def from_words(
        cls, words: Sequence[str], *, max_length: int = 512, lowercase: bool = True
    ) -> Tokenizer:
        """A word-level vocabulary: ids 0..4 are [PAD], [UNK], [CLS], [SEP], [MASK], then ``words``.

        Text is split into words and single punctuation marks (lower-cased by default); a
        word not in the list becomes [UNK].
        """
        if isinstance(words, str) or not all(isinstance(w, str) and w for w in words):
            raise TypeError(f"words: expected a list of non-empty strings, got {describe(words)}")
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        vocab = specials + [w for w in dict.fromkeys(w.lower() if lowercase else w for w in words)]
        index = {w: i for i, w in enumerate(vocab)}

        def split(text: str):
            pieces = _WORDS.findall(text.lower() if lowercase else text)
            ids = [index.get(p, 1) for p in pieces]
            tokens = [p if i != 1 else "[UNK]" for p, i in zip(pieces, ids, strict=True)]
            unknown = [p for p, i in zip(pieces, ids, strict=True) if i == 1]
            return ids, tokens, unknown

        return cls(
            split=split,
            id_to_token=lambda i: vocab[int(i)],
            vocab_size=len(vocab),
            pad_id=0,
            unk_id=1,
            cls_id=2,
            sep_id=3,
            mask_id=4,
            max_length=max_length,
        )

    # ------------------------------------------------------------------ encoding

    @property
    def max_content(self) -> int:
        """Most content tokens a text may have (the model's limit less its special tokens)."""
        return self.max_length - self.n_special

    def encode(self, text: Any, *, truncate: bool = True, unknown: str = "warn") -> Encoding:
        """Content token ids of one text.

        Parameters
        ----------
        text : str
        truncate : bool
            A text longer than the model's limit keeps its first :attr:`max_content` tokens
            with a warning (``True``), or raises ``ValueError`` (``False``).
        unknown : {"warn", "error", "ignore"}
            What to do when words are not in the vocabulary (they become the unknown token,
            whose attribution then stands for all of them).

        Raises
        ------
        TypeError
            ``text`` is not a string.
        ValueError
            The text is empty or yields no token; too long with ``truncate=False``; unknown
            words with ``unknown="error"``.
        """
        unknown = check_choice(unknown, name="unknown", choices=UNKNOWN)
        if not isinstance(text, str):
            raise TypeError(f"text: expected a string, got {describe(text)}")
        if not text.strip():
            raise ValueError(f"text: expected a non-empty string, got {text!r}")
        ids, tokens, missing = self._split(text)
        if not ids:
            raise ValueError(f"text: {text!r} gives no token for this tokenizer")
        if missing:
            message = (
                f"text: {len(missing)} word(s) not in the vocabulary became the unknown token "
                f"{self.token(self.unk_id)!r}: {', '.join(map(repr, missing[:10]))}"
                + (" ..." if len(missing) > 10 else "")
                + "; their attribution is the unknown token's"
            )
            if unknown == "error":
                raise ValueError(message)
            if unknown == "warn":
                warnings.warn(message, UserWarning, stacklevel=2)
        dropped = max(0, len(ids) - self.max_content)
        if dropped:
            message = (
                f"text: {len(ids)} tokens exceed the model's limit of {self.max_content} content "
                f"tokens ({self.max_length} with the {self.n_special} special tokens)"
            )
            if not truncate:
                raise ValueError(message + "; shorten it or pass truncate=True")
            warnings.warn(
                message + f"; only the first {self.max_content} are used and explained, the "
                f"last {dropped} are dropped",
                UserWarning,
                stacklevel=2,
            )
            ids, tokens = ids[: self.max_content], tokens[: self.max_content]
        return Encoding(np.asarray(ids, dtype=np.int64), list(tokens), text, dropped, missing)

    def encode_batch(
        self, texts: Sequence[str], *, truncate: bool = True, unknown: str = "warn"
    ) -> np.ndarray:
        """Content ids of several texts ``(N, L_max)``, padded with :data:`DELETED` (-1)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) == 0:
            raise TypeError(f"texts: expected a non-empty list of strings, got {describe(texts)}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            encoded = [self.encode(t, truncate=truncate, unknown=unknown) for t in texts]
        _summarize(caught, texts=len(texts))
        out = np.full((len(encoded), max(len(e) for e in encoded)), DELETED, dtype=np.int64)
        for i, e in enumerate(encoded):
            out[i, : len(e)] = e.ids
        return out

    def token(self, token_id: int | None) -> str:
        """The string of one id (``"[DELETED]"`` for -1)."""
        if token_id is None:
            return "None"
        if int(token_id) == DELETED:
            return "[DELETED]"
        return str(self._id_to_token(int(token_id)))

    def tokens(self, ids: Any) -> list[str]:
        """The strings of a sequence of ids."""
        return [self.token(i) for i in np.asarray(ids).reshape(-1).tolist()]

    def removal_id(self, removal: str) -> int:
        """The id that stands for a removed token: [MASK], the pad token, or :data:`DELETED`."""
        check_choice(removal, name="removal", choices=("mask", "pad", "delete"))
        if removal == "delete":
            return DELETED
        value = self.mask_id if removal == "mask" else self.pad_id
        if value is None:
            raise ValueError(f"removal: the tokenizer has no {removal} token; use another removal")
        return int(value)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, max_length={self.max_length}, "
            f"pad_id={self.pad_id}, mask_id={self.mask_id})"
        )


def as_tokenizer(tokenizer: Any) -> Tokenizer:
    """``tokenizer`` as a :class:`Tokenizer` (a Hugging Face tokenizer is wrapped)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if callable(getattr(tokenizer, "convert_ids_to_tokens", None)):
        return Tokenizer.from_hf(tokenizer)
    raise TypeError(
        "tokenizer: expected an xaikit.text.Tokenizer or a Hugging Face tokenizer, got "
        f"{describe(tokenizer)}"
    )


def _unknown_words(text: str, ids: list[int], enc: Any, unk_id: int) -> list[str]:
    """The words of ``text`` that became the unknown token (from character offsets if any)."""
    words = []
    for i, token_id in enumerate(ids):
        if token_id != unk_id:
            continue
        span = None
        try:
            span = enc.token_to_chars(i)
        except (AttributeError, ValueError, TypeError):
            span = None
        words.append(text[span.start : span.end] if span is not None else "?")
    return words


def _summarize(caught: list, *, texts: int) -> None:
    """Re-issue the warnings of a batch once per kind, with how many texts had them."""
    kinds: dict[str, list[str]] = {}
    for w in caught:
        message = str(w.message)
        kind = "unknown" if "vocabulary" in message else "long" if "limit" in message else message
        kinds.setdefault(kind, []).append(message)
    for kind, messages in kinds.items():
        if kind in ("unknown", "long"):
            what = "had words outside the vocabulary" if kind == "unknown" else "were truncated"
            text = f"texts: {len(messages)} of {texts} text(s) {what}; first: {messages[0]}"
        else:
            text = messages[0]
        warnings.warn(text, UserWarning, stacklevel=3)
