"""The decode -> encode step on a Ray cluster (the `ray` extra: `pip install 'xmr[ray]'`).

    driver: paths ──Ray Dataset (blocks of whole batches)──▶ actor pool ──▶ columns ──▶ writer
    actor:  loads the encoder once, runs retrieval.embedding.embed_images on each batch

Ray Data's `map_batches` with a callable class makes the actor pool: one actor per GPU
(num_gpus=1 each, decoding in `workers` processes beside it) on a GPU cluster, else one
per CPU (decoding in the actor itself). Ray restarts an actor that dies and retries its
blocks. Order is preserved and the driver reads the results back in the caller's batch
size, so the writer sees exactly the stream the local step gives: same rows, same ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import datetime

import numpy as np

from xmr.retrieval.embedding import ImageBatch, embed_images, text_batches
from xmr.retrieval.errors import InputError
from xmr.retrieval.imageio import DecodedImage

# A Ray block (the unit an actor takes) holds 1..MAX_BLOCK_BATCHES batches: about four
# blocks per actor on small runs, so work spreads; bounded, so a 100M-path dataset is
# ~25k blocks, not 400k.
MAX_BLOCK_BATCHES = 16


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library comes with the `ray[data]` extra)
    except ImportError as exc:
        raise InputError(
            "--executor ray needs Ray Data: pip install 'xmr[ray]' (ray[data] 2.x)"
        ) from exc
    return ray


def connect(executor) -> bool:
    """Join the cluster at `executor.address`, or start a local Ray; True if started here.

    An already initialised Ray (a test's, an application's) is used as it is.
    """
    ray = _ray()
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "include_dashboard": False, "configure_logging": False}
    if executor.address:
        try:
            ray.init(address=executor.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(
                f"cannot reach a Ray cluster at '{executor.address}' ({exc}); start one with "
                "`ray start --head` or give its address as --executor ray:HOST:PORT"
            ) from exc
        return False
    ray.init(num_cpus=executor.num_cpus or os.cpu_count(), **quiet)
    return True


def pool_plan(executor, workers: int) -> dict:
    """Actors, their resources and their decode processes, from the cluster's resources."""
    ray = _ray()
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus:
        decode = max(0, min(workers, cpus // gpus - 1))  # keep a core per GPU for its actor
        actors = executor.actors or gpus
        return {"actors": actors, "num_gpus": 1, "num_cpus": 1 + decode, "workers": decode}
    actors = executor.actors or cpus
    return {"actors": actors, "num_gpus": 0, "num_cpus": 1, "workers": 0}


class ImageEmbedActor:
    """One Ray actor: the encoder loaded once, the shared step run on each block."""

    def __init__(
        self,
        spec: str,
        device: str,
        token_layer,
        workers: int,
        max_pixels: int,
        with_pixels: bool = False,
    ):
        import torch

        from xmr.retrieval.encoder import load_encoder

        torch.set_num_threads(max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1")))))
        self.encoder = load_encoder(spec, device)
        self.token_layer, self.workers, self.max_pixels = token_layer, workers, max_pixels
        self.with_pixels = with_pixels

    def __call__(self, block: dict) -> dict:
        paths = [str(p) for p in block["path"]]
        batches = list(
            embed_images(
                paths,
                self.encoder,
                self.token_layer,
                len(paths),
                self.workers,
                self.max_pixels,
                self.with_pixels,
            )
        )
        return image_columns(batches, np.asarray(block["position"], dtype=np.int64))


def image_columns(batches: list[ImageBatch], positions: np.ndarray) -> dict:
    """ImageBatches of one block -> a dict of equal-length columns (failed rows zeroed)."""
    images = [image for batch in batches for image in batch.images]
    good = [b.encoded for b in batches if b.encoded is not None]
    n = len(images)
    columns = {
        "position": positions[[image.position for image in images]],
        "error": np.array([image.error or "" for image in images], dtype=object),
        "width": np.array([image.width for image in images], dtype=np.int64),
        "height": np.array([image.height for image in images], dtype=np.int64),
        "format": np.array([image.format or "" for image in images], dtype=object),
        "taken_at": np.array(
            [image.taken_at.isoformat() if image.taken_at else "" for image in images],
            dtype=object,
        ),
        "encode_seconds": np.full(n, sum(b.encode_seconds for b in batches) / max(n, 1)),
    }
    if good:
        ok = np.array([image.error is None for image in images])
        vectors = np.concatenate([e.vectors for e in good])  # (G, D)
        columns["vector"] = _scatter(vectors, ok)  # (n, D)
        if good[0].tokens is not None:
            columns["tokens"] = _scatter(np.concatenate([e.tokens for e in good]), ok)
    return columns


def _scatter(rows: np.ndarray, ok: np.ndarray) -> np.ndarray:
    out = np.zeros((len(ok), *rows.shape[1:]), dtype=rows.dtype)
    out[ok] = rows
    return out


def batch_from_columns(columns: dict, first: int) -> ImageBatch:
    """Columns of one read-back batch -> the ImageBatch the local step would have given."""
    from xmr.retrieval.encoded import Encoded

    positions = np.asarray(columns["position"], dtype=np.int64)
    if not np.array_equal(positions, np.arange(first, first + len(positions))):
        raise RuntimeError("Ray returned the batches out of order")  # preserve_order is set
    images = [
        DecodedImage(
            position=int(position),
            pixels=None,
            width=int(width),
            height=int(height),
            format=str(fmt) or None,
            taken_at=datetime.fromisoformat(taken) if taken else None,
            error=str(error) or None,
        )
        for position, error, width, height, fmt, taken in zip(
            positions,
            columns["error"],
            columns["width"],
            columns["height"],
            columns["format"],
            columns["taken_at"],
            strict=True,
        )
    ]
    ok = np.array([image.error is None for image in images])
    encoded = None
    if ok.any():
        tokens = columns.get("tokens")
        encoded = Encoded(
            vectors=np.ascontiguousarray(columns["vector"][ok], dtype=np.float32),
            tokens=None if tokens is None else np.ascontiguousarray(tokens[ok]),
            lengths=None,
        )
    seconds = float(np.sum(columns["encode_seconds"]))
    return ImageBatch(images, encoded, seconds)


def ray_embed_images(
    executor, paths, encoder, token_layer, batch_size, workers, max_pixels, with_pixels=False
):
    """Executor.embed_images on Ray: ImageBatch per `batch_size` paths, in order."""
    columns = {"position": np.arange(len(paths), dtype=np.int64), "path": list(paths)}
    actor_args = {
        "spec": encoder.spec.canonical,
        "token_layer": token_layer,
        "max_pixels": max_pixels,
        "with_pixels": with_pixels,
    }
    first = 0
    for part in _run(executor, columns, ImageEmbedActor, actor_args, batch_size, workers):
        batch = batch_from_columns(part, first)
        first += len(batch.images)
        yield batch


class TextEncodeActor:
    """One Ray actor encoding blocks of texts with an encoder loaded once."""

    def __init__(self, spec: str, device: str, workers: int = 0):
        import torch

        from xmr.retrieval.encoder import load_encoder

        torch.set_num_threads(max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1")))))
        self.encoder = load_encoder(spec, device)

    def __call__(self, block: dict) -> dict:
        texts = [str(t) for t in block["text"]]
        (encoded,) = text_batches(self.encoder, texts, len(texts))
        columns = {
            "position": np.asarray(block["position"], dtype=np.int64),
            "vector": encoded.vectors,
            "length": encoded.lengths,
        }
        if encoded.tokens is not None:
            columns["tokens"] = encoded.tokens
        return columns


def ray_encode_texts(executor, texts: Sequence[str], encoder, batch_size: int) -> Iterator:
    """Encoded per `batch_size` texts, in order, encoded by an actor pool."""
    from xmr.retrieval.encoded import Encoded

    columns = {"position": np.arange(len(texts), dtype=np.int64), "text": list(texts)}
    actor_args = {"spec": encoder.spec.canonical}
    first = 0
    for part in _run(executor, columns, TextEncodeActor, actor_args, batch_size, 0):
        positions = np.asarray(part["position"], dtype=np.int64)
        if not np.array_equal(positions, np.arange(first, first + len(positions))):
            raise RuntimeError("Ray returned the batches out of order")
        first += len(positions)
        tokens = part.get("tokens")
        yield Encoded(
            vectors=np.ascontiguousarray(part["vector"], dtype=np.float32),
            tokens=None if tokens is None else np.ascontiguousarray(tokens),
            lengths=np.asarray(part["length"], dtype=np.int32),
        )


def _blocks(columns: dict, batch_size: int, actors: int) -> list:
    """pyarrow tables of whole batches: about four per actor, at most MAX_BLOCK_BATCHES."""
    import pyarrow as pa

    n = len(columns["position"])
    batches = -(-n // batch_size)
    rows = batch_size * max(1, min(MAX_BLOCK_BATCHES, batches // (4 * actors)))
    return [
        pa.table({name: values[start : start + rows] for name, values in columns.items()})
        for start in range(0, n, rows)
    ]


def _run(executor, columns: dict, actor_class, actor_args: dict, batch_size: int, workers: int):
    """Stream `columns` through a pool of `actor_class(**actor_args, device=, workers=)`,
    `batch_size` rows a call; yield numpy column dicts of `batch_size` rows, in input
    order. Shuts down a Ray it started itself."""
    if not len(columns["position"]):
        return
    started_here = connect(executor)
    ray = _ray()
    try:
        plan = pool_plan(executor, workers)
        blocks = _blocks(columns, batch_size, plan["actors"])
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        dataset = ray.data.from_arrow(blocks).map_batches(
            actor_class,
            batch_size=batch_size,
            batch_format="numpy",
            fn_constructor_kwargs={
                **actor_args,
                "device": "cuda" if plan["num_gpus"] else "cpu",
                "workers": plan["workers"],
            },
            compute=ray.data.ActorPoolStrategy(size=min(plan["actors"], len(blocks))),
            num_cpus=plan["num_cpus"],
            num_gpus=plan["num_gpus"],
        )
        yield from dataset.iter_batches(
            batch_size=batch_size, batch_format="numpy", prefetch_batches=2
        )
    finally:
        if started_here:
            ray.shutdown()


def ray_map_shards(executor):
    """A `map_shards` for index_types.build_tuned: each shard a Ray task (one CPU), its
    result fetched in order and released once merged. Workers read the vector store by
    path: on a multi-node cluster the index directory must be on storage every node
    mounts at the same path."""

    def run(function, jobs):
        started_here = connect(executor)
        ray = _ray()
        try:
            remote = ray.remote(num_cpus=1, max_retries=3)(function)
            refs = [remote.remote(*job) for job in jobs]
            while refs:
                yield ray.get(refs.pop(0))  # dropped from here once the caller merged it
        finally:
            if started_here:
                ray.shutdown()

    return run
