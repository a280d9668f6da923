"""The model families matrix: every family x every method, written into docs/models.md.

Runs the same checks as ``tests/test_families.py`` (``tests/_families.py``) and replaces the
table between the ``<!-- matrix -->`` markers of docs/models.md. The test suite checks that the
page and the code agree, so run this after a change to a method or a family.
"""

from __future__ import annotations

import re
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import _families  # noqa: E402

PAGE = ROOT / "docs" / "models.md"


def main() -> None:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = _families.matrix_table()
    text = PAGE.read_text()
    block = f"<!-- matrix -->\n{table}\n<!-- /matrix -->"
    text = re.sub(r"<!-- matrix -->.*?<!-- /matrix -->", lambda _: block, text, flags=re.S)
    PAGE.write_text(text)
    print(table)
    print(f"{len(_families.FAMILIES)} families in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
