"""FAISS index types: the auto rule, recall of every approximate type against exact search,
tombstones, repair of a lagging file, `xmr compact` (rebuild and type switch) and
memory-mapped loading in another process. Real FAISS, real tiny encoder and images."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, db_rows, index_with, indexed_paths, make_images, stored_vectors

from xmr.retrieval.errors import InputError
from xmr.retrieval.index_choice import (
    FLAT_LIMIT,
    HNSW_LIMIT,
    PQ_MIN_TRAIN,
    IndexPolicy,
    choose_index_type,
    memory_estimate,
    parse_size,
    plan_upkeep,
    possible_choices,
    resolve_choice,
)
from xmr.retrieval.index_types import build_index, exact_top_k, overlap_recall
from xmr.retrieval.library import Library
from xmr.retrieval.vector_index import VectorIndex

DIM = 64
N_ITEMS = 50_000
GiB = 1024**3


def clustered(n: int, dim: int, seed: int, centres: int = 1000) -> np.ndarray:
    """Unit vectors from a Gaussian mixture on the sphere: (n, dim) float32.

    Noise of norm ~1 around unit centres: neighbours share a cluster but are not
    trivially separable from the next cluster over (uniform noise has no neighbours).
    """
    rng = np.random.default_rng(0)  # the same centres for every call
    centre = rng.normal(size=(centres, dim))
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    x = centre[rng.integers(0, centres, n)] + rng.normal(0, 1 / np.sqrt(dim), size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# -- the auto rule -----------------------------------------------------------------------
def test_auto_picks_each_type_at_the_documented_sizes():
    assert choose_index_type(0, 512).type == "flat"
    assert choose_index_type(FLAT_LIMIT - 1, 512).type == "flat"
    assert choose_index_type(FLAT_LIMIT, 512).type == "hnsw"
    assert choose_index_type(HNSW_LIMIT - 1, 512).type == "hnsw"
    big = choose_index_type(HNSW_LIMIT, 512)
    assert big.type == "ivf" and big.params["nlist"] > 1000

    # A budget the raw vectors exceed: compressed codes, as many bytes as fit.
    pq = choose_index_type(1_000_000, 512, max_memory_bytes=1 * GiB)
    assert pq.type == "ivfpq" and pq.params["pq_m"] == 64
    assert memory_estimate("ivfpq", 1_000_000, 512, pq.params) <= 1 * GiB
    tight = choose_index_type(10_000_000, 512, max_memory_bytes=200 * 1024**2)
    assert tight.type == "ivfpq" and tight.params["pq_m"] < 64
    # Vectors fit but the graph does not: IVF (memory-mapped), not HNSW.
    n = 500_000
    budget = (memory_estimate("flat", n, 512) + memory_estimate("hnsw", n, 512)) // 2
    assert choose_index_type(n, 512, budget).type == "ivf"
    # Too few to train PQ: flat, whatever the budget.
    assert choose_index_type(PQ_MIN_TRAIN - 1, 512, max_memory_bytes=1).type == "flat"


def test_possible_choices_are_every_configuration_auto_can_pick():
    assert [c.type for c in possible_choices(10_000, 512)] == ["flat", "ivfpq"]
    assert [c.type for c in possible_choices(FLAT_LIMIT, 512)] == ["hnsw", "ivfpq", "ivf"]
    assert [c.type for c in possible_choices(HNSW_LIMIT, 512)] == ["ivf", "ivfpq"]
    hnsw = possible_choices(FLAT_LIMIT, 512)[0]
    assert hnsw.fallback is not None and hnsw.fallback.type == "ivf"


def test_an_hnsw_graph_that_misses_the_target_is_replaced_by_its_fallback():
    vectors = clustered(3000, 16, seed=3, centres=50)
    choice = choose_index_type(FLAT_LIMIT, 16)  # auto's HNSW, with IVF as its fallback
    # 1.01 is out of any graph's reach: the build must not keep the graph.
    index = VectorIndex.build(choice, 16, np.arange(3000), vectors.__getitem__, 1.01)
    assert index.kind == "ivf"
    assert index.search_params["replaced"]["type"] == "hnsw"
    assert index.search_params["replaced"]["recall_at_10"] < 1.01
    # An explicit --index-type hnsw has no fallback: it stays what the user asked for.
    explicit = resolve_choice("hnsw", 3000, 16)
    assert VectorIndex.build(explicit, 16, np.arange(3000), vectors.__getitem__, 1.01).kind == (
        "hnsw"
    )
    # The IVF that stands in for auto's HNSW is kept as the collection grows a little.
    grown = plan_upkeep(IndexPolicy(), 16, "ivf", FLAT_LIMIT + 100, built_n=FLAT_LIMIT + 10)
    assert grown[0] == "keep"


def test_explicit_types_stand_in_with_flat_until_trainable():
    assert resolve_choice("ivfpq", PQ_MIN_TRAIN - 1, 64).type == "flat"
    assert resolve_choice("ivfpq", PQ_MIN_TRAIN, 64).type == "ivfpq"
    assert resolve_choice("ivf", 0, 64).type == "flat"
    assert resolve_choice("ivf", 12, 64).params["nlist"] == 1
    assert resolve_choice("hnsw", 0, 64).type == "hnsw"
    with pytest.raises(InputError, match="unknown index type 'annoy'.*auto, flat, hnsw"):
        resolve_choice("annoy", 10, 64)


def test_sizes_parse_in_binary_units():
    assert parse_size("4G") == 4 * GiB
    assert parse_size("512M") == 512 * 1024**2
    assert parse_size("1.5GiB") == int(1.5 * GiB)
    assert parse_size("1000") == 1000
    for bad in ("four gigs", "-1G", "0"):
        with pytest.raises(InputError):
            parse_size(bad)


def test_upkeep_switches_type_on_growth_never_on_shrinking():
    auto = IndexPolicy()
    grown = plan_upkeep(auto, 512, "flat", FLAT_LIMIT + 10, built_n=FLAT_LIMIT - 10)
    assert grown[0] == "rebuild" and grown[1].type == "hnsw"
    shrunk = plan_upkeep(auto, 512, "hnsw", FLAT_LIMIT - 10, built_n=FLAT_LIMIT + 10)
    assert shrunk[0] == "keep"
    assert plan_upkeep(IndexPolicy("ivf"), 64, "flat", 100, 100)[0] == "rebuild"
    assert plan_upkeep(IndexPolicy("ivf"), 64, "ivf", 401, 100)[0] == "rebuild"  # re-train
    assert plan_upkeep(IndexPolicy("ivf"), 64, "ivf", 201, 100)[0] == "retune"
    assert plan_upkeep(IndexPolicy("ivf"), 64, "ivf", 150, 100)[0] == "keep"
    assert plan_upkeep(IndexPolicy("ivf"), 64, "ivf", 150, 100, tuned=False)[0] == "retune"
    assert plan_upkeep(IndexPolicy("hnsw"), 64, "hnsw", 70, 100, n_tombstones=30)[0] == "rebuild"
    assert plan_upkeep(IndexPolicy("hnsw"), 64, "hnsw", 80, 100, n_tombstones=20)[0] == "keep"


# -- recall of the approximate types -----------------------------------------------------
@pytest.fixture(scope="module")
def clustered_set():
    """50k stored vectors under ids that are not row positions, and 500 held-out queries."""
    vectors = clustered(N_ITEMS, DIM, seed=1)
    ids = np.arange(N_ITEMS, dtype=np.int64) * 3 + 7
    position = {int(i): p for p, i in enumerate(ids)}

    def read(wanted):
        return vectors[[position[int(i)] for i in wanted]]

    queries = clustered(500, DIM, seed=2)
    _, truth = exact_top_k(queries, ids, read, 10)
    return ids, read, queries, truth


@pytest.mark.slow
@pytest.mark.parametrize("index_type", ["hnsw", "ivf", "ivfpq"])
def test_recall_at_10_reaches_095_against_exact(clustered_set, index_type):
    ids, read, queries, truth = clustered_set
    choice = resolve_choice(index_type, len(ids), DIM)
    assert choice.type == index_type
    index = VectorIndex.build(choice, DIM, ids, read)
    assert index.kind == index_type and index.live_count == N_ITEMS
    assert index.search_params["recall_at_10"] >= 0.95  # measured while tuning
    _, found = index.search(queries, 10)
    assert overlap_recall(found, truth) >= 0.95  # and on queries it never saw
    if index_type == "ivfpq":
        # PQ codes alone fall short; exact re-scoring of k_factor x k candidates does not.
        assert index.search_params["k_factor"] > 1


def test_matrix_index_for_benchmarks_is_tuned_too():
    """`build_index` (ids = row positions), used by `xmr bench` and the benchmarks."""
    vectors = clustered(5000, DIM, seed=3)
    queries = clustered(500, DIM, seed=4)
    _, truth = exact_top_k(queries, np.arange(5000), vectors.__getitem__, 10)
    for index_type in ("flat", "ivf", "auto"):
        tuned = build_index(vectors, index_type)
        _, found = tuned.search(queries, 10)
        assert overlap_recall(found, truth) >= 0.95, index_type


# -- tombstones and repair ---------------------------------------------------------------
@pytest.fixture
def small_hnsw():
    vectors = clustered(3000, DIM, seed=5)
    ids = np.arange(3000, dtype=np.int64) + 1
    read = lambda wanted: vectors[np.asarray(wanted) - 1]  # noqa: E731
    index = VectorIndex.build(resolve_choice("hnsw", 3000, DIM), DIM, ids, read)
    return index, ids, read


def test_tombstoned_ids_never_come_back(small_hnsw, tmp_path):
    index, ids, read = small_hnsw
    gone = ids[::10]  # 300 ids
    index.remove(gone)
    assert index.ntotal == 3000 and index.live_count == 2700
    assert not set(gone.tolist()) & set(index.ids().tolist())

    def check(idx):
        # Each deleted item's own vector is its best match: the strongest pull there is.
        _, found = idx.search(read(gone), 10)
        assert (found >= 0).all() and not np.isin(found, gone).any()
        _, found = idx.search(read(gone[:20]), 5, allowed_ids=np.concatenate([gone, ids[1:40]]))
        assert (found >= 0).all() and not np.isin(found, gone).any()

    check(index)
    index.save(tmp_path / "i.faiss", generation=1)
    loaded = VectorIndex.load(tmp_path / "i.faiss", DIM, read)
    assert loaded.kind == "hnsw" and loaded.tombstones.tolist() == gone.tolist()
    assert loaded.search_params == index.search_params
    check(loaded)


def test_sync_repairs_a_lagging_hnsw_file(small_hnsw):
    index, ids, read = small_hnsw
    index.remove(ids[:5])  # deleted, then the deletion was rolled back in the database
    expected = np.concatenate([ids[:2900], [5000, 5001]])  # 100 removed, 2 new
    extra_vectors = clustered(2, DIM, seed=6)

    def read_all(wanted):
        return np.stack([extra_vectors[i - 5000] if i >= 5000 else read([i])[0] for i in wanted])

    added, removed = index.sync(expected, read_all)
    assert (added, removed) == (2 + 5, 100)
    assert index.ids().tolist() == expected.tolist()
    _, found = index.search(extra_vectors, 1)
    assert found[:, 0].tolist() == [5000, 5001]
    _, found = index.search(read(ids[2900:]), 10)
    assert not np.isin(found, ids[2900:]).any()


def test_filter_through_the_index_returns_k_inside_the_filter(small_hnsw):
    """Forced through the graph (no exact shortcut), a 1% filter still yields k."""
    index, ids, read = small_hnsw
    index.exact_filter_max = 0
    rng = np.random.default_rng(0)
    allowed = np.sort(rng.choice(ids, 30, replace=False))
    queries = clustered(20, DIM, seed=7)
    _, found = index.search(queries, 10, allowed_ids=allowed)
    assert (found >= 0).sum(axis=1).tolist() == [10] * 20
    assert np.isin(found, allowed).all()
    _, exact = exact_top_k(queries, allowed, read, 10)
    assert overlap_recall(found, exact) >= 0.9
    _, found = index.search(queries, 10, allowed_ids=allowed[:4])
    assert (found >= 0).sum(axis=1).tolist() == [4] * 20


# -- a real index: compact, switching type, memory-mapped readers ------------------------
@pytest.fixture
def hnsw_library(encoder, tmp_path):
    """40 real images indexed under --index-type hnsw, then 8 of them deleted."""
    folder = tmp_path / "photos"
    files = make_images(folder, 30) + make_images(folder / "jpg", 10, 500, ".jpg")
    index_dir = tmp_path / "index"
    with Library.open_or_create(index_dir, encoder, index_type="hnsw") as library:
        assert library.policy.type == "hnsw"
    index_with(index_dir, encoder, [folder])
    for path in files[::5]:
        path.unlink()
    summary = index_with(index_dir, encoder, [folder])
    assert summary.removed == 8
    return folder, index_dir


def _all_searchable(index_dir):
    """Every indexed image comes back first for its own stored vector."""
    paths = indexed_paths(index_dir)
    ids = np.array(sorted(paths.values()))
    with Library.open(index_dir) as library:
        scores, found = library.images.index.search(stored_vectors(index_dir, ids), 1)
    assert found[:, 0].tolist() == ids.tolist()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_compact_drops_tombstones_and_switches_type_without_reencoding(cli, hnsw_library):
    folder, index_dir = hnsw_library
    with Library.open(index_dir) as library:
        index = library.images.index
        assert (index.kind, index.ntotal, index.live_count, len(index.tombstones)) == (
            "hnsw",
            40,
            32,
            8,
        )
        deleted = index.tombstones.copy()
        _, found = index.search(library.images.vectors.read(deleted), 10)
        assert not np.isin(found, deleted).any()
    live_ids = np.array(sorted(indexed_paths(index_dir).values()))
    live_vectors = stored_vectors(index_dir, live_ids)

    result = cli("compact", "--index", index_dir, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["images"]
    assert report["before"]["tombstones"] == 8
    assert (report["after"]["type"], report["after"]["ntotal"]) == ("hnsw", 32)
    with Library.open(index_dir) as library:
        assert library.images.index.ntotal == len(db_rows(index_dir)) == 32
        assert len(library.images.index.tombstones) == 0
    _all_searchable(index_dir)

    for index_type in ("ivf", "flat", "ivfpq", "hnsw"):
        result = cli("compact", "--index", index_dir, "--index-type", index_type, "--json")
        assert result.exit_code == 0, result.output
        want = "flat" if index_type == "ivfpq" else index_type  # 32 < PQ_MIN_TRAIN
        assert json.loads(result.stdout)["images"]["after"]["type"] == want
        _all_searchable(index_dir)
        with Library.open(index_dir) as library:
            assert library.policy.type == index_type  # kept for later runs
    np.testing.assert_array_equal(
        stored_vectors(index_dir, live_ids), live_vectors
    )  # not re-encoded

    result = cli("compact", "--index", index_dir, "--index-type", "annoy")
    assert result.exit_code == 1 and "unknown index type 'annoy'" in result.output


def test_index_type_option_applies_on_the_next_run(cli, encoder, tiny_spec, tmp_path):
    folder = tmp_path / "photos"
    make_images(folder, 6)
    args = ("--index", tmp_path / "index", "--model", tiny_spec, "--workers", "0")
    assert cli("index", folder, *args, "--index-type", "ivf", "--max-memory", "1G").exit_code == 0
    info = json.loads(cli("info", "--json", "--index", tmp_path / "index").stdout)
    assert info["index"]["policy"] == {"type": "ivf", "max_memory": GiB}
    assert info["index"]["images"]["type"] == "ivf" and info["faiss"]["images"] == 6
    assert "recall_at_10" in info["index"]["images"]["search_params"]
    assert cli("index", folder, *args, "--index-type", "flat").exit_code == 0
    info = json.loads(cli("info", "--json", "--index", tmp_path / "index").stdout)
    assert info["index"]["images"]["type"] == "flat"
    assert info["index"]["policy"] == {"type": "flat", "max_memory": GiB}
    result = cli("index", folder, *args, "--max-memory", "lots")
    assert result.exit_code == 1 and "'lots' is not a size" in result.output


def test_a_lagging_faiss_file_is_repaired_on_open(encoder, hnsw_library, tmp_path):
    """An HNSW file from before some deletions and additions (a killed run's leftovers)."""
    folder, index_dir = hnsw_library
    stale = tmp_path / "stale"
    stale.mkdir()
    for name in ("images.faiss", "images.faiss.json"):
        shutil.copy(index_dir / name, stale / name)
    removed = sorted(folder.glob("img000*.png"))[:3]
    for path in removed:
        path.unlink()
    make_images(folder / "new", 3, 900)
    index_with(index_dir, encoder, [folder])
    for name in ("images.faiss", "images.faiss.json"):
        shutil.copy(stale / name, index_dir / name)

    paths = indexed_paths(index_dir)
    with Library.open(index_dir) as library:
        assert set(library.images.index.ids().tolist()) == set(paths.values())
    _all_searchable(index_dir)
    with Library.open(index_dir) as library:
        queries = library.images.vectors.read(np.array(sorted(paths.values())))
        _, found = library.images.index.search(queries, 10)
    assert np.isin(found[found >= 0], list(paths.values())).all()


def test_ivf_index_loads_memory_mapped_in_another_process(cli, hnsw_library):
    _, index_dir = hnsw_library
    assert cli("compact", "--index", index_dir, "--index-type", "ivf").exit_code == 0
    ids = sorted(indexed_paths(index_dir).values())
    script = f"""
import json, faiss, numpy as np
from xmr.retrieval.library import Library
with Library.open({str(index_dir)!r}) as library:
    index = library.images.index
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index.index).invlists)
    ids = np.array({ids})
    _, found = index.search(library.images.vectors.read(ids), 1)
    print(json.dumps({{"kind": index.kind, "mmapped": index.mmapped,
                      "lists": type(lists).__name__, "self": found[:, 0].tolist()}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen == {"kind": "ivf", "mmapped": True, "lists": "OnDiskInvertedLists", "self": ids}
    # A writer reads the same file into memory, so it can add to it.
    with Library.open(index_dir, writable=True) as library:
        assert library.images.index.kind == "ivf" and not library.images.index.mmapped
