"""A small labelled sentence set generated from templates, for probing and for the text head.

Every sentence says something about a subject with an adjective, e.g. "the dogs were not
lovely." Three properties vary independently and are known exactly:

- ``negation``: the sentence is negated ("not", "never", "n't");
- ``plural``: the subject is plural ("the dog" / "the dogs");
- ``sentiment``: what the sentence means, the adjective's polarity flipped by a negation
  ("not lovely" is negative), so it needs more than one word to read.

``types`` gives each sentence its subject noun ("dog" for "dog" and "dogs"), the word "type"
Hewitt & Liang's (2019) control task draws one random label for.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from xaikit._validation import check_positive_int, check_seed

PROPERTIES = ("negation", "plural", "sentiment")

_SUBJECTS = (
    ("dog", "dogs"),
    ("cat", "cats"),
    ("child", "children"),
    ("teacher", "teachers"),
    ("movie", "movies"),
    ("song", "songs"),
    ("student", "students"),
    ("city", "cities"),
    ("book", "books"),
    ("meal", "meals"),
    ("garden", "gardens"),
    ("neighbour", "neighbours"),
)
_POSITIVE = ("good", "great", "wonderful", "lovely", "excellent", "pleasant", "nice", "charming")
_NEGATIVE = ("bad", "terrible", "awful", "horrible", "dreadful", "poor", "nasty", "boring")
# (singular, plural) frames: {s} subject phrase, {a} adjective; affirmative and negated.
_FRAMES = (
    (("{s} is {a}.", "{s} are {a}."), ("{s} is not {a}.", "{s} are not {a}.")),
    (("{s} was {a}.", "{s} were {a}."), ("{s} wasn't {a}.", "{s} weren't {a}.")),
    (("{s} seems {a}.", "{s} seem {a}."), ("{s} does not seem {a}.", "{s} do not seem {a}.")),
    (("{s} always looked {a}.", "{s} always looked {a}."),
     ("{s} never looked {a}.", "{s} never looked {a}.")),
)  # fmt: skip
_DETERMINERS = (("the", "the"), ("this", "these"), ("my", "my"))


@dataclass
class SentenceData:
    """Generated sentences with their properties.

    Attributes
    ----------
    texts : list of str
    labels : dict of str to np.ndarray
        ``"negation"``, ``"plural"``, ``"sentiment"`` (1 = positive meaning): int arrays (N,).
    types : np.ndarray of str
        The subject noun of each sentence (singular form), for control tasks.
    """

    texts: list[str]
    labels: dict[str, np.ndarray]
    types: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: np.ndarray) -> SentenceData:
        index = np.asarray(index)
        return SentenceData(
            [self.texts[i] for i in index],
            {k: v[index] for k, v in self.labels.items()},
            self.types[index],
        )


def make_sentences(n: int = 600, *, seed: int = 0) -> SentenceData:
    """``n`` distinct template sentences, drawn with ``seed``, with balanced properties.

    All combinations (12 subjects x 2 numbers x 3 determiners x 4 frames x 2 negations x 16
    adjectives = 9216) are enumerated in a fixed order and ``n`` of them drawn without
    replacement, so the same ``(n, seed)`` always gives the same sentences.
    """
    n = check_positive_int(n, name="n")
    seed = check_seed(seed)
    grid = list(
        itertools.product(
            range(len(_SUBJECTS)),
            (0, 1),
            range(len(_DETERMINERS)),
            range(len(_FRAMES)),
            (0, 1),
            _POSITIVE + _NEGATIVE,
        )
    )
    if n > len(grid):
        raise ValueError(f"n: at most {len(grid)} distinct sentences exist, got {n}")
    order = np.random.default_rng(seed).permutation(len(grid))[:n]
    texts, negation, plural, sentiment, types = [], [], [], [], []
    for i in order:
        subject, number, det, frame, negated, adjective = grid[i]
        phrase = f"{_DETERMINERS[det][number]} {_SUBJECTS[subject][number]}"
        text = _FRAMES[frame][negated][number].format(s=phrase, a=adjective)
        texts.append(text[0].upper() + text[1:])
        positive = adjective in _POSITIVE
        negation.append(negated)
        plural.append(number)
        sentiment.append(int(positive != bool(negated)))
        types.append(_SUBJECTS[subject][0])
    labels = {
        "negation": np.array(negation, dtype=np.int64),
        "plural": np.array(plural, dtype=np.int64),
        "sentiment": np.array(sentiment, dtype=np.int64),
    }
    return SentenceData(texts, labels, np.array(types))
