"""`xmr add-texts`: ingest a text corpus (.txt, .jsonl, .csv), deduplicated and incremental.

A text's identity is its normalised content (whitespace collapsed), so the same caption
in two files or twice in one file is stored and embedded once. Re-running on an edited
file embeds only the new texts and drops the ones that left that file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import delete, select

from indexer.executor import LOCAL, Executor
from indexer.report import IndexSummary, Reporter
from retrieval.db import Database, TextRow, TextSource
from retrieval.errors import InputError
from retrieval.library import Library

TEXT_FIELDS = ("text", "caption", "sentence", "description")


@dataclass
class TextRecord:
    text: str
    record: str  # "line 12" / "row 3" / the record's own id
    meta: dict | None = None


def normalise(text: str) -> str:
    return " ".join(text.split())


def text_hash(text: str) -> str:
    return hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=16).hexdigest()


def read_corpus(path: Path, text_field: str | None = None) -> list[TextRecord]:
    """Parse a corpus file; raises InputError naming the file and the line at fault."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist; give a .txt, .jsonl or .csv file")
    suffix = path.suffix.lower()
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path, raw, text_field)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, raw, text_field, "\t" if suffix == ".tsv" else ",")
    if suffix in (".txt", ".text", ""):
        return [
            TextRecord(line.strip(), f"line {n}")
            for n, line in enumerate(raw.splitlines(), start=1)
            if line.strip()
        ]
    raise InputError(f"{path}: unsupported corpus format '{suffix}'; use .txt, .jsonl or .csv")


def _pick_field(path: Path, fields, text_field: str | None, where: str) -> str:
    if text_field is not None:
        if text_field not in fields:
            raise InputError(
                f"{path}: {where} has no '{text_field}' field; it has: {', '.join(fields)}"
            )
        return text_field
    for candidate in TEXT_FIELDS:
        if candidate in fields:
            return candidate
    raise InputError(
        f"{path}: {where} has no text field (looked for {', '.join(TEXT_FIELDS)}; it has: "
        f"{', '.join(fields) or 'nothing'}); name it with --text-field"
    )


def _read_jsonl(path: Path, raw: str, text_field: str | None) -> list[TextRecord]:
    records = []
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {n} is not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise InputError(f"{path}: line {n} is not a JSON object")
        field = _pick_field(path, list(obj), text_field, f"line {n}")
        value = obj.pop(field)
        if not isinstance(value, str):
            raise InputError(f"{path}: line {n}: '{field}' is not a string")
        if value.strip():
            record = str(obj.get("id", f"line {n}"))
            records.append(TextRecord(value.strip(), record, obj or None))
    return records


def _read_csv(path: Path, raw: str, text_field: str | None, delimiter: str) -> list[TextRecord]:
    reader = csv.DictReader(raw.splitlines(), delimiter=delimiter)
    field = _pick_field(path, reader.fieldnames or [], text_field, "the header")
    records = []
    for n, row in enumerate(reader, start=2):
        value = (row.pop(field) or "").strip()
        if value:
            meta = {k: v for k, v in row.items() if k is not None}
            records.append(TextRecord(value, str(row.get("id") or f"line {n}"), meta or None))
    return records


def add_texts(
    library: Library,
    encoder,
    path: Path,
    text_field: str | None = None,
    batch_size: int = 256,
    reporter: Reporter | None = None,
    executor: Executor = LOCAL,
) -> IndexSummary:
    """`executor` runs the encoder here or on Ray (executor.py); this process writes."""
    reporter = reporter or Reporter()
    started = time.monotonic()
    summary = IndexSummary()
    source = str(Path(path).expanduser().resolve())
    records = read_corpus(Path(path), text_field)

    unique: dict[str, TextRecord] = {}
    for record in records:
        digest = text_hash(record.text)
        if digest in unique:
            summary.duplicates += 1
        else:
            unique[digest] = record

    with library.db.session() as session:
        existing = {h: i for h, i in session.execute(select(TextRow.text_hash, TextRow.id))}
        linked = set(session.scalars(select(TextSource.text_id).where(TextSource.source == source)))
        summary.unchanged = sum(1 for d in unique if d in existing)
        # Texts this file holds that are stored already (maybe from another file): link them.
        wanted = {existing[d]: r for d, r in unique.items() if d in existing}
        session.add_all(
            TextSource(text_id=tid, source=source, record=r.record)
            for tid, r in wanted.items()
            if tid not in linked
        )
        # Texts that left this file: unlink; delete those no other file holds.
        gone = [tid for tid in linked if tid not in wanted]
        if gone:
            session.execute(
                delete(TextSource).where(TextSource.source == source, TextSource.text_id.in_(gone))
            )
            still_held = set(
                session.scalars(select(TextSource.text_id).where(TextSource.text_id.in_(gone)))
            )
            orphans = [tid for tid in gone if tid not in still_held]
            session.execute(delete(TextRow).where(TextRow.id.in_(orphans)))
            library.texts.index.remove(orphans)
            summary.removed = len(orphans)
        Database.bump_generation(session)
        session.commit()

    new = [(d, r) for d, r in unique.items() if d not in existing]
    if new:
        reporter.stage("embedding texts", len(new))
        batches = executor.encode_texts([r.text for _, r in new], encoder, batch_size)
        try:
            for start in range(0, len(new), batch_size):
                chunk = new[start : start + batch_size]
                t0 = time.monotonic()
                encoded = next(batches)  # the texts of `chunk`, in order
                summary.encode_seconds += time.monotonic() - t0
                with library.db.session() as session:
                    rows = [
                        TextRow(
                            text=record.text,
                            text_hash=digest,
                            source=source,
                            record=record.record,
                            meta_json=json.dumps(record.meta) if record.meta else None,
                            n_tokens=int(n),
                        )
                        for (digest, record), n in zip(chunk, encoded.lengths, strict=True)
                    ]
                    session.add_all(rows)
                    session.flush()
                    session.add_all(
                        TextSource(text_id=row.id, source=source, record=row.record) for row in rows
                    )
                    ids = np.array([row.id for row in rows], dtype=np.int64)
                    library.texts.write(ids, encoded.vectors, encoded.tokens)
                    library.texts.flush()
                    Database.bump_generation(session)
                    session.commit()
                summary.new += len(chunk)
                summary.encoded += len(chunk)
                reporter.advance(len(chunk))
        finally:
            reporter.done()
    library.save()
    summary.seconds = time.monotonic() - started
    return summary
