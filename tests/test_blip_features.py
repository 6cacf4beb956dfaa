"""A pretrained matcher's candidate features stay right: kept rows belong to their id and
content through re-index, delete, compact and a killed pass; the search-time cache never
serves a stale feature; the CLI and the policy say which re-ranker ran and how to get one."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from blip_fixtures import save_tiny_blip, write_photos
from conftest import besides_random_weights, make_image, run_xmr
from PIL import Image


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip")


def _index(index_dir, folder, tiny_spec, reranker, form="fp16"):
    from xmr.engine.writes import index_images

    return index_images(index_dir, [folder], model=tiny_spec, reranker=reranker, feature_form=form)


def _rows(index_dir):
    """{id: (path, content key)} of the indexed images."""
    from xmr.retrieval.library import Library
    from xmr.retrieval.matcher_features import content_key

    with Library.open(index_dir) as library:
        return {i: (p, content_key(h)) for i, p, h in library.db.indexed_images()}


def _kept(index_dir, ids, keys):
    from xmr.retrieval.library import Library

    with Library.open(index_dir) as library:
        kept = library.images.kept
        return kept.read(np.asarray(ids), np.asarray(keys))


def _vision_of(path, matcher):
    pixels = matcher.preprocess(Image.open(path).convert("RGB"))[None]
    return matcher.vision_features(pixels)[0]


@pytest.fixture(scope="module")
def matcher(blip_folder):
    from xmr.retrieval.blip_itm import load_matcher
    from xmr.retrieval.matcher_names import matcher_source

    return load_matcher(matcher_source(str(blip_folder)), "cpu")


def test_kept_rows_follow_index_delete_change_and_compact(
    tmp_path, tiny_spec, blip_folder, matcher
):
    photos = tmp_path / "photos"
    paths = write_photos(photos, 6, seed=1)
    index = tmp_path / "idx"
    _index(index, photos, tiny_spec, str(blip_folder), form="fp32")
    rows = _rows(index)
    ids = sorted(rows)
    features, found = _kept(index, ids, [rows[i][1] for i in ids])
    assert found.all()
    for i, row in zip(ids, features, strict=True):  # each row is its own file's tokens
        np.testing.assert_allclose(row, _vision_of(rows[i][0], matcher), atol=1e-5)

    paths[0].unlink()  # deleted
    make_image(paths[1], seed=99, size=(50, 40))  # changed: a new id for new content
    os.utime(paths[1], ns=(1, 1))
    _index(index, photos, tiny_spec, "auto", form="fp32")  # auto keeps what the index keeps
    after = _rows(index)
    assert ids[0] not in after and ids[1] not in after
    new_id = max(after)
    assert after[new_id][0] == str(paths[1].resolve())
    features, found = _kept(index, sorted(after), [after[i][1] for i in sorted(after)])
    assert found.all()
    np.testing.assert_allclose(features[-1], _vision_of(paths[1], matcher), atol=1e-5)
    # the old id's row, were anyone to ask for it with the new content, is not served
    _, stale = _kept(index, [ids[1]], [after[new_id][1]])
    assert not stale[0]

    from xmr.engine.writes import compact_index

    compact_index(index)
    features, found = _kept(index, sorted(after), [after[i][1] for i in sorted(after)])
    assert found.all()
    _, dead = _kept(index, [ids[0]], [rows[ids[0]][1]])
    assert not dead[0]  # punched out with the other dead records


def test_a_killed_pass_leaves_missing_rows_that_the_next_run_fills(
    tmp_path, tiny_spec, blip_folder
):
    from xmr.retrieval.matcher_features import KEYS_FILE

    photos = tmp_path / "photos"
    write_photos(photos, 5, seed=2)
    index = tmp_path / "idx"
    _index(index, photos, tiny_spec, str(blip_folder))
    rows = _rows(index)
    ids = sorted(rows)
    # A pass killed after the rows of the last two images but before their keys:
    keys = np.memmap(index / KEYS_FILE, dtype=np.int64, mode="r+").reshape(-1, 2)
    keys[ids[-2:]] = 0
    keys.flush()
    del keys
    _, found = _kept(index, ids, [rows[i][1] for i in ids])
    assert found.tolist() == [True, True, True, False, False]

    from xmr.engine.engine import Engine

    answer = Engine(index, "cpu", str(blip_folder)).search("a red dog", k=5, candidates=5)
    assert answer.reranked and len(answer.hits) == 5  # the missing two computed on demand

    summary = _index(index, photos, tiny_spec, str(blip_folder))
    assert not besides_random_weights(summary.notices)
    _, found = _kept(index, ids, [rows[i][1] for i in ids])
    assert found.all()


def _keys_written(index_dir) -> int:
    from xmr.retrieval.matcher_features import KEYS_FILE

    try:
        keys = np.fromfile(index_dir / KEYS_FILE, dtype=np.int64).reshape(-1, 2)
    except (OSError, ValueError):
        return 0
    return int((keys[:, 0] != 0).sum())


def test_a_real_sigkill_in_the_feature_pass_loses_no_row_and_serves_no_wrong_one(
    tmp_path, tiny_spec, blip_folder, matcher
):
    import subprocess

    from conftest import XMR, xmr_env
    from faults import sigkill_when

    photos = tmp_path / "photos"
    write_photos(photos, 192, seed=4)  # six batches of the pass: room to land in the middle
    index = tmp_path / "idx"
    args = ["index", photos, "--index", index, "--model", tiny_spec, "--workers", "0"]
    proc = subprocess.Popen(
        [str(XMR), *map(str, args), "--reranker", str(blip_folder), "--quiet"],
        env=xmr_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sigkill_when(proc, lambda: _keys_written(index) > 0, "a batch of kept features")
    written = _keys_written(index)
    assert 0 < written < 192  # killed in the middle of the pass

    rows = _rows(index)
    ids = sorted(rows)
    features, found = _kept(index, ids, [rows[i][1] for i in ids])
    assert 0 < found.sum() < len(ids)
    for i, row, present in zip(ids, features, found, strict=True):
        if present:  # a row that is served is its own file's tokens, whole
            np.testing.assert_allclose(row, _vision_of(rows[i][0], matcher), atol=2e-2)

    result = run_xmr(*args, "--reranker", str(blip_folder), "--json")
    assert result.returncode == 0, result.stderr
    rows = _rows(index)
    ids = sorted(rows)
    assert len(ids) == 192
    features, found = _kept(index, ids, [rows[i][1] for i in ids])
    assert found.all()
    for i in ids[:: len(ids) // 8]:  # a sample, read back after the resumed pass
        np.testing.assert_allclose(
            features[ids.index(i)], _vision_of(rows[i][0], matcher), atol=2e-2
        )


def test_search_time_cache_is_keyed_by_content_and_capped(
    tmp_path, tiny_spec, blip_folder, matcher
):
    from xmr.engine.engine import Engine
    from xmr.retrieval.matcher_cache import CACHE_DIR

    photos = tmp_path / "photos"
    paths = write_photos(photos, 4, seed=5)
    index = tmp_path / "idx"
    _index(index, photos, tiny_spec, "none")
    text = "a green circle"
    first = Engine(index, "cpu", str(blip_folder)).search(text, k=4, candidates=4)
    cached = sorted((index / CACHE_DIR).glob("*/*.npy"))
    assert len(cached) == 4
    # A file changed on disk after indexing: its cached tokens are not served again.
    target = paths[2]
    hit = next(h for h in first.hits if h.path == str(target.resolve()))
    make_image(target, seed=123, size=(60, 60))
    engine = Engine(index, "cpu", str(blip_folder))
    engine.reranker().matcher.settings.stage1_weight = 0.0
    again = engine.search(text, k=4, candidates=4)
    fresh = next(h for h in again.hits if h.id == hit.id)
    ids, mask = matcher.text_inputs([text])
    want = matcher.itm_logits(ids, mask, _vision_of(target, matcher)[None])[0]
    assert abs(fresh.rerank_logit - want) < 1e-4  # the new content's tokens
    assert len(list((index / CACHE_DIR).glob("*/*.npy"))) == 5
    # A cap of two files' worth keeps the cache at or under it.
    one = cached[0].stat().st_size
    capped = Engine(index, "cpu", str(blip_folder), feature_cache=2 * one + 10)
    make_image(paths[0], seed=321, size=(40, 40))  # one more to compute
    capped.search(text, k=4, candidates=4)
    total = sum(p.stat().st_size for p in (index / CACHE_DIR).glob("*/*.npy"))
    assert 0 < total <= 2 * one + 10


def test_compact_forms_agree_with_fp32():
    from xmr.retrieval.matcher_features import decode, encode, record_layout

    rng = np.random.default_rng(0)
    features = rng.normal(0, 1, (3, 17, 48)).astype(np.float32)
    for form, tolerance in (("fp16", 2e-3), ("int8", 2e-2)):
        back = decode(form, encode(form, features))
        tiny = decode(form, encode(form, features * 1e-6))  # small tokens keep their shape
        if form == "int8":
            assert np.abs(tiny / 1e-6 - features).max() / np.abs(features).max() < tolerance
        shape, dtype = record_layout(form, (17, 48))
        assert encode(form, features).shape[1:] == shape
        assert encode(form, features).dtype == np.dtype(dtype)
        relative = np.abs(back - features).max() / np.abs(features).max()
        assert relative < tolerance, form


def test_cli_says_which_reranker_ran_and_info_counts_its_bytes(tmp_path, tiny_spec, blip_folder):
    photos = tmp_path / "photos"
    write_photos(photos, 5, seed=7)
    index = tmp_path / "idx"
    done = run_xmr("index", photos, "--index", index, "--model", tiny_spec, "--reranker",
                   blip_folder, "--feature-form", "int8", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = run_xmr("search", "a blue cat", "--index", index, "--reranker", blip_folder,
                    "--json", "--no-server", "-K", "5")  # fmt: skip
    assert found.returncode == 0, found.stderr
    answer = json.loads(found.stdout)
    assert isinstance(answer, list) and len(answer) == 5
    assert {hit["reranker"] for hit in answer} == {"tiny-blip"}  # who scored each hit
    info = run_xmr("info", "--index", index, "--json")
    data = json.loads(info.stdout)
    kept = data["matcher_features"]
    assert kept["matcher"] == "tiny-blip" and kept["form"] == "int8"
    assert kept["kept_bytes"] >= 5 * 17 * 52  # 5 images' int8 rows
    text = run_xmr("info", "--index", index)
    assert "matcher:  tiny-blip int8" in text.stdout


def test_blip_without_transformers_says_how_to_install(tmp_path, tiny_spec):
    photos = tmp_path / "photos"
    write_photos(photos, 2)
    index = tmp_path / "idx"
    _index(index, photos, tiny_spec, "none")
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys\nsys.modules['transformers'] = None\n"
        "from xmr.engine.engine import Engine\n"
        "from xmr.retrieval.errors import ModelNotAvailable\n"
        f"engine = Engine({str(index)!r}, 'cpu', 'blip-itm-base-coco')\n"
        "try:\n    engine.search('a dog')\nexcept ModelNotAvailable as exc:\n    print(exc)\n"
        "print(Engine({!r}, 'cpu', 'none').search('a dog').reranked)\n".format(str(index))
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=120)
    assert "pip install 'xmr[blip]'" in out.stdout, out.stderr
    assert out.stdout.strip().endswith("False")  # stage 1 works without it


def test_offline_hub_name_fails_fast_with_what_to_do(tmp_path, monkeypatch):
    import time

    from xmr.retrieval.blip_itm import load_matcher
    from xmr.retrieval.errors import ModelNotAvailable
    from xmr.retrieval.matcher_names import matcher_source

    monkeypatch.setenv("XMR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable, match="save_pretrained"):
        load_matcher(matcher_source("blip-itm-base-coco"), "cpu")
    assert time.monotonic() - started < 5


def test_auto_policy(tmp_path, tiny_spec, blip_folder):
    from types import SimpleNamespace

    from xmr.engine.models import choose_matcher
    from xmr.retrieval.modelspec import parse_model_spec

    photos_spec = parse_model_spec("ViT-B-32:laion2b_s34b_b79k")
    empty = SimpleNamespace(manifest={})
    choice = choose_matcher("auto", photos_spec, empty)
    assert choice.matcher is None and "--reranker blip-itm-base-coco" in choice.notice
    assert choose_matcher("auto", parse_model_spec(tiny_spec), empty) is None  # not photos
    named = choose_matcher("blip-itm-large-coco", photos_spec, empty)
    assert named.matcher.ref == "Salesforce/blip-itm-large-coco" and not named.automatic
    folder = choose_matcher(str(blip_folder), photos_spec, empty)
    assert folder.matcher.kind == "folder"
    # an index that keeps a matcher's features: auto picks that matcher
    photos = tmp_path / "photos"
    write_photos(photos, 2)
    _index(tmp_path / "idx", photos, tiny_spec, str(blip_folder))
    from xmr.engine.engine import Engine

    answer = Engine(tmp_path / "idx", "cpu", "auto").search("a dog", k=2)
    assert answer.reranked and answer.reranker == "tiny-blip"


def test_a_query_image_changed_since_indexing_is_read_as_it_is_now(
    tmp_path, tiny_spec, blip_folder, matcher
):
    from xmr.engine.engine import Engine
    from xmr.engine.query_input import QueryInput
    from xmr.engine.writes import add_text_corpus

    photos = tmp_path / "photos"
    paths = write_photos(photos, 3, seed=11)
    index = tmp_path / "idx"
    _index(index, photos, tiny_spec, str(blip_folder), form="fp32")
    corpus = tmp_path / "captions.txt"
    corpus.write_text("a red dog\na cat on the beach\nblue square\n")
    add_text_corpus(index, corpus, model=tiny_spec)
    make_image(paths[0], seed=77, size=(64, 48))  # new content; the kept row is the old one
    engine = Engine(index, "cpu", str(blip_folder))
    engine.reranker().matcher.settings.stage1_weight = 0.0
    answer = engine.search(QueryInput(image_path=paths[0]), target="texts", k=3, candidates=3)
    assert answer.reranked
    ids, mask = matcher.text_inputs([h.text for h in answer.hits])
    vision = np.repeat(_vision_of(paths[0], matcher)[None], 3, axis=0)
    want = matcher.itm_logits(ids, mask, vision)
    np.testing.assert_allclose([h.rerank_logit for h in answer.hits], want, atol=1e-4)


def test_server_answer_names_the_reranker_and_matches_the_cli(tmp_path, tiny_spec, blip_folder):
    """A real `xmr serve` (auto picks the matcher the index keeps) and `xmr search`."""
    from urllib.parse import quote

    from conftest import Served

    photos = tmp_path / "photos"
    write_photos(photos, 5, seed=21)
    index = tmp_path / "idx"
    _index(index, photos, tiny_spec, str(blip_folder))
    found = run_xmr("search", "a red dog", "--index", index, "-k", 5, "--json", "--no-server")
    assert found.returncode == 0, found.stderr
    server = Served(index)
    try:
        status, answer = server.json("/api/search?q=" + quote("a red dog") + "&k=5")
    finally:
        server.stop()
    assert status == 200
    assert answer["reranked"] and answer["reranker"] == "tiny-blip"
    assert answer["results"] == json.loads(found.stdout)  # same order, same scores


def test_serve_reranker_is_used_by_the_server_and_by_searches_sent_to_it(
    tmp_path, tiny_spec, blip_folder
):
    """`xmr serve --reranker M` re-ranks with M; `xmr search` (auto) goes to it and gets
    M's answer; a search asking for another re-ranker stays in its own process."""
    from urllib.parse import quote

    from conftest import Served

    photos = tmp_path / "photos"
    write_photos(photos, 5, seed=23)
    index = tmp_path / "idx"
    _index(index, photos, tiny_spec, "none")  # keeps no matcher features: on demand
    in_process = run_xmr(
        "search", "a red dog", "--index", index, "-k", 5, "--json", "--no-server",
        "--reranker", str(blip_folder),
    )  # fmt: skip
    assert in_process.returncode == 0, in_process.stderr
    server = Served(index, "--reranker", blip_folder)
    try:
        assert json.loads((index / "server.json").read_text())["reranker"] == str(blip_folder)
        status, answer = server.json("/api/search?q=" + quote("a red dog") + "&k=5")
        assert status == 200 and answer["reranked"] and answer["reranker"] == "tiny-blip"
        asked = server.stderr().count("/api/search")
        sent = run_xmr("search", "a red dog", "--index", index, "-k", 5, "--json")
        assert sent.returncode == 0, sent.stderr
        assert server.stderr().count("/api/search") == asked + 1  # answered by the server
        stage1 = run_xmr(
            "search", "a red dog", "--index", index, "-k", 5, "--json", "--reranker", "none"
        )
        assert stage1.returncode == 0, stage1.stderr
        assert server.stderr().count("/api/search") == asked + 1  # not sent: another choice
    finally:
        server.stop()
    assert answer["results"] == json.loads(sent.stdout) == json.loads(in_process.stdout)
    assert json.loads(stage1.stdout) != answer["results"]


def test_index_refuses_an_unloadable_matcher_before_any_work(tmp_path, tiny_spec, monkeypatch):
    from xmr.retrieval.errors import ModelNotAvailable

    monkeypatch.setenv("XMR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    photos = tmp_path / "photos"
    write_photos(photos, 2)
    with pytest.raises(ModelNotAvailable, match="XMR_OFFLINE"):
        _index(tmp_path / "idx", photos, tiny_spec, "blip-itm-base-coco")
    assert not (tmp_path / "idx").exists()  # nothing indexed, no model loaded


def test_a_cached_hub_id_loads_with_no_network(tmp_path, blip_folder, monkeypatch):
    """A hub repository in huggingface_hub's cache layout loads under XMR_OFFLINE=1."""
    import shutil

    from xmr.retrieval.blip_itm import load_matcher
    from xmr.retrieval.matcher_names import matcher_source

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--tiny-blip-itm"
    shutil.copytree(blip_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("XMR_OFFLINE", "1")
    source = matcher_source("someone/tiny-blip-itm")
    assert source.kind == "hub"
    loaded = load_matcher(source, "cpu")
    assert loaded.name == "someone/tiny-blip-itm" and loaded.feature_shape == (17, 48)


def test_check_repair_after_a_lost_database_leaves_no_wrong_row(
    tmp_path, tiny_spec, blip_folder, matcher
):
    """The database is the truth: rebuilt by `xmr check --repair`, its ids are new, and
    the kept tokens go with the other derived files; `xmr index` keeps them again."""
    photos = tmp_path / "photos"
    write_photos(photos, 4, seed=31)
    index = tmp_path / "idx"
    _index(index, photos, tiny_spec, str(blip_folder), form="fp32")
    (index / "xmr.sqlite3").unlink()
    repaired = run_xmr("check", "--index", index, "--repair", "--model", tiny_spec)
    assert repaired.returncode == 0, repaired.stderr
    assert "matcher_features" not in json.loads((index / "manifest.json").read_text())
    again = run_xmr("index", photos, "--index", index, "--reranker", blip_folder,
                    "--feature-form", "fp32", "--quiet")  # fmt: skip
    assert again.returncode == 0, again.stderr
    rows = _rows(index)
    ids = sorted(rows)
    features, found = _kept(index, ids, [rows[i][1] for i in ids])
    assert len(ids) == 4 and found.all()
    for i, row in zip(ids, features, strict=True):
        np.testing.assert_allclose(row, _vision_of(rows[i][0], matcher), atol=1e-5)


def test_a_candidate_whose_file_is_gone_is_ranked_after_the_rest_with_a_notice(
    tmp_path, tiny_spec, blip_folder
):
    from xmr.engine.engine import Engine

    photos = tmp_path / "photos"
    paths = write_photos(photos, 4, seed=41)
    index = tmp_path / "idx"
    _index(index, photos, tiny_spec, "none")  # on demand: the files are read at search time
    paths[1].unlink()
    answer = Engine(index, "cpu", str(blip_folder)).search("a cat", k=4, candidates=4)
    assert answer.reranked and len(answer.hits) == 4
    assert answer.hits[-1].path == str(paths[1].resolve())
    assert any("could not be read for re-ranking" in n for n in answer.notices)
