"""Image tokens from an earlier vision block: what the encoder gives, what an index stores
for its re-ranker, and the refusal when a re-ranker was trained on another block's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_images, random_reranker, run_xmr


def _pixels(encoder, n=3, seed=0):
    torch.manual_seed(seed)
    return torch.rand(n, 3, *encoder.image_size)


def _reranker(encoder, layer, seed=0):
    return random_reranker(
        dim=encoder.dim,
        text_len=encoder.context_length,
        image_tokens=encoder.image_token_shape[0],
        seed=seed,
        image_token_layer=layer,
    )


def test_block_tokens_are_that_blocks_output_through_the_final_norm(encoder):
    from xmr.retrieval.errors import InputError

    pixels = _pixels(encoder)
    last = encoder.encode_images(pixels)
    first = encoder.encode_images(pixels, token_layer=0)
    visual = encoder.model.visual
    with torch.inference_mode():
        hidden = visual.transformer.resblocks[0](visual._embeds(pixels))  # (B, 1+N, width)
        want = visual.ln_post(hidden[:, 1:]) @ visual.proj  # (B, N, D)
    np.testing.assert_allclose(first.tokens.astype(np.float32), want.numpy(), atol=2e-2)
    assert np.abs(first.tokens.astype(np.float32) - last.tokens).max() > 0.1  # not the last's
    np.testing.assert_array_equal(first.vectors, last.vectors)  # stage 1 never changes
    blocks = len(visual.transformer.resblocks)
    np.testing.assert_array_equal(encoder.encode_images(pixels, blocks - 1).tokens, last.tokens)
    with pytest.raises(InputError, match=f"has {blocks} vision blocks; token layer 7"):
        encoder.encode_images(pixels, token_layer=7)


def test_an_index_stores_its_blocks_tokens_and_refuses_a_reranker_of_another(tmp_path, encoder):
    from xmr.indexer.images import IndexOptions, index_folders
    from xmr.retrieval.errors import InvalidModelSpec
    from xmr.retrieval.imageio import decode_image
    from xmr.retrieval.library import Library
    from xmr.retrieval.reranker_files import TokenSource
    from xmr.retrieval.searcher import Searcher

    make_images(tmp_path / "imgs", 6)
    make_images(tmp_path / "imgs" / "later", 2, start_seed=50)
    options = IndexOptions(workers=0, exclude=("later",))
    with Library.open_or_create(
        tmp_path / "idx", encoder, token_source=TokenSource(layer=0)
    ) as library:
        index_folders(library, encoder, [tmp_path / "imgs"], options)
    # Reopened without saying, the index keeps block 0 for the images a later run adds.
    with Library.open_or_create(tmp_path / "idx", encoder) as library:
        index_folders(library, encoder, [tmp_path / "imgs"], IndexOptions(workers=0))
    with Library.open(tmp_path / "idx") as library:
        assert library.token_layer == 0
        rows = [(i, path) for i, path, _ in library.db.indexed_images()]
        assert len(rows) == 8
        for row_id, path in rows:
            pixels, *_ = decode_image(path, encoder.preprocess)
            want = encoder.encode_images(pixels.unsqueeze(0), token_layer=0).tokens[0]
            stored = library.images.tokens.read(np.array([row_id]))[0]
            np.testing.assert_array_equal(stored, want)

        # An image query that is not in the index gets block-0 tokens too.
        outside = make_images(tmp_path / "outside", 1, start_seed=90)[0]
        searcher = Searcher(library, encoder, _reranker(encoder, 0))
        query = searcher.image_query(outside)
        pixels, *_ = decode_image(str(outside), encoder.preprocess)
        want = encoder.encode_images(pixels.unsqueeze(0), token_layer=0).tokens[0]
        np.testing.assert_array_equal(query.tokens, want)
        assert len(searcher.search(query, "images", k=3, candidates=6)) == 3

        with pytest.raises(InvalidModelSpec) as refused:
            Searcher(library, encoder, _reranker(encoder, None))
    message = str(refused.value)
    assert "stores image tokens of vision block 0" in message
    assert "reads the last vision block" in message and "search without re-ranking" in message

    # Features are kept for a re-ranker that reads block 0, never for one that does not.
    with Library.open_or_create(tmp_path / "idx", encoder) as library:
        library.keep_reranker_features(_reranker(encoder, None))
        assert library.images.features is None
        library.keep_reranker_features(_reranker(encoder, 0))
        assert library.images.features is not None


def test_xmr_index_stores_the_tokens_its_reranker_reads(tmp_path, tiny_spec, encoder):
    from xmr.retrieval.reranker import save_reranker

    make_images(tmp_path / "imgs", 5)
    save_reranker(_reranker(encoder, 0, seed=1).model, tmp_path / "rr0")
    save_reranker(_reranker(encoder, None, seed=2).model, tmp_path / "rr_last")
    index = tmp_path / "idx"
    done = run_xmr(
        "index", tmp_path / "imgs", "--model", tiny_spec, "--index", index,
        "--reranker", tmp_path / "rr0", "-q",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    info = run_xmr("info", "--index", index)
    assert "vision block 0" in info.stdout
    assert json.loads((index / "manifest.json").read_text())["image_token_layer"] == 0

    assert json.loads((index / "manifest.json").read_text())["reranker_features"]
    # Indexing for a re-ranker of another block says so, keeps no features, embeds the rest.
    make_images(tmp_path / "imgs" / "more", 1, start_seed=70)
    other = run_xmr(
        "index", tmp_path / "imgs", "--index", index, "--reranker", tmp_path / "rr_last", "--json"
    )
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout)["new"] == 1
    assert "reads the last vision block" in other.stderr and "features are not kept" in other.stderr
    assert "reranker_features" not in json.loads((index / "manifest.json").read_text())

    good = run_xmr("search", "a red square", "--index", index, "--reranker", tmp_path / "rr0")
    assert good.returncode == 0, good.stderr
    bad = run_xmr("search", "a red square", "--index", index, "--reranker", tmp_path / "rr_last")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "vision block 0" in bad.stderr and "re-index into a new index folder" in bad.stderr
