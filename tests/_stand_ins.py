"""zennit imports torchvision at import time, and quantus imports zennit; torchvision does not
import beside the CPU torch. zennit needs only two class names from it, which the stand-in
package in ``_stubs`` provides while zennit is imported, and no longer: other libraries
(transformers) would take the stand-in for the real torchvision and fail on what it lacks.
"""

from __future__ import annotations

import sys
from pathlib import Path

STUBS = str(Path(__file__).parent / "_stubs")


def import_zennit() -> None:
    """Import zennit (with the torchvision classes it uses) if it is installed; else nothing,
    so a test that needs it, or quantus, skips as usual."""
    if "zennit.torchvision" in sys.modules:
        return
    sys.path.insert(0, STUBS)
    try:
        import zennit.torchvision  # noqa: F401
    except ImportError:
        pass
    finally:
        sys.path.remove(STUBS)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
