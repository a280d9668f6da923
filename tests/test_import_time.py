"""``import xaikit`` and ``xaikit --help`` load no heavy optional library (issue #20).

Not a timed test: each entry point runs in a fresh interpreter and lists the heavy top-level
packages it left in ``sys.modules``; scikit-learn, SciPy, matplotlib and the rest are imported
on first use, inside the functions that need them. benchmarks/import_time.py times it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import xaikit

HEAVY = (
    "sklearn", "skimage", "scipy", "matplotlib", "pandas", "shap", "captum", "transformers",
    "umap",
)  # fmt: skip

# The heavy top-level packages left in sys.modules.
LOADED = f"import sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"

ENTRY_POINTS = {
    "import xaikit": "import xaikit, xaikit.cli",
    "xaikit --help": (
        "import contextlib, io\n"
        "from xaikit.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])"
    ),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_point_loads_no_heavy_library(entry):
    # The package this test imported, wherever it lives (a checkout or an installed copy).
    env = {**os.environ, "PYTHONPATH": str(Path(xaikit.__file__).resolve().parents[1])}
    code = ENTRY_POINTS[entry] + "\n" + LOADED
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == "[]", f"{entry} imports {done.stdout.strip()}"
