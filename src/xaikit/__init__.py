"""xaikit: explain machine-learning models, and prove each explanation's quality.

The public API is re-exported here; see docs/architecture.md for how the parts fit.
"""

from xaikit import metrics, text
from xaikit._progress import set_progress
from xaikit._tables import Table
from xaikit._validation import memory_limit, set_memory_limit
from xaikit._version import __version__
from xaikit.attribution import explain, methods
from xaikit.audit import Audit, Finding, audit
from xaikit.explanation import Explanation
from xaikit.featureviz import (
    FilterActivations,
    Visualization,
    filter_activations,
    objectives,
    train_generator,
    visualize,
)
from xaikit.importance import Importance, permutation_importance
from xaikit.metrics import Comparison, SanityResult, compare, evaluate, sanity_check
from xaikit.model import LayerRecording, Model, as_model, to_probabilities
from xaikit.representations import (
    Activations,
    LayerProjections,
    ProbeResult,
    Projection,
    Reconstruction,
    activations,
    probe,
    project,
    project_layers,
    reconstruct,
)
from xaikit.surrogates import FidelityCurve, Surrogate, fidelity_curve, surrogate

# Last: the report imports the results above, and installs their HTML (see _repr.py).
from xaikit import report  # noqa: F401  # isort: skip

__all__ = [
    "Activations",
    "Audit",
    "Comparison",
    "Explanation",
    "FidelityCurve",
    "FilterActivations",
    "Finding",
    "Importance",
    "LayerProjections",
    "LayerRecording",
    "Model",
    "ProbeResult",
    "Projection",
    "Reconstruction",
    "SanityResult",
    "Surrogate",
    "Table",
    "Visualization",
    "__version__",
    "activations",
    "as_model",
    "audit",
    "compare",
    "evaluate",
    "explain",
    "fidelity_curve",
    "filter_activations",
    "memory_limit",
    "methods",
    "metrics",
    "objectives",
    "permutation_importance",
    "probe",
    "project",
    "project_layers",
    "reconstruct",
    "sanity_check",
    "set_memory_limit",
    "set_progress",
    "surrogate",
    "text",
    "to_probabilities",
    "train_generator",
    "visualize",
]
