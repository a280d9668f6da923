"""The documentation runs: every example in README.md and docs/*.md, as written.

For each page, in a fresh temporary folder and in the page's order:

- every ```python block runs, the blocks of one page sharing one namespace;
- a ```text output block right after a python block must appear in what that block printed;
- every ```bash block runs command by command: ``xaikit ...`` lines through the command's
  entry point (in this process, so no second torch import), ``python - <<'EOF'`` here-documents
  as Python, anything else with bash; each must succeed;
- every ``$ xaikit ...`` line of a ```console block runs, and prints the lines under it.

A block that must not run says so in its fence: ```bash no-run (README's ``make`` targets, the
minute-long demo section that tests/test_report_browser.py runs anyway). The default models
come from the session's cache (tests/conftest.py), so the examples train nothing themselves.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from xaikit import text
from xaikit.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
NO_RUN = "no-run"
FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")


@dataclass
class Block:
    kind: str  # python, bash, console, output, or other
    code: str
    line: int  # where the block starts in the page (1-based), for messages
    run: bool
    info: str = ""  # the fence's words after the language


def blocks(page: str) -> list[Block]:
    """The fenced blocks of a page, in order."""
    found, lines = [], (ROOT / page).read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, info = m.group(1), m.group(2).split()
        start, i = i + 1, i + 1
        while not lines[i].startswith("```"):
            i += 1
        code = "\n".join(lines[start:i]) + "\n"
        kind = lang if lang in ("python", "bash", "console") else "other"
        kind = "output" if "output" in info else kind
        found.append(Block(kind, code, start, NO_RUN not in info, " ".join(info)))
        i += 1
    return found


def commands(script: str) -> list[tuple[str, str | None]]:
    """A bash block as (command, here-document) pairs; continuation lines joined."""
    out, lines, i = [], script.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        i += 1
        while line.endswith("\\") and i < len(lines):
            line = line[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        heredoc = None
        m = re.search(r"<<-?\s*'?(\w+)'?", line)
        if m:
            body = []
            while lines[i].strip() != m.group(1):
                body.append(lines[i])
                i += 1
            i += 1
            heredoc = "\n".join(body) + "\n"
        out.append((line.strip(), heredoc))
    return out


def _xaikit(command: str) -> tuple[int, str]:
    args = shlex.split(command)[1:]
    result = CliRunner().invoke(main, args)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def run_bash(block: Block, where: str) -> None:
    for command, heredoc in commands(block.code):
        if command.startswith("xaikit "):
            code, output = _xaikit(command)
            assert code == 0, f"{where}: {command}\n{output}"
        elif command.startswith("python - <<") and heredoc is not None:
            exec(compile(heredoc, where, "exec"), {"__name__": "__docs__"})
        else:
            script = command if heredoc is None else f"{command}\n{heredoc}{_eof(command)}\n"
            done = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True)
            assert done.returncode == 0, f"{where}: {command}\n{done.stderr}"


def _eof(command: str) -> str:
    return re.search(r"<<-?\s*'?(\w+)'?", command).group(1)


NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def assert_printed(block: Block, printed: str, where: str) -> None:
    """``printed`` holds the block's text; with ``tolerance=T`` in the fence each number may
    differ by up to T (the default models' weights differ in the last bits with the number
    of threads they were trained on, and so do the numbers computed from them)."""
    given = re.search(r"tolerance=(\S+)", block.info)
    tolerance = float(given.group(1)) if given else 0.0
    want = " ".join(block.code.split())
    parts = NUMBER.split(want)
    pattern = r"(-?\d+(?:\.\d+)?)".join(r"\s+".join(map(re.escape, p.split(" "))) for p in parts)
    found = re.search(pattern, printed)
    assert found, f"{where}: expected\n{want}\nprinted\n{printed}"
    for got, expected in zip(found.groups(), NUMBER.findall(want), strict=True):
        assert abs(float(got) - float(expected)) <= tolerance, f"{where}: printed\n{printed}"


def run_console(block: Block, where: str) -> None:
    """``$ xaikit ...`` lines, each followed by what it prints."""
    lines = block.code.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("$ ")]
    for k, i in enumerate(starts):
        command = lines[i][2:]
        expected = "\n".join(lines[i + 1 : starts[k + 1] if k + 1 < len(starts) else None])
        assert command.startswith("xaikit "), f"{where}: only xaikit commands run: {command}"
        code, output = _xaikit(command)
        assert output.strip() == expected.strip(), f"{where}: {command}"
        if expected.startswith("Error: "):
            assert code == 1, f"{where}: {command} exited with {code}"


@contextlib.contextmanager
def one_thread():
    """Torch and BLAS on one thread, as the demo runs: on a busy 2-core machine two threads
    spin-wait on each other (a probe's solver ran 10x slower with two)."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def run_page(page: str) -> dict:
    """Run every block of ``page`` in the current folder; return the Python namespace."""
    with one_thread():
        return _run_blocks(page)


def _run_blocks(page: str) -> dict:
    namespace: dict = {"__name__": "__docs__"}
    printed = None
    for block in blocks(page):
        where = f"{page}, block at line {block.line}"
        if not block.run:
            continue
        if block.kind == "python":
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                exec(compile(block.code, where, "exec"), namespace)
            printed = buffer.getvalue()
        elif block.kind == "output":
            assert printed is not None, f"{where}: an output block must follow a python block"
            assert_printed(block, printed, where)
        elif block.kind == "bash":
            run_bash(block, where)
        elif block.kind == "console":
            run_console(block, where)
    return namespace


def test_every_page_is_found_with_blocks_of_known_kinds():
    assert "README.md" in PAGES and "docs/cli.md" in PAGES
    kinds = {b.kind for page in PAGES for b in blocks(page)}
    assert {"python", "bash", "console", "output"} <= kinds
    skipped = [(page, b.line) for page in PAGES for b in blocks(page) if not b.run]
    assert len(skipped) <= 3, skipped  # a skipped block is the exception, not the habit


def test_bash_blocks_split_into_commands():
    script = textwrap.dedent(
        """\
        xaikit report --model m.py:make \\
            x.png --out r
        cat > f.py <<'EOF'
        print("hi")
        EOF
        # a comment
        cat f.py
        """
    )
    assert commands(script) == [
        ("xaikit report --model m.py:make x.png --out r", None),
        ("cat > f.py <<'EOF'", 'print("hi")\n'),
        ("cat f.py", None),
    ]


def test_output_blocks_compare_numbers_within_the_fences_tolerance():
    block = Block("output", "class 8: 44% (other classes 0%)\n", 1, True, "tolerance=2")
    assert_printed(block, "noise\nclass 8:  45% (other classes 1%)\nmore", "here")
    with pytest.raises(AssertionError):
        assert_printed(block, "class 8: 48% (other classes 0%)", "here")
    with pytest.raises(AssertionError):
        assert_printed(block, "class 8: 44% (others 0%)", "here")
    exact = Block("output", "steps 32\n", 1, True, "output")
    assert_printed(exact, "steps 32", "here")
    with pytest.raises(AssertionError):
        assert_printed(exact, "steps 33", "here")


def test_the_cli_page_lists_every_command():
    listing = blocks("docs/cli.md")[0].code
    listed = re.findall(r"^xaikit (\w+)", listing, flags=re.M)
    assert sorted(listed) == sorted(main.commands)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.filterwarnings("ignore:The feature will be removed")  # ... torch's own, inside it
@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page, tmp_path, monkeypatch, request):
    """Every runnable block of ``page`` runs as written (the models come from the cache)."""
    if page == "docs/text.md" and not text.available():
        pytest.skip(text.missing_message())
    source = (ROOT / page).read_text(encoding="utf-8")
    for name in ("clean", "watermark"):  # trained once per session, shared with other tests
        if f'load_default_cnn("{name}")' in source:
            with one_thread():  # when this test is the first to need it: as the demo trains
                request.getfixturevalue(f"{name}_cnn")
    monkeypatch.chdir(tmp_path)
    run_page(page)
    check = AFTER.get(page)
    if check is not None:
        check(tmp_path)


def _cli_claims(folder: Path) -> None:
    """What docs/cli.md says about its own outputs."""
    import json

    summary = json.loads((folder / "seven-report" / "summary.json").read_text())
    assert summary["items"][0]["predicted_name"] == "seven"  # seven.png is a 7
    assert not (folder / "r").exists()  # failures leave no folder


AFTER = {"docs/cli.md": _cli_claims}
