"""Imports every method module so that each registers itself with ``xk.explain``.

Add a new method's module here.
"""

from xaikit.attribution import cam, gradients, guided  # noqa: F401
from xaikit.attribution import occlusion, rise  # noqa: F401
