"""`xmr add-texts`: ingest a text corpus (.txt, .jsonl, .csv, or the captions of a
Karpathy-format .json such as `xmr make-corpus` writes), deduplicated and incremental.

A text's identity is its normalised content (whitespace collapsed), so the same caption
in two files or twice in one file is stored and embedded once. Re-running on an edited
file embeds only the new texts and drops the ones that left that file.

What is stored (`clean_text`): control characters (C0 and C1, NUL included; tab,
newline and carriage return kept) are removed, and a text is cut to MAX_TEXT_CHARS
characters (the encoder reads far fewer tokens than that); the summary counts both, so
neither passes silently.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmr.indexer.executor import LOCAL, Executor
from xmr.indexer.report import IndexSummary, Reporter
from xmr.retrieval.db import Database, TextRow, TextSource
from xmr.retrieval.errors import InputError
from xmr.retrieval.files import require_regular_file
from xmr.retrieval.library import Library

TEXT_FIELDS = ("text", "caption", "sentence", "description")
MAX_TEXT_CHARS = 10_000
# C0 and C1 control characters, less the whitespace ones (tab, newline, carriage return)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


@dataclass
class TextRecord:
    text: str
    record: str  # "line 12" / "row 3" / the record's own id
    meta: dict | None = None
    cleaned: bool = False  # control characters were removed
    shortened: bool = False  # cut to MAX_TEXT_CHARS


def clean_text(text: str) -> tuple[str, bool, bool]:
    """-> (text as stored, control characters removed?, cut to MAX_TEXT_CHARS?)."""
    stripped = _CONTROL.sub("", text)
    cleaned = len(stripped) != len(text)
    stripped = stripped.strip()
    shortened = len(stripped) > MAX_TEXT_CHARS
    return (stripped[:MAX_TEXT_CHARS].rstrip() if shortened else stripped), cleaned, shortened


def _record(text: str, record: str, meta: dict | None = None) -> TextRecord | None:
    stored, cleaned, shortened = clean_text(text)
    return TextRecord(stored, record, meta, cleaned, shortened) if stored else None


def normalise(text: str) -> str:
    return " ".join(text.split())


def text_hash(text: str) -> str:
    return hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=16).hexdigest()


def read_corpus(path: Path, text_field: str | None = None) -> list[TextRecord]:
    """Parse a corpus file; raises InputError naming the file and the line at fault."""
    path = Path(path)
    require_regular_file(path, "corpus", "a .txt, .jsonl, .csv or captions .json file")
    suffix = path.suffix.lower()
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path, raw, text_field)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, raw, text_field, "\t" if suffix == ".tsv" else ",")
    if suffix == ".json":
        return _read_karpathy(path, raw)
    if suffix in (".txt", ".text", ""):
        records = (_record(line, f"line {n}") for n, line in enumerate(raw.splitlines(), start=1))
        return [r for r in records if r is not None]
    raise InputError(
        f"{path}: unsupported corpus format '{suffix}'; use .txt, .jsonl, .csv or a "
        "Karpathy-format captions .json"
    )


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
        f"{', '.join(fields) or 'nothing'}); name the text field",
        setting="text_field",
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
        record = _record(value, str(obj.get("id", f"line {n}")), obj or None)
        if record is not None:
            records.append(record)
    return records


def _read_karpathy(path: Path, raw: str) -> list[TextRecord]:
    """The captions of a Karpathy-format file (COCO, Flickr30k, `xmr make-corpus`):
    {"images": [{"filename", "filepath"?, "split"?, "sentences": [{"raw"}, ...]}, ...]};
    each caption's record names its image, and its meta the image and split."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise InputError(
            f"{path}: no 'images' list; add-texts reads Karpathy-format captions .json "
            "(COCO, Flickr30k, xmr make-corpus); write other corpora as .jsonl"
        )
    records = []
    for n, image in enumerate(images):
        sentences = image.get("sentences") if isinstance(image, dict) else None
        if not isinstance(sentences, list):
            raise InputError(f"{path}: images[{n}] has no 'sentences' list")
        name = str(Path(image.get("filepath") or "") / str(image.get("filename", n)))
        meta = {"image": name, **({"split": image["split"]} if "split" in image else {})}
        for k, sentence in enumerate(sentences):
            text = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(text, str):
                raise InputError(f"{path}: images[{n}].sentences[{k}] has no 'raw' text")
            record = _record(text, f"{name} caption {k}", meta)
            if record is not None:
                records.append(record)
    return records


def _read_csv(path: Path, raw: str, text_field: str | None, delimiter: str) -> list[TextRecord]:
    reader = csv.DictReader(raw.splitlines(), delimiter=delimiter)
    field = _pick_field(path, reader.fieldnames or [], text_field, "the header")
    records = []
    for n, row in enumerate(reader, start=2):
        value = row.pop(field) or ""
        meta = {k: v for k, v in row.items() if k is not None}
        record = _record(value, str(row.get("id") or f"line {n}"), meta or None)
        if record is not None:
            records.append(record)
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
    summary = IndexSummary(notices=list(library.notices))
    source = str(Path(path).expanduser().resolve())
    records = read_corpus(Path(path), text_field)
    summary.cleaned = sum(r.cleaned for r in records)
    summary.shortened = sum(r.shortened for r in records)
    if summary.cleaned:
        summary.notices.append(f"{summary.cleaned} texts had control characters removed")
    if summary.shortened:
        summary.notices.append(
            f"{summary.shortened} texts were cut to {MAX_TEXT_CHARS:,} characters"
        )
    library.record_sources("text_sources", [source])
    reencode_damaged_texts(library, encoder, summary, reporter)

    unique: dict[str, TextRecord] = {}
    for record in records:
        digest = text_hash(record.text)
        if digest in unique:
            summary.duplicates += 1
        else:
            unique[digest] = record

    with library.writer_db.session() as session:
        existing = Database.text_ids_by_hash(session)
        linked = Database.text_ids_of_source(session, source)
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
            orphans = Database.unlink_texts(session, source, gone)
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
                with library.writer_db.session() as session:
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
                    _commit_texts(library, session, ids, encoded)
                summary.new += len(chunk)
                summary.encoded += len(chunk)
                reporter.advance(len(chunk))
        finally:
            reporter.done()
    library.save()
    summary.seconds = time.monotonic() - started
    return summary


def reencode_damaged_texts(library: Library, encoder, summary: IndexSummary, reporter) -> None:
    """Re-encode, from the database's own copy of each text, the texts whose stored
    records were lost (db.Damaged): same ids, written again, committed batch by batch."""
    damaged = library.db.damaged_ids("texts")
    if not damaged:
        return
    reporter.stage("re-encoding texts", len(damaged))
    try:
        for start in range(0, len(damaged), 256):
            done = _reencode_texts(library, encoder, damaged[start : start + 256])
            summary.repaired += done
            summary.encoded += done
            reporter.advance(done)
    finally:
        reporter.done()


def _reencode_texts(library: Library, encoder, ids: list[int]) -> int:
    with library.writer_db.session() as session:
        found = library.writer_db.rows_in(session, "texts", ids)
        rows = [found[i] for i in sorted(found)]
        encoded = encoder.encode_texts([row.text for row in rows])
        for row, n in zip(rows, encoded.lengths, strict=True):
            row.n_tokens = int(n)
        found = np.array([row.id for row in rows], dtype=np.int64)
        Database.clear_damaged(session, "texts", found.tolist())
        _commit_texts(library, session, found, encoded)
    return len(rows)


def _commit_texts(library: Library, session, ids: np.ndarray, encoded) -> None:
    """Records reach the disk before the rows that point at them are committed."""
    library.texts.write(ids, encoded.vectors, encoded.tokens)
    library.texts.flush()
    Database.bump_generation(session)
    session.commit()
