"""Where the decode -> encode step runs: in this process (`local`) or on a Ray cluster.

Either way the caller gets the same stream back, in input order and in batches of the
caller's batch size, so the single writer (indexer/images.py, indexer/texts.py) commits
exactly the same rows, ids and vectors whichever executor produced them. Parsing
`--executor` imports nothing; Ray is imported only when a Ray executor runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from xmr.retrieval.embedding import ImageBatch, embed_images, text_batches
from xmr.retrieval.errors import InputError

EXECUTOR_HELP = (
    "Where decoding and encoding run: 'local' (this process) or 'ray' (a local Ray started "
    "for this run), 'ray:ADDRESS' (an existing cluster, e.g. ray:auto or ray:10.0.0.5:6379)."
)


@dataclass(frozen=True)
class Executor:
    kind: str = "local"  # "local" | "ray"
    address: str | None = None  # Ray cluster address; None starts a local Ray
    actors: int | None = None  # encoder actors (None: one per GPU, else per CPU)
    num_cpus: int | None = None  # CPUs of the local Ray started without an address

    def embed_images(
        self,
        paths: Sequence[str],
        encoder,
        token_layer: int | None,
        batch_size: int,
        workers: int,
        max_pixels: int,
        with_pixels: bool = False,
    ) -> Iterator[ImageBatch]:
        """ImageBatch per `batch_size` paths, in order (retrieval.embedding.embed_images)."""
        args = (paths, encoder, token_layer, batch_size, workers, max_pixels, with_pixels)
        if self.kind == "local":
            return embed_images(*args)
        from xmr.indexer.ray_executor import ray_embed_images

        return ray_embed_images(self, *args)

    def encode_texts(self, texts: Sequence[str], encoder, batch_size: int) -> Iterator:
        """Encoded per `batch_size` texts, in order (retrieval.embedding.text_batches)."""
        if self.kind == "local":
            return text_batches(encoder, texts, batch_size)
        from xmr.indexer.ray_executor import ray_encode_texts

        return ray_encode_texts(self, texts, encoder, batch_size)

    def map_shards(self):
        """How a sharded index build runs its shards (index_types.build_tuned): None for
        one after another in this process, Ray tasks on a Ray executor."""
        if self.kind == "local":
            return None
        from xmr.indexer.ray_executor import ray_map_shards

        return ray_map_shards(self)


LOCAL = Executor()

OPENMP_WAIT_POLICY = "OMP_WAIT_POLICY"


def let_idle_threads_sleep() -> None:
    """Before torch loads: the encoder's OpenMP threads sleep while they wait for work
    instead of spinning (OMP_WAIT_POLICY=PASSIVE), unless the user chose otherwise.

    Indexing decodes in worker processes on the same cores as the encoder's threads. A
    spinning thread holds a core that a decoder needs, and a thread that finds its sibling
    descheduled spins at every barrier of every operator: on a few shared cores that
    costs the tower several times its speed. The kernels are the same, so are the vectors.
    OpenMP reads the variable when torch loads: set later (torch already imported, as in a
    server or a test run) it changes nothing, and it is then left unset."""
    if "torch" not in sys.modules:
        os.environ.setdefault(OPENMP_WAIT_POLICY, "PASSIVE")


def parse_executor(text: str | Executor | None) -> Executor:
    """'local' | 'ray' | 'ray:ADDRESS' -> Executor; raises InputError naming the choices."""
    if text is None or isinstance(text, Executor):
        return text or LOCAL
    kind, _, address = text.strip().partition(":")
    if kind == "local" and not address:
        return LOCAL
    if kind == "ray":
        return Executor("ray", address.strip() or None)
    raise InputError(
        f"unknown executor '{text}'; use local, ray (a local Ray) or ray:ADDRESS "
        "(e.g. ray:auto, ray:10.0.0.5:6379)"
    )
