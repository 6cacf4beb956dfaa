"""`xmr index --reranker blip-itm-base-coco`: keep a pretrained matcher's vision tokens for
every indexed image (retrieval/matcher_features.py), so searches skip the vision pass.

Runs after the encoder's pass, over the images whose rows are missing (new ones, a run
killed half-way, rows punched out by compact), decoding the files again at the matcher's
own resolution. Each batch's rows are durable before their keys are written, so a kill at
any point leaves whole rows or missing ones, never a wrong one. The model loads only when
some image needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xmr.indexer.report import Reporter
from xmr.retrieval.imageio import DEFAULT_MAX_PIXELS, decode_batches, default_workers
from xmr.retrieval.library import Library
from xmr.retrieval.matcher_features import FORMS, KeptFeatures, content_key, remove_files
from xmr.retrieval.matcher_names import MatcherSource


def matcher_fingerprint(source: MatcherSource) -> str:
    """The fingerprint the matcher will have, from its files alone (no model load)."""
    from xmr.retrieval.blip_itm import folder_fingerprint, hub_fingerprint

    if source.kind == "folder":
        return folder_fingerprint(Path(source.ref))
    return hub_fingerprint(source.ref)


def keep_matcher_features(
    library: Library,
    source: MatcherSource,
    device: str | None = None,
    form: str = "fp16",
    reporter: Reporter | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    matcher=None,
) -> dict:
    """Fill the missing rows; returns {"filled", "unreadable", "bytes"}. `matcher`: an
    already loaded one (tests, benchmarks), else loaded here when some row is missing."""
    if form not in FORMS:
        from xmr.retrieval.errors import InputError

        raise InputError(f"feature form must be one of {', '.join(FORMS)}, not {form!r}")
    reporter = reporter or Reporter()
    fingerprint = matcher.fingerprint if matcher is not None else matcher_fingerprint(source)
    kept = library.images.kept
    if kept is None or kept.fingerprint != fingerprint or kept.form != form:
        if matcher is None:
            from xmr.retrieval.blip_itm import load_matcher

            matcher = load_matcher(source, device)
        library.set_kept_matcher(None)
        remove_files(library.directory)  # another matcher's or form's rows
        shape = matcher.feature_shape  # (N, V)
        name, entry = source.name, source.as_dict()
        kept = KeptFeatures(
            library.directory, matcher.fingerprint, name, entry, form, shape, writable=True
        )
        library.set_kept_matcher(kept)
    rows = library.db.indexed_images()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    keys = np.array([content_key(r[2]) for r in rows], dtype=np.int64)
    todo = np.flatnonzero(~kept.present(ids, keys)) if len(ids) else np.zeros(0, np.int64)
    report = {"filled": 0, "unreadable": 0, "bytes": kept.allocated_bytes()}
    if not len(todo):
        return report
    if matcher is None:
        from xmr.retrieval.blip_itm import load_matcher

        matcher = load_matcher(source, device)
    paths = [rows[i][1] for i in todo]
    reporter.stage("re-ranker vision features", len(todo))
    for decoded in decode_batches(
        paths, matcher.preprocess, batch_size, workers or default_workers(), max_pixels
    ):
        good = [d for d in decoded if d.pixels is not None]
        report["unreadable"] += len(decoded) - len(good)
        if good:
            import torch

            rows_at = todo[[d.position for d in good]]
            features = matcher.vision_features(torch.stack([d.pixels for d in good]))
            kept.write(ids[rows_at], keys[rows_at], features)  # (b, N, V)
            report["filled"] += len(good)
        reporter.advance(len(decoded))
    reporter.done()
    report["bytes"] = kept.allocated_bytes()
    return report
