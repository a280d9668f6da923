"""How a network works: layer activations over a data set, 2-D projections of a layer, probing
classifiers per layer (with control tasks), and probing by reconstruction."""

from xaikit.representations.activations import DEFAULT_MEMORY_BUDGET, Activations, activations

__all__ = ["DEFAULT_MEMORY_BUDGET", "Activations", "activations"]
