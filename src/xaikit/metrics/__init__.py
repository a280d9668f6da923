"""Metrics: evidence that an explanation is faithful, robust, sane, localised and concise.

Faithfulness (deletion, insertion, pixel flipping) runs on the perturbation engine; sanity
checks re-draw a deep copy's weights; localisation compares with a ground-truth mask;
``evaluate`` and ``compare`` put them together. See docs/methods.md for the papers.
"""

from xaikit.metrics.complexity import entropy, sparseness
from xaikit.metrics.evaluate import METRICS, Comparison, compare, evaluate
from xaikit.metrics.faithfulness import Curve, deletion, insertion, pixel_flipping
from xaikit.metrics.localisation import pointing_game, relevance_mass, relevance_rank
from xaikit.metrics.robustness import local_lipschitz, max_sensitivity
from xaikit.metrics.sanity import SanityResult, sanity_check

__all__ = [
    "METRICS",
    "Comparison",
    "Curve",
    "SanityResult",
    "compare",
    "deletion",
    "entropy",
    "evaluate",
    "insertion",
    "local_lipschitz",
    "max_sensitivity",
    "pixel_flipping",
    "pointing_game",
    "relevance_mass",
    "relevance_rank",
    "sanity_check",
    "sparseness",
]
