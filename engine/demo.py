"""`xmr demo`: the whole job on a fresh, offline machine, in about a minute.

Generate a small corpus with a seed the shipped model never saw, index its images and
captions with `xmr-tiny`, run a few queries of each kind, and measure recall@k.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xmr.engine.bench import Progress
    from xmr.engine.progress import Reporter

DEMO_SEED = 7  # xmr-tiny trains on seed 0 and is evaluated on seed 1234; the demo uses neither
DEMO_MODEL = "xmr-tiny"


@dataclass
class DemoQuery:
    title: str
    query: str  # the text, or the query image's path
    correct: set[str]  # the right answers (image paths or captions); empty: none defined
    hits: list  # retrieval.searcher.Hit


@dataclass
class DemoResult:
    workdir: Path
    n_images: int
    n_texts: int
    index_seconds: float
    queries: list[DemoQuery] = field(default_factory=list)
    bench: dict | None = None
    try_query: str = ""  # a sentence to try by hand: one of the corpus's captions

    @property
    def bench_markdown(self) -> str:
        """The recall table of `bench`, as markdown."""
        from xmr.evaluation.bench_report import markdown_report

        return markdown_report(self.bench or {})


def run_demo(
    workdir: Path,
    *,
    n_images: int = 300,
    candidates: int = 16,
    reporter: Reporter | None = None,
    progress: Progress | None = None,
) -> DemoResult:

    from xmr.engine.engine import Engine
    from xmr.engine.query_input import QueryInput
    from xmr.evaluation.bench import BenchOptions, run_benchmark
    from xmr.evaluation.datasets import load_dataset
    from xmr.training.corpus import make_corpus

    workdir = Path(workdir)
    corpus = make_corpus(workdir / "corpus", n_images, DEMO_SEED, overwrite=True)
    dataset = load_dataset(corpus.captions_path, split=None)
    captions_file = workdir / "captions.txt"
    captions_file.write_text("\n".join(dataset.captions) + "\n")

    engine = Engine(workdir / "index")
    started = time.monotonic()
    engine.index([corpus.images_dir], model=DEMO_MODEL, reporter=reporter)
    engine.add_texts(captions_file, reporter=reporter)
    result = DemoResult(workdir, dataset.n_images, dataset.n_texts, time.monotonic() - started)
    for image in (3, 11):
        caption = dataset.captions[dataset.image_to_texts[image][0]]
        hits = engine.search(caption, target="images", k=3).hits
        result.queries.append(
            DemoQuery("text → image", caption, {str(dataset.image_paths[image])}, hits)
        )
    path = dataset.image_paths[5]
    by_image = QueryInput(image_path=path)
    result.queries.append(
        DemoQuery(
            "image → image (the query itself is left out)",
            str(path),
            set(),
            engine.search(by_image, target="images", k=3).hits,
        )
    )
    captions = {dataset.captions[c] for c in dataset.image_to_texts[5]}
    hits = engine.search(by_image, target="texts", k=3).hits
    result.queries.append(DemoQuery("image → text", str(path), captions, hits))
    # The same models measure recall on the whole corpus (both stages), through PyTorch:
    # the benchmark scores all pairs in batches, which the query path's runtime does not.
    from xmr.retrieval.reranker import resolve_reranker

    encoder = engine.models.encoder()
    reranker = resolve_reranker(engine.reranker_choice, encoder, engine.device)
    result.try_query = dataset.captions[dataset.image_to_texts[11][1]]
    result.bench = run_benchmark(
        dataset, encoder, reranker, BenchOptions(candidates=candidates), progress
    )
    return result
