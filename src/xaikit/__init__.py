"""xaikit: explain machine-learning models, and prove each explanation's quality.

The public API is re-exported here; see docs/architecture.md for how the parts fit.
"""

from xaikit._progress import set_progress
from xaikit._version import __version__
from xaikit.attribution import explain, methods
from xaikit.explanation import Explanation
from xaikit.model import LayerRecording, Model, as_model, to_probabilities

__all__ = [
    "Explanation",
    "LayerRecording",
    "Model",
    "__version__",
    "as_model",
    "explain",
    "methods",
    "set_progress",
    "to_probabilities",
]
