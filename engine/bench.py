"""`bench`: recall@k of a model and its re-ranker on a dataset split.

The dataset, the encoder and the re-ranker are resolved here, so a face makes one call
and formats what comes back (evaluation/bench.py runs the stages).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class BenchRun:
    result: dict  # JSON-ready: recall per stage and direction, negatives, timings

    @property
    def markdown(self) -> str:
        """The result as markdown tables."""
        from xmr.evaluation.bench_report import markdown_report

        return markdown_report(self.result)

    def plot(self, path: Path) -> Path:
        """Write a PNG of the recall@k curves to `path`."""
        from xmr.evaluation.bench_report import plot_curves

        return plot_curves(self.result, Path(path))


def run_bench(
    data: Path | str,
    *,
    images_root: Path | str | None = None,
    model: str = "xmr-tiny",
    reranker: str = "auto",
    split: str = "test",
    candidates: int = 128,
    index_type: str = "flat",
    limit: int | None = None,
    cache_dir: Path | None = None,
    device: str | None = None,
    progress: Progress | None = None,
) -> BenchRun:
    """Recall@1/5/10 both ways on `data` (a Karpathy JSON or a LAVIS annotation list):
    `split` 'all' takes every image, `limit` the first N; `cache_dir` keeps embeddings
    between runs (None: always re-encode)."""
    from xmr.evaluation.bench import BenchOptions, run_benchmark
    from xmr.evaluation.datasets import load_dataset
    from xmr.retrieval.encoder import load_encoder
    from xmr.retrieval.errors import InputError
    from xmr.retrieval.reranker import resolve_reranker

    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, not {limit}", setting="limit")
    root = None if images_root is None else Path(images_root)
    dataset = load_dataset(Path(data), root, split=None if split == "all" else split)
    if limit is not None:
        dataset = dataset.head(limit)
    encoder = load_encoder(model, device)
    ranker = resolve_reranker(reranker, encoder, device)
    options = BenchOptions(candidates=candidates, index_type=index_type, cache_dir=cache_dir)
    return BenchRun(run_benchmark(dataset, encoder, ranker, options, progress))
