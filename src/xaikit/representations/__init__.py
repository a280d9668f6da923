"""How a network works: layer activations over a data set, 2-D projections of a layer, probing
classifiers per layer (with control tasks), and probing by reconstruction."""

from xaikit.representations.activations import DEFAULT_MEMORY_BUDGET, Activations, activations
from xaikit.representations.probing import ProbeResult, probe
from xaikit.representations.projection import (
    LayerProjections,
    Projection,
    project,
    project_layers,
)
from xaikit.representations.reconstruction import Reconstruction, reconstruct

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "Activations",
    "LayerProjections",
    "ProbeResult",
    "Projection",
    "Reconstruction",
    "activations",
    "probe",
    "project",
    "project_layers",
    "reconstruct",
]
