"""Per-core rates of the CPU stages a cluster run is made of (inputs to docs/scale.md).

    python benchmarks/bench_scale_rates.py            # ~5 min on 2 cores

  decode_ips_per_core   640x480 JPEGs -> ViT-B-32 input tensors (224 px, open_clip's
                        preprocessing), one process: the work each GPU actor's decode
                        processes do (retrieval/imageio.decode_image)
  hash_mib_s_per_core   content hashing (indexer/scan.content_hash) of 3 MiB files: what
                        the writer's change detection costs per byte
  writer_ips            the single writer of `xmr index` (indexer/images.py: scan, hash,
                        plan, SQLite rows, vector store, token store, FAISS add, commits)
                        fed ViT-B-32-shaped results (512-d vectors, 49 x 512 fp16 tokens)
                        by an executor that computes nothing; with tokens and without
  driver_bytes          the driver's memory per file while it plans a run: a scanned
                        file, and an already indexed row under the folders (the ORM
                        object the plan compares against); SQLite bytes per row on disk
Each rate is the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import host, log, make_photos, median, publish  # noqa: E402

from xmr.indexer.executor import Executor  # noqa: E402
from xmr.retrieval.embedding import ImageBatch  # noqa: E402
from xmr.retrieval.encoder import Encoded  # noqa: E402
from xmr.retrieval.imageio import DecodedImage  # noqa: E402

MODEL = "ViT-B-32:none"


@dataclass(frozen=True)
class Precomputed(Executor):
    """An executor whose 'encoder' answers at once: isolates the writer's own cost."""

    kind: str = "precomputed"
    dim: int = 512
    tokens: tuple[int, int] | None = (49, 512)

    def embed_images(self, paths, encoder, token_layer, batch_size, workers, max_pixels):
        rng = np.random.default_rng(0)
        for start in range(0, len(paths), batch_size):
            n = min(batch_size, len(paths) - start)
            vectors = rng.standard_normal((n, self.dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            tokens = None
            if self.tokens:
                tokens = rng.standard_normal((n, *self.tokens)).astype(np.float16)
            images = [DecodedImage(start + i, None, 640, 480, "JPEG") for i in range(n)]
            yield ImageBatch(images, Encoded(vectors, tokens, None), 0.0)


def decode_rate(encoder, paths: list[Path]) -> float:
    from xmr.retrieval.imageio import decode_image

    started = time.perf_counter()
    for path in paths:
        decode_image(str(path), encoder.preprocess)
    return len(paths) / (time.perf_counter() - started)


def hash_rate(folder: Path, files: int = 20, mib: int = 3) -> float:
    from xmr.indexer.scan import content_hash

    rng = np.random.default_rng(0)
    paths = []
    for i in range(files):
        path = folder / f"blob{i}.jpg"
        path.write_bytes(rng.bytes(mib * 2**20))
        paths.append(path)
    started = time.perf_counter()
    for path in paths:
        content_hash(str(path))
    return files * mib / (time.perf_counter() - started)


def writer_rate(encoder, folder: Path, tokens: bool, batch_size: int = 64) -> float:
    from xmr.indexer.images import IndexOptions, index_folders
    from xmr.retrieval.library import Library

    work = Path(tempfile.mkdtemp(prefix="xmr-bench-writer-"))
    try:
        options = IndexOptions(
            batch_size=batch_size,
            executor=Precomputed(tokens=encoder.image_token_shape if tokens else None),
        )
        with Library.open_or_create(work / "index", encoder, keep_tokens=tokens) as library:
            started = time.perf_counter()
            summary = index_folders(library, encoder, [folder], options)
            seconds = time.perf_counter() - started
        return summary.new / seconds
    finally:
        shutil.rmtree(work, ignore_errors=True)


def driver_bytes(folder: Path, n: int = 50_000) -> dict:
    """Python heap per scanned file and per loaded ImageRow; SQLite file bytes per row."""
    import tracemalloc

    from sqlalchemy import select

    from xmr.indexer.scan import ScannedFile
    from xmr.retrieval.db import Database, ImageRow

    names = [f"/data/photos/2019/07/IMG_{i:08d}.JPG" for i in range(n)]  # a camera's names
    tracemalloc.start()
    scanned = {name: ScannedFile(name, 3_000_000 + i, 10**18 + i) for i, name in enumerate(names)}
    per_file = tracemalloc.get_traced_memory()[0] / n
    tracemalloc.stop()
    del scanned
    db = Database(folder)
    with db.session() as session:
        session.add_all(
            ImageRow(path=name, size=3_000_000, mtime_ns=1, content_hash="0" * 32, width=4000,
                     height=3000, format="JPEG")
            for name in names
        )  # fmt: skip
        session.commit()
    tracemalloc.start()
    with db.session() as session:
        rows = {row.path: row for row in session.scalars(select(ImageRow))}
        per_row = tracemalloc.get_traced_memory()[0] / len(rows)
    tracemalloc.stop()
    db.close()
    return {
        "scan_bytes_per_file": round(per_file),
        "plan_bytes_per_indexed_row": round(per_row),
        "sqlite_bytes_per_row": round((folder / "xmr.sqlite3").stat().st_size / n),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decode-images", type=int, default=200)
    parser.add_argument("--writer-images", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from xmr.retrieval.encoder import load_encoder

    torch.set_num_threads(1)
    encoder = load_encoder(MODEL, "cpu")
    work = Path(tempfile.mkdtemp(prefix="xmr-bench-rates-"))
    try:
        log(f"generating {args.decode_images} 640x480 JPEGs and {args.writer_images} files")
        photos = make_photos(work / "photos", args.decode_images, (640, 480), jpeg_share=1.0)
        make_photos(work / "many", args.writer_images, (64, 48), jpeg_share=1.0)
        (work / "blobs").mkdir()
        rates: dict[str, list[float]] = {
            "decode_ips_per_core": [],
            "hash_mib_s_per_core": [],
            "writer_ips_tokens": [],
            "writer_ips_no_tokens": [],
        }
        for repeat in range(args.repeats):
            rates["decode_ips_per_core"].append(decode_rate(encoder, photos))
            rates["hash_mib_s_per_core"].append(hash_rate(work / "blobs"))
            rates["writer_ips_tokens"].append(writer_rate(encoder, work / "many", True))
            rates["writer_ips_no_tokens"].append(writer_rate(encoder, work / "many", False))
            log(f"repeat {repeat + 1}: { {k: round(v[-1], 1) for k, v in rates.items()} }")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = {key: round(median(values), 1) for key, values in rates.items()}
    with tempfile.TemporaryDirectory() as tmp:
        memory = driver_bytes(Path(tmp))
    data = {
        "summary": summary,
        "driver_bytes": memory,
        "runs": rates,
        "model": MODEL,
        "image_token_shape": list(encoder.image_token_shape),
        "host": host(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    lines = [
        "# Per-core rates of the CPU stages (benchmarks/bench_scale_rates.py)",
        "",
        f"Medians of {args.repeats} runs; load average {data['host']['load_avg']} "
        f"({data['host']['cpus']} cores shared with other work).",
        "",
        "| stage | rate |",
        "|---|---|",
        f"| decode 640x480 JPEG -> ViT-B-32 input, one core | "
        f"{summary['decode_ips_per_core']} images/s |",
        f"| content hash, one core | {summary['hash_mib_s_per_core']} MiB/s |",
        f"| single writer, 512-d vectors + 49x512 fp16 tokens | "
        f"{summary['writer_ips_tokens']} images/s |",
        f"| single writer, vectors only (--no-tokens) | {summary['writer_ips_no_tokens']} "
        "images/s |",
        f"| driver memory per scanned file | {memory['scan_bytes_per_file']} B |",
        f"| driver memory per indexed row under the folders (re-runs) | "
        f"{memory['plan_bytes_per_indexed_row']} B |",
        f"| SQLite file per image row | {memory['sqlite_bytes_per_row']} B |",
        "",
    ]
    return publish("bench_scale_rates", data, lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
