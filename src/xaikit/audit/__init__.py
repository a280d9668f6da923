"""Data-set audit for Clever-Hans shortcuts: explain every item, aggregate, cluster (SpRAy), report.

``xk.audit(model, data, labels=None, method="integrated_gradients", backend="local", out=None)``
runs locally or on Ray, resumably, and returns an :class:`Audit` with its :class:`Finding` list.
"""

from xaikit.audit.analysis import analyze, spray
from xaikit.audit.result import Audit, Cluster, Finding
from xaikit.audit.run import audit

analyse = analyze  # the spelling of earlier releases

__all__ = ["Audit", "Cluster", "Finding", "analyse", "analyze", "audit", "spray"]
