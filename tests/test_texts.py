"""Text corpora: .txt / .jsonl / .csv parsing, deduplication, incremental re-runs,
malformed input, and text->text / image->text search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    db_rows,
    faiss_ids,
    index_with,
    indexed_paths,
    make_images,
    stored_vectors,
)

from xmr.indexer.texts import add_texts, read_corpus
from xmr.retrieval.errors import InputError
from xmr.retrieval.library import Library

CAPTIONS = [
    "a red circle on a white background",
    "two blue squares",
    "a green triangle next to a yellow star",
    "an empty grey canvas",
]


def _add(index_dir: Path, encoder, path: Path, **kwargs):
    with Library.open_or_create(index_dir, encoder) as library:
        return add_texts(library, encoder, path, **kwargs)


def _texts(index_dir: Path) -> dict[str, int]:
    return {r["text"]: r["id"] for r in db_rows(index_dir, "texts")}


def _assert_consistent(index_dir: Path) -> dict[str, int]:
    texts = _texts(index_dir)
    assert faiss_ids(index_dir, "texts") == set(texts.values())
    return texts


# -- parsing -----------------------------------------------------------------------------
def test_read_txt_jsonl_csv(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("first line\n\n   second line  \n")
    assert [(r.text, r.record) for r in read_corpus(txt)] == [
        ("first line", "line 1"),
        ("second line", "line 3"),
    ]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(
        json.dumps({"caption": "a cat", "image": "cat.jpg", "id": "c1"})
        + "\n\n"
        + json.dumps({"caption": "a dog", "lang": "en"})
        + "\n"
    )
    records = read_corpus(jsonl)
    assert [(r.text, r.record) for r in records] == [("a cat", "c1"), ("a dog", "line 3")]
    assert records[0].meta == {"image": "cat.jpg", "id": "c1"}
    assert records[1].meta == {"lang": "en"}
    csv_file = tmp_path / "c.csv"
    csv_file.write_text('id,sentence,split\n7,"a bird, flying",test\n8,,test\n9,a fish,train\n')
    records = read_corpus(csv_file)
    assert [(r.text, r.record) for r in records] == [("a bird, flying", "7"), ("a fish", "9")]
    assert records[0].meta == {"id": "7", "split": "test"}
    # --text-field picks another column.
    assert [r.text for r in read_corpus(csv_file, "split")] == ["test", "test", "train"]


def test_corpus_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "ok 2"}\n{"text": broken\n')
    with pytest.raises(InputError, match=r"bad.jsonl: line 3 is not valid JSON"):
        read_corpus(bad)
    not_obj = tmp_path / "list.jsonl"
    not_obj.write_text('["a", "b"]\n')
    with pytest.raises(InputError, match="line 1 is not a JSON object"):
        read_corpus(not_obj)
    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text('{"title": "x"}\n')
    with pytest.raises(InputError, match="no text field .*name the text field") as missing:
        read_corpus(no_field)
    assert missing.value.setting == "text_field"
    with pytest.raises(InputError, match="has no 'body' field; it has: title"):
        read_corpus(no_field, "body")
    no_column = tmp_path / "c.csv"
    no_column.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="the header has no text field"):
        read_corpus(no_column)
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="not UTF-8"):
        read_corpus(binary)
    with pytest.raises(InputError, match="unsupported corpus format '.xml'"):
        (tmp_path / "c.xml").write_text("<a/>")
        read_corpus(tmp_path / "c.xml")
    with pytest.raises(InputError, match="does not exist"):
        read_corpus(tmp_path / "missing.txt")


# -- ingesting ---------------------------------------------------------------------------
def test_texts_are_deduplicated_embedded_and_incremental(encoder, tmp_path):
    corpus = tmp_path / "captions.txt"
    lines = [*CAPTIONS, "two   blue squares", CAPTIONS[0]]  # two duplicates (one by spacing)
    corpus.write_text("\n".join(lines) + "\n")
    index_dir = tmp_path / "index"

    summary = _add(index_dir, encoder, corpus)
    assert (summary.new, summary.duplicates, summary.encoded) == (4, 2, 4)
    texts = _assert_consistent(index_dir)
    assert sorted(texts) == sorted(CAPTIONS)
    # Stored vectors are the encoder's vectors for those texts.
    ids = [texts[c] for c in CAPTIONS]
    np.testing.assert_allclose(
        stored_vectors(index_dir, ids, "texts"), encoder.encode_texts(CAPTIONS).vectors, atol=1e-6
    )
    rows = {r["text"]: r for r in db_rows(index_dir, "texts")}
    assert rows[CAPTIONS[1]]["source"] == str(corpus.resolve())
    assert rows[CAPTIONS[1]]["record"] == "line 2"
    assert rows[CAPTIONS[1]]["n_tokens"] == 2 + 3  # start, "two blue squares", end

    again = _add(index_dir, encoder, corpus)
    assert (again.new, again.encoded, again.unchanged, again.removed) == (0, 0, 4, 0)
    assert _assert_consistent(index_dir) == texts

    # Drop one caption, add another: one removed, one embedded, the rest keep their ids.
    corpus.write_text("\n".join([*CAPTIONS[:2], CAPTIONS[3], "a purple hexagon"]) + "\n")
    edited = _add(index_dir, encoder, corpus)
    assert (edited.removed, edited.new, edited.encoded, edited.unchanged) == (1, 1, 1, 3)
    after = _assert_consistent(index_dir)
    assert CAPTIONS[2] not in after and "a purple hexagon" in after
    assert all(after[c] == texts[c] for c in (CAPTIONS[0], CAPTIONS[1], CAPTIONS[3]))


def test_jsonl_and_csv_keep_their_metadata(encoder, tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps({"text": c, "id": f"r{i}", "image": f"{i}.png"})
            for i, c in enumerate(CAPTIONS[:2])
        )
    )
    csv_file = tmp_path / "c.csv"
    csv_file.write_text(f"caption,split\n{CAPTIONS[2]},val\n{CAPTIONS[0]},val\n")
    index_dir = tmp_path / "index"
    assert _add(index_dir, encoder, jsonl).new == 2
    summary = _add(index_dir, encoder, csv_file)
    assert (summary.new, summary.unchanged) == (1, 1)  # CAPTIONS[0] is already stored
    rows = {r["text"]: r for r in db_rows(index_dir, "texts")}
    assert len(rows) == 3
    assert json.loads(rows[CAPTIONS[1]]["meta_json"]) == {"id": "r1", "image": "1.png"}
    assert rows[CAPTIONS[1]]["record"] == "r1"
    assert json.loads(rows[CAPTIONS[2]]["meta_json"]) == {"split": "val"}
    assert rows[CAPTIONS[0]]["source"] == str(jsonl.resolve())  # stored once, first source


def test_text_to_text_search_finds_the_exact_text(encoder, tmp_path):
    from xmr.retrieval.searcher import Searcher

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(CAPTIONS))
    index_dir = tmp_path / "index"
    _add(index_dir, encoder, corpus)
    with Library.open(index_dir) as library:
        searcher = Searcher(library, encoder)
        for caption in CAPTIONS:
            hits = searcher.search(searcher.text_query(caption), "texts", k=3)
            assert hits[0].text == caption and hits[0].kind == "text"
            assert hits[0].score == pytest.approx(1.0, abs=1e-5)
            assert len(hits) == 3 and [h.rank for h in hits] == [1, 2, 3]
        with pytest.raises(InputError, match="empty query"):
            searcher.text_query("   ")


# -- through the command line ------------------------------------------------------------
def test_cli_malformed_jsonl_is_refused_and_indexes_nothing(cli, encoder, tiny_spec, tmp_path):
    index_dir = tmp_path / "index"
    good = tmp_path / "good.txt"
    good.write_text("\n".join(CAPTIONS[:2]))
    assert cli("add-texts", good, "--index", index_dir, "--model", tiny_spec).exit_code == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"text": "fine line"}) + "\n" + json.dumps({"text": "also fine"}) + "\n{oops\n"
    )
    result = cli("add-texts", bad, "--index", index_dir)
    assert result.exit_code == 1
    detail = "(Expecting property name enclosed in double quotes)"
    assert result.stderr.strip() == f"Error: {bad}: line 3 is not valid JSON {detail}"
    assert "Traceback" not in result.output
    assert sorted(_texts(index_dir)) == sorted(CAPTIONS[:2])  # nothing from bad.jsonl


def test_cli_texts_json_output_and_image_to_text(cli, encoder, tiny_spec, tmp_path):
    folder = tmp_path / "photos"
    make_images(folder, 3)
    index_dir = tmp_path / "index"
    index_with(index_dir, encoder, [folder])
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "\n".join(
            json.dumps({"caption": c, "id": f"cap-{i}", "score": "meta, not a score"})
            for i, c in enumerate(CAPTIONS)
        )
    )
    result = cli("add-texts", corpus, "--index", index_dir, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["new"], summary["encoded"]) == (4, 4)

    # text -> text, with the record's metadata visible and not clobbering the hit's fields
    result = cli("search", CAPTIONS[2], "--texts", "--json", "-k", "2", "--index", index_dir)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert [h["rank"] for h in hits] == [1, 2]
    top = hits[0]
    assert top["text"] == CAPTIONS[2] and top["kind"] == "text"
    assert isinstance(top["id"], int) and isinstance(top["score"], float)
    assert top["score"] == pytest.approx(1.0, abs=1e-5)
    assert top["id"] == _texts(index_dir)[CAPTIONS[2]]
    assert top["source"] == str(corpus.resolve())
    assert top["meta"] == {"id": "cap-2", "score": "meta, not a score"}

    # image -> text returns texts, best first
    result = cli(
        "search", "--image", folder / "img0001.png", "--texts", "--json", "--index", index_dir
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 4 and {h["text"] for h in hits} == set(CAPTIONS)
    assert all(h["kind"] == "text" and "path" not in h for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    image_id = indexed_paths(index_dir)[str(folder / "img0001.png")]
    image_vector = stored_vectors(index_dir, [image_id])[0]
    text_vectors = encoder.encode_texts(CAPTIONS).vectors
    best = CAPTIONS[int(np.argmax(text_vectors @ image_vector))]
    assert hits[0]["text"] == best

    # --paths with --texts prints the texts, one a line
    result = cli("search", CAPTIONS[0], "--texts", "--paths", "-k", "3", "--index", index_dir)
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and lines[0] == CAPTIONS[0] and set(lines) <= set(CAPTIONS)


def test_text_shared_by_two_files_survives_its_removal_from_one(encoder, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a shared caption\nonly in a\n")
    b.write_text("a shared caption\nonly in b\n")
    index_dir = tmp_path / "index"
    _add(index_dir, encoder, a)
    _add(index_dir, encoder, b)
    a.write_text("only in a\n")
    _add(index_dir, encoder, a)
    assert "a shared caption" in _texts(index_dir)  # b.txt still holds it
    b.write_text("only in b\n")
    _add(index_dir, encoder, b)
    assert "a shared caption" not in _texts(index_dir)  # now no file holds it


def test_a_karpathy_captions_json_is_a_corpus(tmp_path):
    """What `xmr make-corpus` (and COCO / Flickr30k's Karpathy splits) write: every caption
    of every image, its record naming the image."""
    from xmr.training.corpus import make_corpus

    corpus = make_corpus(tmp_path / "corpus", 3, seed=5)
    data = json.loads(corpus.captions_path.read_text())
    records = read_corpus(corpus.captions_path)
    expected = [s["raw"] for image in data["images"] for s in image["sentences"]]
    assert [r.text for r in records] == expected and len(expected) > 3
    first = data["images"][0]
    assert records[0].record == f"images/{first['filename']} caption 0"
    assert records[0].meta == {"image": f"images/{first['filename']}", "split": first["split"]}
    not_karpathy = tmp_path / "list.json"
    not_karpathy.write_text('[{"text": "a"}]')
    with pytest.raises(InputError, match="no 'images' list; add-texts reads Karpathy-format"):
        read_corpus(not_karpathy)
    no_raw = tmp_path / "noraw.json"
    no_raw.write_text('{"images": [{"filename": "a.png", "sentences": [{"tokens": []}]}]}')
    with pytest.raises(InputError, match=r"images\[0\].sentences\[0\] has no 'raw' text"):
        read_corpus(no_raw)
