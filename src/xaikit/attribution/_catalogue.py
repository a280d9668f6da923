"""Imports every method module so that each registers itself with ``xk.explain``.

Add a new method's module here.
"""

from xaikit.attribution import (  # noqa: F401
    cam,
    deeplift,
    gradients,
    guided,
    kernel_shap,
    lime,
    lrp,
    occlusion,
    rise,
    rollout,
)
