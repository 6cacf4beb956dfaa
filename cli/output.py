"""Results for people (aligned columns), pipes (paths only) and programs (JSON).

File names that are not UTF-8 reach Python with surrogate escapes (PEP 383). People see
them escaped (`\\xff`, by the error handler `install_escaping` puts on stdout and stderr);
`--paths` and `--print0` write the name's own bytes, so a pipe gets the real file; JSON
writes `\\udcff`, which json.loads turns back into the same str (os.fsencode: the bytes).
"""

from __future__ import annotations

import codecs
import json
import os
import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from xmr.engine.progress import IndexSummary
    from xmr.engine.writes import WriteReport

_SURROGATES = re.compile("[\udc80-\udcff]")


def _escape_errors(exc: UnicodeError):
    """Encoding error handler: a surrogate-escaped byte as \\xNN, anything else as \\uNNNN."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for char in exc.object[exc.start : exc.end]:
        code = ord(char)
        out.append(f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}")
    return "".join(out), exc.end


codecs.register_error("xmr-escape", _escape_errors)


def install_escaping() -> None:
    """Print names that are not UTF-8 escaped instead of failing on them."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="xmr-escape")


def json_text(data: object) -> str:
    """JSON with non-ASCII kept readable and surrogate escapes written as \\udcNN."""
    text = json.dumps(data, ensure_ascii=False, indent=2)
    return _SURROGATES.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def print_answer(
    results: list[dict], as_json: bool, paths_only: bool, print0: bool = False
) -> None:
    """Search results (Hit.as_dict() each, from this process or a server)."""
    if as_json:
        typer.echo(json_text(results))
        return
    if paths_only or print0:  # the names' own bytes, for pipes (find -print / -print0)
        end = b"\0" if print0 else b"\n"
        sys.stdout.flush()
        out = sys.stdout.buffer
        for hit in results:
            name = os.fsencode(hit["path"]) if hit["kind"] == "image" else hit["text"].encode()
            out.write(name + end)
        out.flush()
        return
    for hit in results:
        typer.echo(result_line(hit))


def result_line(hit: dict) -> str:
    """One result for people: rank, score (0..1), path or text, folded duplicates."""
    target = hit["path"] if hit["kind"] == "image" else hit["text"]
    folded = hit.get("duplicates")
    more = f"  (+{len(folded)} near-duplicates)" if folded else ""
    return f"{hit['rank']:>3}  {hit['score']:.3f}  {target}{more}"


def print_notices(notices: Iterable[str]) -> None:
    """What the engine wants a person to know, one `note:` line each, on stderr."""
    for notice in notices:
        typer.echo(f"note: {notice}", err=True)


def print_report(report: WriteReport[IndexSummary], what: str, as_json: bool, quiet: bool) -> None:
    """A writing operation's notices (stderr) and summary (stderr, or JSON on stdout)."""
    print_notices(report.notices)
    if as_json or not quiet:
        print_summary(report.summary, what, as_json)


def print_summary(summary: IndexSummary, what: str, as_json: bool) -> None:
    print_notices(summary.notices)
    if as_json:
        typer.echo(json_text(summary.as_dict()))
        return
    parts = [f"{summary.new} new"]
    for label, value in (
        ("repaired", summary.repaired),
        ("updated", summary.updated),
        ("unchanged", summary.unchanged),
        ("touched", summary.touched),
        ("moved", summary.moved),
        ("duplicates", summary.duplicates),
        ("removed", summary.removed),
        ("skipped", len(summary.skipped)),
        ("skipped earlier", summary.skipped_before),
    ):
        if value or label in ("unchanged", "removed", "skipped"):
            parts.append(f"{value} {label}")
    rate = f", {summary.items_per_second:.1f} {what}/s encoded" if summary.encoded else ""
    typer.echo(f"{what}: " + ", ".join(parts) + f" in {summary.seconds:.1f}s{rate}", err=True)
    if summary.links_not_followed:
        typer.echo(
            f"{summary.links_not_followed} symlinked folders not followed "
            "(--follow-links enters them)",
            err=True,
        )


def describe_index(index: dict) -> str:
    """'images hnsw (efSearch 24, recall@10 0.97, 3 tombstones), texts flat; policy auto'."""
    parts = []
    for name in ("images", "texts"):
        info = index[name]
        knobs = {k: v for k, v in info["search_params"].items() if k in ("nprobe", "efSearch")}
        details = [f"{k} {v}" for k, v in knobs.items()]
        if "k_factor" in info["search_params"]:
            details.append(f"re-rank x{info['search_params']['k_factor']}")
        if info["search_params"].get("recall_at_10") is not None and knobs:
            details.append(f"recall@10 {info['search_params']['recall_at_10']}")
        if info["tombstones"]:
            details.append(f"{info['tombstones']} tombstones")
        if info["memory_mapped"]:
            details.append("memory-mapped")
        parts.append(f"{name} {info['type']}" + (f" ({', '.join(details)})" if details else ""))
    policy = index["policy"]
    budget = f", max memory {human_bytes(policy['max_memory'])}" if policy["max_memory"] else ""
    return ", ".join(parts) + f"; policy {policy['type']}{budget}"
