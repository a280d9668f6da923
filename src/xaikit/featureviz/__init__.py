"""Global explanation: what a filter detects and what a class looks like to the model.

Three parts that meet only in :func:`visualize` (the split of Lucid, Olah et al. 2017):

- :mod:`~xaikit.featureviz.objectives` — what to maximise, with ``+ - *`` algebra;
- :mod:`~xaikit.featureviz.param` — how the image is made (pixels, Fourier), or a generator's
  latent vector (:mod:`~xaikit.featureviz.generator`, :func:`train_generator`);
- :mod:`~xaikit.featureviz.transforms` — how it is perturbed at each step.

:func:`filter_activations` shows where a filter fires on real images, beside its visualisation.
"""

from xaikit.featureviz import objectives, param, transforms
from xaikit.featureviz.filters import FilterActivations, filter_activations
from xaikit.featureviz.generator import MLPGenerator, train_generator
from xaikit.featureviz.objectives import Objective
from xaikit.featureviz.render import Visualization, visualize

__all__ = [
    "FilterActivations",
    "MLPGenerator",
    "Objective",
    "Visualization",
    "filter_activations",
    "objectives",
    "param",
    "train_generator",
    "transforms",
    "visualize",
]
