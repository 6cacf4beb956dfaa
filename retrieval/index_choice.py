"""Which FAISS index type a collection uses: the `auto` rule and the user's policy.

Pure arithmetic (no FAISS import), so `xmr --help` and argument errors stay instant.
The rule follows autofaiss's reasoning, owned here (autofaiss pins numpy<2):

  flat   exact; best below FLAT_LIMIT items (a scan of 100k x 512 floats is ~10 ms)
  hnsw   graph; fast and accurate while vectors + graph fit the memory budget, up
         to HNSW_LIMIT items (M=32, efConstruction=80: on the benchmark's photo-like
         mixture a 100k graph with efConstruction 40 needed efSearch 512 for recall@10
         0.95, with 80 it needs 256; at 1M a graph cheap enough to build on 2 cores
         (M=16, efConstruction=40) never reached 0.95)
  ivf    inverted lists over k-means cells; scales, and loads memory-mapped. Its
         nprobe can always reach the target (nprobe = nlist is exact search)
  ivfpq  IVF with product-quantised codes: what `auto` picks when even the raw
         vectors exceed `--max-memory`; exact re-ranking from the vector store
         (on disk) brings its recall back to the target

`auto` never keeps a configuration that misses recall@10 >= 0.95 at the size it is
built for: every build measures recall on held-out items while tuning its knobs
(index_types.build_tuned), and an HNSW graph that falls short is replaced by its
`fallback`, IVF (vector_index.build_to_target). `possible_choices` lists every type
`auto` can pick at a size (any budget): what benchmarks/bench_index.py verifies.

An index type that cannot be trained yet (IVF-PQ below PQ_MIN_TRAIN vectors, IVF on an
empty collection) is stood in for by flat until a later save has enough vectors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from xmr.retrieval.errors import InputError

INDEX_TYPES = ("flat", "hnsw", "ivf", "ivfpq")
POLICY_TYPES = ("auto", *INDEX_TYPES)
FLAT_LIMIT = 100_000
HNSW_LIMIT = 500_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
PQ_BITS = 8
PQ_MIN_TRAIN = 39 * (1 << PQ_BITS)  # FAISS warns below 39 training points per centroid
ID_BYTES = 8  # an int64 id per item in IDMap2 / inverted lists


@dataclass
class IndexChoice:
    type: str
    params: dict = field(default_factory=dict)  # m, ef_construction, nlist, pq_m ...
    reason: str = ""
    fallback: IndexChoice | None = None  # built instead if this one misses the target


def memory_estimate(index_type: str, n_items: int, dim: int, params: dict | None = None) -> int:
    """Bytes an index of this type holds in RAM (vectors or codes, graph, ids)."""
    params = params or {}
    if index_type == "flat":
        return n_items * (dim * 4 + ID_BYTES)
    if index_type == "hnsw":
        m = params.get("m", HNSW_M)
        return n_items * (dim * 4 + ID_BYTES + 2 * m * 4)  # ~2M neighbour ids on level 0
    if index_type == "ivf":
        return n_items * (dim * 4 + ID_BYTES)
    pq_m = params.get("pq_m", pq_subquantizers(dim))
    return n_items * (pq_m * PQ_BITS // 8 + ID_BYTES)


def choose_index_type(n_items: int, dim: int, max_memory_bytes: int | None = None) -> IndexChoice:
    """The `auto` rule; each branch is tested at its documented size in test_index_types."""
    budget = max_memory_bytes
    fits = budget is None or memory_estimate("flat", n_items, dim) <= budget
    if budget is not None and not fits and n_items >= PQ_MIN_TRAIN:
        pq_m = _pq_m_within(budget, n_items, dim)

        return IndexChoice(
            "ivfpq",
            {"nlist": nlist_for(n_items), "pq_m": pq_m},
            f"{n_items} x {dim} float32 vectors exceed the memory budget of {budget} bytes: "
            f"compressed to {pq_m} bytes each",
        )
    if n_items < FLAT_LIMIT:
        return IndexChoice("flat", {}, f"{n_items} < {FLAT_LIMIT} items: exact search is fast")
    hnsw_fits = budget is None or memory_estimate("hnsw", n_items, dim) <= budget
    ivf = IndexChoice(
        "ivf",
        {"nlist": nlist_for(n_items)},
        f"{n_items} items: inverted lists (memory-mapped when searching)",
    )
    if n_items < HNSW_LIMIT and hnsw_fits:
        return IndexChoice(
            "hnsw", hnsw_params(), "vectors and graph fit in memory: HNSW", fallback=ivf
        )
    return ivf


def hnsw_params() -> dict:
    return {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION}


def possible_choices(n_items: int, dim: int) -> list[IndexChoice]:
    """The configurations `auto` picks for `n_items`: with no budget, with a budget just
    under the raw vectors (IVF-PQ at its largest code), and one between vectors and graph."""
    flat, graph = memory_estimate("flat", n_items, dim), memory_estimate("hnsw", n_items, dim)
    choices: dict[str, IndexChoice] = {}
    for budget in (None, int(flat * 0.99), (flat + graph) // 2):
        choice = choose_index_type(n_items, dim, budget)
        choices.setdefault(choice.type, choice)
    return list(choices.values())


def resolve_choice(
    requested: str, n_items: int, dim: int, max_memory_bytes: int | None = None
) -> IndexChoice:
    """The index a collection of `n_items` should have under policy type `requested`."""
    check_index_type(requested)
    if requested == "auto":
        return choose_index_type(n_items, dim, max_memory_bytes)
    if requested == "ivfpq" and n_items < PQ_MIN_TRAIN:
        return IndexChoice(
            "flat", {}, f"ivfpq needs {PQ_MIN_TRAIN} vectors to train; flat until then"
        )
    if requested in ("ivf", "ivfpq") and n_items == 0:
        return IndexChoice("flat", {}, f"{requested} needs vectors to train; flat until then")
    params = hnsw_params() if requested == "hnsw" else {}
    if requested in ("ivf", "ivfpq"):
        params["nlist"] = nlist_for(n_items)
    if requested == "ivfpq":
        params["pq_m"] = pq_subquantizers(dim)
    return IndexChoice(requested, params, f"index type {requested} as asked")


def check_index_type(name: str) -> str:
    if name not in POLICY_TYPES:
        raise InputError(f"unknown index type '{name}'; use one of: " + ", ".join(POLICY_TYPES))
    return name


def nlist_for(n_items: int) -> int:
    """~2 sqrt(N) cells, with at least 39 training points per cell (FAISS's own warning).

    2 sqrt(N) rather than autofaiss's 4-16 sqrt(N): k-means over 4,000 cells of 512-d
    vectors takes minutes on a few cores, and the tuned nprobe makes up the difference.
    """
    return int(max(1, min(round(2 * math.sqrt(max(n_items, 1))), n_items // 39)))


def pq_subquantizers(dim: int) -> int:
    """The most PQ sub-quantisers (bytes per vector) dividing `dim` into >= 4 dims, <= 64.

    Sub-vectors of fewer than 4 dims cost k-means time (one 256-centroid k-means each)
    for little accuracy; exact re-ranking recovers the rest.
    """
    for m in (64, 48, 32, 16, 8, 4, 2):
        if dim % m == 0 and dim // m >= 4:
            return m
    return 1


def _pq_m_within(budget: int, n_items: int, dim: int) -> int:
    """The largest PQ code whose index fits the budget (the smallest if none does)."""
    options = [m for m in (64, 48, 32, 16, 8) if dim % m == 0 and m <= pq_subquantizers(dim)]
    if not options:
        return pq_subquantizers(dim)
    for m in options:
        if memory_estimate("ivfpq", n_items, dim, {"pq_m": m}) <= budget:
            return m
    return options[-1]


@dataclass
class IndexPolicy:
    """What the user asked for (`--index-type`, `--max-memory`), kept in the manifest."""

    type: str = "auto"
    max_memory: int | None = None  # bytes

    def as_dict(self) -> dict:
        return {"type": self.type, "max_memory": self.max_memory}

    @classmethod
    def from_dict(cls, data: dict | None) -> IndexPolicy:
        data = data or {}
        return cls(check_index_type(data.get("type", "auto")), data.get("max_memory"))

    def choose(self, n_items: int, dim: int) -> IndexChoice:
        return resolve_choice(self.type, n_items, dim, self.max_memory)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str | int | None) -> int | None:
    """'4G', '512M', '1.5GiB', '1000000' -> bytes (binary units: 1K = 1024)."""
    if text is None or isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise InputError(f"'{text}' is not a size; write e.g. 4G, 512M or a number of bytes")
    number, unit = float(match.group(1)), match.group(2).lower()
    value = int(number * 1024 ** " kmgt".index(unit or " "))
    if value <= 0:
        raise InputError(f"a memory budget must be positive, not '{text}'", setting="max_memory")
    return value


# -- upkeep: what a save does to an index whose collection has changed -------------------
REBUILD_GROWTH = 4  # IVF cells are re-trained once the collection has grown 4x
RETUNE_DRIFT = 2  # knobs are re-tuned once it has grown or shrunk 2x since tuning
TOMBSTONE_LIMIT = 0.25  # HNSW is rebuilt once a quarter of its nodes are tombstones


def plan_upkeep(
    policy: IndexPolicy,
    dim: int,
    kind: str,
    n_live: int,
    built_n: int,
    n_tombstones: int = 0,
    tuned: bool = True,
) -> tuple[str, IndexChoice]:
    """-> ("keep" | "rebuild" | "retune", the choice for `n_live` items).

    `auto` changes type only while the collection grows past its last build, so
    deletions never make an index flap between types at a threshold (`xmr compact`
    decides afresh); an explicit type is applied at once.
    """
    choice = policy.choose(n_live, dim)
    stand_in = choice.fallback is not None and kind == choice.fallback.type  # built instead
    if choice.type != kind and not stand_in and (policy.type != "auto" or n_live > built_n):
        return "rebuild", choice
    if kind in ("ivf", "ivfpq") and n_live > REBUILD_GROWTH * max(built_n, 1):
        return "rebuild", choice
    if kind == "hnsw" and n_tombstones > TOMBSTONE_LIMIT * (n_live + n_tombstones):
        return "rebuild", choice
    drifted = n_live > RETUNE_DRIFT * built_n or n_live * RETUNE_DRIFT < built_n
    if kind != "flat" and n_live > 0 and (not tuned or drifted):
        # HNSW knobs can only be tuned honestly while building (held-out items): rebuild.
        return ("rebuild" if kind == "hnsw" else "retune"), choice
    return "keep", choice
