"""Shared by the benchmark scripts: the machine's description and docs/benchmarks.md sections."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
_HEADER = (
    "# Benchmarks\n\nWritten by the scripts in `benchmarks/` (`make bench`); each section is "
    "replaced when its script runs. Ratios are to the machine's limit measured in the same run.\n"
)


def machine_line() -> str:
    """One line naming the hardware and software a result was measured on."""
    if torch.cuda.is_available():
        hardware = torch.cuda.get_device_name(0)
    else:
        hardware = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    return (
        f"Machine: {hardware}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); Python {platform.python_version()}"
    )


def write_section(name: str, text: str) -> None:
    """Replace (or add) the section ``name`` of docs/benchmarks.md, atomically."""
    doc = DOC.read_text() if DOC.exists() else _HEADER
    block = f"<!-- {name} -->\n## {name}\n\n{text.strip()}\n<!-- /{name} -->\n"
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->\n", re.S)
    doc = pattern.sub(lambda _: block, doc) if pattern.search(doc) else doc + "\n" + block
    tmp = DOC.with_suffix(".md.tmp")
    tmp.write_text(doc)
    os.replace(tmp, DOC)
