"""Pages of one ranking, and results ordered by date: what `offset=` and `order=` mean.

A page is a slice of the answer to one bigger request: `offset=40, k=40` asks the
searcher for the top 80 exactly as `k=80` would (the same stage-1 depth, the same
re-ranked head) and returns results 41-80, ranks included. So page 2 of 40 is results
41-80 of one `k=80` request. The re-ranker reads `rerank_depth(offset + k, candidates)`
stage-1 candidates: with the default 128, pages up to result 128 come from one ranking;
a deeper page re-ranks deeper, and its answer says how deep (`page.rerank_depth`).

`order=newest|oldest` sorts the most relevant images by their date (the EXIF date when
the file has one, else its modification time, as the after/before filters read it):
the `pool` most relevant above the minimum score, where pool is at least the re-ranking
depth, so each page of a date order slices the same sorted pool. A result keeps its
relevance `rank`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from xmr.engine.request import MAX_K, SearchRequest
from xmr.retrieval.db_read import DatabaseReader, ImageRecord
from xmr.retrieval.searcher import MAX_RERANK_DEPTH, Answer, Hit, rerank_depth


@dataclass
class PagedAnswer(Answer):
    """An Answer for one page, with the page's facts and each image's date."""

    page: dict = field(default_factory=dict)
    dates: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (iso, source)

    def as_dict(self) -> dict:
        out = super().as_dict()
        for hit in out["results"]:
            if hit["id"] in self.dates and hit["kind"] == "image":
                hit["date"], hit["date_from"] = self.dates[hit["id"]]
        out["page"] = self.page
        return out


def pool_size(request: SearchRequest) -> int:
    """How many results of the ranking the searcher is asked for."""
    want = request.offset + request.k
    if request.order == "relevance":
        return want
    return min(MAX_K, max(want, rerank_depth(want, request.candidates)))


def page_of(answer: Answer, request: SearchRequest, db: DatabaseReader) -> PagedAnswer:
    """The page `request` asks for out of `answer` (the searcher's top `pool_size`)."""
    pool = answer.hits
    page_slice = slice(request.offset, request.offset + request.k)
    if request.order != "relevance":
        dates = _dates(db, pool)  # the whole pool: it is sorted by them
        newest = request.order == "newest"
        # Relevance rank breaks ties (a burst of photos taken in the same second).
        pool = sorted(pool, key=lambda h: h.rank)
        pool.sort(key=lambda h: dates.get(h.id, ("", ""))[0], reverse=newest)
        hits = pool[page_slice]
    else:
        hits = pool[page_slice]
        dates = _dates(db, hits)  # only what the page shows
    reranked = sum(1 for h in answer.hits if h.reranker is not None)
    depth = rerank_depth(pool_size(request), request.candidates) if answer.reranked else 0
    page = {
        "offset": request.offset,
        "k": request.k,
        "order": request.order,
        "pool": len(answer.hits),  # results ranked for this page (all above min_score)
        # a next page exists: the ranking went on past this one (a date order: within
        # its pool, which later pages slice too)
        "more": (
            len(answer.hits) >= pool_size(request)
            if request.order == "relevance"
            else request.offset + request.k < len(answer.hits)
        ),
        # the stage-1 candidates the re-ranker read, and how many of the pool it scored:
        # results ranked past that keep stage-1 order (each hit's "reranker" says)
        "rerank_depth": min(depth, MAX_RERANK_DEPTH),
        "reranked_results": reranked,
    }
    return PagedAnswer(
        hits,
        answer.reranked,
        answer.notices,
        answer.timings_ms,
        answer.below_min_score,
        answer.reranker,
        page=page,
        dates={h.id: dates[h.id] for h in hits if h.id in dates},
    )


def _dates(db: DatabaseReader, hits: list[Hit]) -> dict[int, tuple[str, str]]:
    """id -> (ISO date, where it came from) of the image hits."""
    rows = db.rows_by_ids("images", [h.id for h in hits if h.kind == "image"])
    return {i: when for i, row in rows.items() if (when := file_date(row)) is not None}


def file_date(row: ImageRecord) -> tuple[str, str] | None:
    """(ISO date, "taken" | "modified"): the EXIF date, else the file's modification time
    in local time, as the after/before filters read them; None for a time no calendar
    holds."""
    if row.taken_at is not None:
        return row.taken_at.isoformat(timespec="seconds"), "taken"
    try:
        moment = datetime.fromtimestamp(row.mtime_ns / 1e9)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="seconds"), "modified"
