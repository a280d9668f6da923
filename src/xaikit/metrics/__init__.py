"""Metrics: evidence that an explanation is faithful, robust, sane, localised and concise.

Faithfulness (deletion, insertion, pixel flipping, ROAD, infidelity) runs on the perturbation
engine; robustness re-explains perturbed inputs (max-sensitivity, local Lipschitz, the attack on
interpretation); sanity checks re-draw a deep copy's weights; localisation compares with a
ground-truth mask; ``evaluate`` and ``compare`` put them together. See docs/metrics.md.
"""

from xaikit.metrics import localization
from xaikit.metrics.attack import AttackResult, attack_explanation
from xaikit.metrics.complexity import entropy, sparseness
from xaikit.metrics.evaluate import METRICS, Comparison, compare, evaluate
from xaikit.metrics.faithfulness import Curve, deletion, insertion, pixel_flipping
from xaikit.metrics.infidelity import infidelity
from xaikit.metrics.localization import pointing_game, relevance_mass, relevance_rank
from xaikit.metrics.road import noisy_linear_imputation, road
from xaikit.metrics.robustness import local_lipschitz, max_sensitivity
from xaikit.metrics.sanity import SanityResult, sanity_check

localisation = localization  # the module under the spelling of earlier releases

__all__ = [
    "METRICS",
    "AttackResult",
    "Comparison",
    "Curve",
    "SanityResult",
    "attack_explanation",
    "compare",
    "deletion",
    "entropy",
    "evaluate",
    "infidelity",
    "insertion",
    "local_lipschitz",
    "localisation",
    "localization",
    "max_sensitivity",
    "noisy_linear_imputation",
    "pixel_flipping",
    "pointing_game",
    "relevance_mass",
    "relevance_rank",
    "road",
    "sanity_check",
    "sparseness",
]
