"""What a writing operation reports while it runs and when it is done: the faces pass a
`Reporter` (progress bars, `skipping PATH: reason` lines) and read an `IndexSummary`.
Cheap to import: no model, index or database code."""

from xmr.indexer.report import IndexSummary, Reporter

__all__ = ["IndexSummary", "Reporter"]
