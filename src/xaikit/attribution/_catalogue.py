"""Imports every method module so that each registers itself with ``xk.explain``.

Add a new method's module here.
"""

from xaikit.attribution import (  # noqa: F401
    cam,
    gradients,
    guided,
    kernel_shap,
    lime,
    occlusion,
    rise,
)
