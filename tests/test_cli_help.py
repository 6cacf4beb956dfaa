"""Every command's --help reads as words: no Python type placeholders, no `x>=1` ranges,
one metavar for an option wherever it appears, and `xmr search --help` says where a
query runs."""

from __future__ import annotations

import re
from collections import defaultdict

import typer
from typer.testing import CliRunner

from xmr.cli.main import app

# What typer writes when an option or argument has no metavar: <int>, <list[Path]>,
# <float range>, <path>, <str> ...
PLACEHOLDER = re.compile(r"<[a-z][A-Za-z_\[\], ]*>")
RANGE = re.compile(r"x\s*[<>]=|<=\s*x")


def _commands() -> dict:
    """name -> the click command typer builds (typer vendors its own click)."""
    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.output


def test_no_help_shows_a_python_type_or_a_range():
    pages = {"xmr": _help()} | {name: _help(name) for name in _commands()}
    assert len(pages) > 10
    for name, text in pages.items():
        assert not PLACEHOLDER.search(text), f"xmr {name} --help: {PLACEHOLDER.search(text)}"
        assert not RANGE.search(text), f"xmr {name} --help shows a range: {RANGE.search(text)}"


def test_every_value_has_a_metavar_and_an_option_has_one_name_everywhere():
    seen: dict[str, set[str]] = defaultdict(set)
    for name, command in _commands().items():
        for param in command.params:
            option = param.param_type_name == "option"
            if option and (param.is_flag or param.count):
                continue
            assert param.metavar, f"xmr {name}: {param.name} has no metavar"
            assert param.metavar == param.metavar.upper() or ".." in param.metavar
            if option:
                seen[max(param.opts, key=len)].add(param.metavar)
    mixed = {opt: names for opt, names in seen.items() if len(names) > 1}
    assert not mixed, f"options named differently across commands: {mixed}"
    assert seen["--index"] == {"FOLDER"} and seen["--like"] == {"ID"}
    assert seen["--min-score"] == {"0..1"} and seen["--image"] == {"FILE"}


def test_search_help_says_where_a_query_runs_and_what_scores_mean():
    page = _help("search")
    lines = [line.strip() for line in page.splitlines()]
    where = lines.index(
        "Where it runs: in the `xmr serve` of this index when one runs (warm: milliseconds);"
    )
    assert lines[where + 1].startswith("--no-server keeps it in this process")  # two lines
    text = " ".join(page.split())
    assert "Scores run from 0 to 1" in text
    assert "-k, --top N" in text and "--min-score 0..1" in text and "[QUERY]" in text
