"""Load what users bring to the ``xaikit`` command: their model and their inputs.

- :mod:`~xaikit.loading.models`: ``file.py:factory`` (+ weights), TorchScript, ONNX and
  trusted scikit-learn pickles (:func:`load_model`);
- :mod:`~xaikit.loading.inputs`: images scaled by bit depth, ``.npy``, CSV and text inputs
  (:func:`load_inputs`), class names and labels.

Every failure is a :class:`LoadError` (a ``ValueError``) whose one-line message starts with the
argument's name: ``model: ...``, ``weights: ...``, ``input: ...``, ``classes: ...``.
"""

from xaikit.loading.errors import LoadError
from xaikit.loading.inputs import (
    IMAGE_SUFFIXES,
    Inputs,
    load_class_names,
    load_inputs,
    load_labels,
)
from xaikit.loading.models import LoadedModel, OnnxModel, load_model

__all__ = [
    "IMAGE_SUFFIXES",
    "Inputs",
    "LoadError",
    "LoadedModel",
    "OnnxModel",
    "load_class_names",
    "load_inputs",
    "load_labels",
    "load_model",
]
