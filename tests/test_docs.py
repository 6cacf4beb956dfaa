"""The docs run: every command block of the README and docs/commands.md, and every
example of docs/python.md, runs here against the output it states.

A command block is a fenced `bash` block. Each line that starts at the margin is a command,
run with bash in a temporary folder (one per page, so a page's blocks build on each other;
`$XMR_INDEX` points into it); the indented lines under a command are its standard output,
compared line by line (a line that ends in `...` matches any line that starts with what
comes before). A command with no lines under it must succeed. A block that cannot run here
is preceded by `<!-- no-run: REASON -->`. A `python` block runs in one namespace per page,
its printed output compared with the `text` block right after it, when there is one.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, XMR, xmr_env

PAGES = ("README.md", "docs/commands.md")
NO_RUN = re.compile(r"<!--\s*no-run:\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    language: str
    lines: list[str]
    no_run: str | None = None  # the reason, when marked
    output: list[str] | None = None  # a python block's `text` block


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)


def blocks(text: str, page: str) -> list[Block]:
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marked = NO_RUN.search(before)
        block = Block(page, i + 1, opening.group(1), lines[i + 1 : end])
        block.no_run = marked.group(1) if marked else None
        if block.language == "text" and found and found[-1].language == "python":
            found[-1].output = block.lines
        else:
            found.append(block)
        i = end + 1
    return found


def commands(block: Block) -> list[Command]:
    out: list[Command] = []
    for line in block.lines:
        if line.startswith((" ", "\t")) and out:
            out[-1].expected.append(line.rstrip())
        elif line.strip():
            out.append(Command(line.strip()))
    return out


def matches(expected: list[str], got: list[str]) -> bool:
    if len(expected) != len(got):
        return False
    for want, line in zip(expected, got, strict=True):
        if want.endswith("..."):
            if not line.startswith(want[:-3]):
                return False
        elif want != line.rstrip():
            return False
    return True


def _page(name: str) -> list[Block]:
    return blocks((REPO / name).read_text(), name)


def _run_commands(block: Block, folder: Path) -> None:
    env = xmr_env(XMR_INDEX=str(folder / "index"))
    env["PATH"] = f"{XMR.parent}{os.pathsep}{env.get('PATH', '')}"
    for command in commands(block):
        result = subprocess.run(
            ["bash", "-c", command.text],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        where = f"{block.page}:{block.line}: {command.text}"
        assert result.returncode == 0, f"{where}\n{result.stderr}"
        if command.expected:
            got = result.stdout.splitlines()
            assert matches(command.expected, got), (
                f"{where}\nstated:\n" + "\n".join(command.expected) + "\ngot:\n" + "\n".join(got)
            )


def _runnable(page: str) -> list[Block]:
    return [b for b in _page(page) if b.language == "bash" and b.no_run is None]


def test_every_command_block_runs_or_says_why_not():
    counts = {}
    for page in PAGES:
        command_blocks = [b for b in _page(page) if b.language == "bash"]
        for block in command_blocks:
            if block.no_run is not None:
                assert len(block.no_run) >= 10, f"{page}:{block.line}: say why it cannot run"
        counts[page] = sum(b.no_run is None for b in command_blocks)
        assert all(commands(b) for b in command_blocks)
    # A fenced block that holds commands but is not `bash` would escape the runner.
    for page in PAGES:
        for block in _page(page):
            if block.language in ("", "sh", "console", "shell"):
                assert not any(line.startswith("xmr ") for line in block.lines), (
                    f"{page}:{block.line}: a command block must be fenced as bash"
                )
    assert counts["README.md"] > 0 and counts["docs/commands.md"] > 0


def test_the_readme_stays_short_and_tells_no_history():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for history in ("before the engine", "--before", "the H100 run"):
        assert history not in text, f"README: '{history}' belongs in CHANGELOG.md"


@pytest.mark.parametrize("page", PAGES)
def test_the_command_blocks_of_a_page_give_their_stated_output(page, tmp_path):
    for block in _runnable(page):
        _run_commands(block, tmp_path)


def test_the_python_guide_runs(tmp_path, monkeypatch):
    page = _page("docs/python.md")
    python = [b for b in page if b.language == "python"]
    assert len(python) >= 4 and sum(b.output is not None for b in python) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_python"}
    for block in page:
        if block.language == "bash":
            _run_commands(block, tmp_path)
        elif block.language == "python":
            printed = io.StringIO()
            code = compile("\n".join(block.lines), f"docs/python.md:{block.line}", "exec")
            with contextlib.redirect_stdout(printed):
                exec(code, namespace)
            if block.output is not None:
                got = printed.getvalue().splitlines()
                assert matches(block.output, got), (
                    f"docs/python.md:{block.line}\nstated:\n"
                    + "\n".join(block.output)
                    + "\ngot:\n"
                    + "\n".join(got)
                )


def test_the_runner_catches_a_wrong_output_and_an_unmarked_block():
    text = (
        "```bash\nxmr search x --texts\n  1   0.5  a red ...\n  2   0.4  blue\nxmr info\n```\n"
        "<!-- no-run: needs the network -->\n```bash\npip install x\n```\n"
        "```python\nprint(1)\n```\n\n```text\n1\n```\n"
    )
    found = blocks(text, "page.md")
    assert [b.language for b in found] == ["bash", "bash", "python"]
    assert found[0].no_run is None and found[1].no_run == "needs the network"
    assert found[2].output == ["1"]
    first, second = commands(found[0])
    assert first.expected == ["  1   0.5  a red ...", "  2   0.4  blue"] and second.expected == []
    assert matches(first.expected, ["  1   0.5  a red circle", "  2   0.4  blue"])
    assert not matches(first.expected, ["  1   0.5  a blue circle", "  2   0.4  blue"])
    assert not matches(first.expected, ["  1   0.5  a red circle"])
