"""Queries through ONNX Runtime (retrieval/onnx/): the same answers as PyTorch, exports
that are never used stale, a fallback that never gives a wrong answer, and a cold
`xmr search` that imports neither torch nor open_clip.

Everything is real: the shipped xmr-tiny and its re-ranker, tiny open_clip models, a
random-weight ViT-B-32 (slow), torch.onnx.export, ONNX Runtime, FAISS, SQLite and the
`xmr` script in subprocesses. XMR_ONNX=0 puts an engine on the PyTorch path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import XMR, make_image, make_images, xmr_env
from PIL import Image

from xmr.engine.engine import Engine
from xmr.retrieval.modelspec import SHIPPED_MODELS_DIR, parse_model_spec
from xmr.retrieval.onnx import store
from xmr.retrieval.onnx.preprocess import describe
from xmr.retrieval.onnx.runtime import OnnxReranker
from xmr.retrieval.onnx.tokenizer import ClipTokenizer

CAPTIONS = [
    "a red circle left of a blue square",
    "a green triangle above a yellow circle",
    "two blue squares on a white background",
    "a small purple circle",
    "a large orange square next to a red triangle",
    "a grey circle and a black square",
    "three yellow shapes",
    "a pink square below a green circle",
]
TEXT_QUERIES = ["a red circle", "blue square left of a green triangle", "purple!!  Shapes…"]
STRINGS = [
    "a red circle left of a blue square",
    "",
    "   Hello,\tWORLD!!\n  again  ",
    "café naïve Zürich 東京 🐶🐱 ½",
    "don't we'll they've I'M you'd",
    "&amp; &lt;b&gt; x&y &#39;quoted&#39;",
    "ﬁne ligatures “curly quotes” ｆｕｌｌｗｉｄｔｈ",
    "\x1b[31mred\x1b[0m and\x00nul",
    "1234567890 3.14159 $%^&*() [brackets] {braces}",
    "word " * 120,  # cut to the context, ended by the end token
    "Ä" * 90,
    "<start_of_text> inside <end_of_text>",
]


def _engine(index: Path, monkeypatch, onnx: bool, **kwargs) -> Engine:
    if onnx:
        monkeypatch.delenv("XMR_ONNX", raising=False)
    else:
        monkeypatch.setenv("XMR_ONNX", "0")
    return Engine(index, device="cpu", **kwargs)


def _assert_same(a, b, min_cosine: float = 0.9999) -> None:
    """Same top-10 ids; the raw scores the order follows (fused, else stage 1) agree
    (cosine of the score vectors, and close in value), and so do the shown ones (a
    calibrated 0..1 mapping of those, which may saturate at 0 for random weights)."""
    ids_a = [h.id for h in a.hits][:10]
    ids_b = [h.id for h in b.hits][:10]
    assert ids_a == ids_b
    sa, sb = (
        np.array([h.stage1_score if h.fused_score is None else h.fused_score for h in x.hits])
        for x in (a, b)
    )
    cosine = float(sa @ sb / (np.linalg.norm(sa) * np.linalg.norm(sb)))
    assert cosine >= 1 - 1e-4, (sa, sb)
    assert np.abs(sa - sb).max() <= 1e-3 * max(1.0, np.abs(sa).max())
    shown_a, shown_b = (np.array([h.score for h in x.hits]) for x in (a, b))
    assert np.abs(shown_a - shown_b).max() <= 1e-3
    assert a.reranked == b.reranked


def _query_vectors(engine: Engine, text: str | None = None, image: Path | None = None):
    searcher = engine._searcher(engine._current())  # noqa: SLF001 - the query it builds
    return searcher.image_query(image) if image else searcher.text_query(text)


# -- the tokenizer and the preprocessing, against open_clip's -----------------------------
@pytest.mark.parametrize("context", [16, 48, 77])
def test_tokenizer_gives_open_clips_ids(context):
    import open_clip

    ours = ClipTokenizer(context)
    theirs = open_clip.get_tokenizer("ViT-B-32", context_length=context)
    got, want = ours(STRINGS), theirs(STRINGS).numpy()
    assert got.dtype == np.int64 and got.shape == (len(STRINGS), context)
    for text, row_got, row_want in zip(STRINGS, got, want, strict=True):
        assert row_got.tolist() == row_want.tolist(), text
    assert (got[9] != 0).all() and got[9, -1] == ours.eot  # cut, and ended by the end token


@pytest.mark.parametrize("model", ["xmr-tiny", "ViT-B-32"])
def test_numpy_preprocessing_equals_open_clips(model):
    import open_clip

    if model == "xmr-tiny":
        ref = f"local-dir:{SHIPPED_MODELS_DIR / 'xmr-tiny'}"
        _, _, transform = open_clip.create_model_and_transforms(ref, load_weights=False)
    else:
        transform = open_clip.image_transform(224, is_train=False)
    ours = describe(transform)
    rng = np.random.default_rng(1)
    for w, h in [(48, 40), (640, 480), (33, 301), (64, 64), (224, 224), (1000, 17)]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        want = transform(image).numpy()
        got = ours(image)
        assert got.shape == want.shape and got.dtype == np.float32
        cosine = float(got.ravel() @ want.ravel() / np.linalg.norm(got) / np.linalg.norm(want))
        assert cosine >= 0.9999 and np.abs(got - want).max() < 1e-4


# -- parity on the shipped xmr-tiny, re-ranked and not --------------------------------------
@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory) -> tuple[Path, Path]:
    """An xmr-tiny index of 24 images and 8 captions; `xmr index` made its exports."""
    base = tmp_path_factory.mktemp("onnx-tiny")
    make_images(base / "photos", 24)
    (base / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    engine = Engine(base / "index", device="cpu")
    report = engine.index([base / "photos"], model="xmr-tiny", workers=0)
    assert not [n for n in report.notices if "ONNX" in n]
    engine.add_texts(base / "captions.txt")
    engine.close()
    outside = make_image(base / "query.png", seed=999, size=(80, 60))
    return base / "index", outside


def test_index_time_export_is_in_the_cache(tiny_index):
    folder = store.model_folder(parse_model_spec("xmr-tiny"))
    meta = store.read_meta(folder)
    for name in ("text.onnx", "image-Llast.onnx"):
        assert store.present(folder, meta, name) is not None
    reranker = SHIPPED_MODELS_DIR / "xmr-tiny" / "reranker"
    from xmr.retrieval.reranker_files import folder_fingerprint

    export = store.reranker_export_folder(folder_fingerprint(reranker))
    assert all(
        store.present(export, store.read_meta(export), n) for n in ("stem.onnx", "match.onnx")
    )


@pytest.mark.parametrize("rerank", [True, False])
@pytest.mark.parametrize("query", TEXT_QUERIES)
def test_text_queries_match_pytorch_on_xmr_tiny(tiny_index, monkeypatch, query, rerank):
    index, _ = tiny_index
    onnx = _engine(index, monkeypatch, True)
    answer = onnx.search(query, k=10, rerank=rerank, candidates=16)
    assert isinstance(onnx.reranker(), OnnxReranker)
    assert "text tower (ONNX)" in onnx.models.loaded and "both towers" not in onnx.models.loaded
    torch_engine = _engine(index, monkeypatch, False)
    expected = torch_engine.search(query, k=10, rerank=rerank, candidates=16)
    assert not isinstance(torch_engine.reranker(), OnnxReranker)
    assert answer.reranked == rerank
    _assert_same(answer, expected)
    a, b = _query_vectors(onnx, query), _query_vectors(torch_engine, query)
    assert float(a.vector @ b.vector) >= 0.9999
    assert a.length == b.length  # the tokens a re-ranker reads: the first `length`
    ta, tb = (q.tokens[: a.length].astype(np.float32) for q in (a, b))
    assert np.abs(ta - tb).max() < 2e-3


@pytest.mark.parametrize("target", ["images", "texts"])
@pytest.mark.parametrize("rerank", [True, False])
def test_image_queries_match_pytorch_on_xmr_tiny(tiny_index, monkeypatch, target, rerank):
    """A file outside the index is encoded: through the image tower export and the NumPy
    preprocessing on one side, open_clip on the other; image->text is re-ranked too."""
    from xmr.engine.query_input import QueryInput
    from xmr.engine.request import SearchRequest

    index, outside = tiny_index
    request = SearchRequest(
        query=QueryInput(image_path=outside), target=target, k=8, rerank=rerank, candidates=16
    )
    onnx = _engine(index, monkeypatch, True)
    answer = onnx.search(request)
    assert "image tower (ONNX)" in onnx.models.loaded and "both towers" not in onnx.models.loaded
    expected = _engine(index, monkeypatch, False).search(request)
    assert answer.reranked == (rerank and target == "texts")  # image->image: stage 1 only
    _assert_same(answer, expected)
    a = _query_vectors(onnx, image=outside)
    b = _query_vectors(_engine(index, monkeypatch, False), image=outside)
    assert float(a.vector @ b.vector) >= 0.9999


def _prepacks(session) -> bool:
    """Whether an ONNX Runtime session laid its weights out for its kernels at load."""
    options = session.get_session_options()
    try:
        return options.get_session_config_entry("session.disable_prepacking") != "1"
    except RuntimeError:  # no such entry: the default, prepacking
        return True


def test_a_short_lived_engine_loads_without_prepacking_and_answers_the_same(
    tiny_index, monkeypatch
):
    """A CLI search (one query, then the process ends) skips weight prepacking, which
    costs more at load than it saves on one run; the server keeps it. Same answers."""
    from xmr.engine.query_input import QueryInput
    from xmr.engine.request import SearchRequest

    index, outside = tiny_index
    requests = [
        SearchRequest(query=QueryInput(text="a red circle"), k=8, candidates=16),
        SearchRequest(query=QueryInput(image_path=outside), target="texts", k=8),
    ]
    served = _engine(index, monkeypatch, True)
    once = _engine(index, monkeypatch, True, short_lived=True)
    for request in requests:
        answer = once.search(request)
        assert answer.reranked
        _assert_same(answer, served.search(request))
    for engine, prepacked in ((served, True), (once, False)):
        reranker = engine.reranker()
        assert isinstance(reranker, OnnxReranker)
        sessions = [
            engine.models.onnx_text().session,
            engine.models.onnx_image(engine.models.token_layer).session,
            reranker._stem,  # noqa: SLF001 - the sessions it loaded
            reranker._match,  # noqa: SLF001
        ]
        assert [_prepacks(s) for s in sessions] == [prepacked] * 4


def _random_reranker_folder(
    folder: Path, dim: int, text_len: int, image_tokens: int, **config
) -> Path:
    """A random native re-ranker whose head speaks, saved as `xmr train-reranker` saves."""
    from conftest import random_reranker

    from xmr.retrieval.reranker import save_reranker

    runtime = random_reranker(dim, text_len, image_tokens, seed=3, stage1_weight=5.0, **config)
    save_reranker(runtime.model, folder)
    return folder


RERANKER_OPTIONS = {
    "plain": {},
    "sincos": {"patch_position": "sincos"},
    "relation": {"image_stem": "conv", "token_alignment": True, "relation_readout": True},
}


@pytest.mark.parametrize("options", RERANKER_OPTIONS.values(), ids=RERANKER_OPTIONS.keys())
def test_tiny_config_model_matches_pytorch(tmp_path, tiny_spec, monkeypatch, options):
    """A tiny open_clip config with random weights (16-token context) and a random
    re-ranker given by folder (plain, with row/column codes on its patches, with the
    relation term): text and image queries, both directions, re-ranked and not."""
    from xmr.engine.query_input import QueryInput
    from xmr.engine.request import SearchRequest

    make_images(tmp_path / "photos", 12)
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    engine = Engine(tmp_path / "index", device="cpu")
    engine.index([tmp_path / "photos"], model=tiny_spec)
    engine.add_texts(tmp_path / "captions.txt")
    folder = _random_reranker_folder(tmp_path / "rr", 32, 16, 16, **options)
    query = make_image(tmp_path / "q.png", seed=500)
    asked = [
        SearchRequest(query=QueryInput(text="a red circle"), k=10),
        SearchRequest(query=QueryInput(text="a red circle"), k=10, rerank=False),
        SearchRequest(query=QueryInput(image_path=query), k=8),
        SearchRequest(query=QueryInput(image_path=query), target="texts", k=8),
    ]
    for request in asked:
        onnx = _engine(tmp_path / "index", monkeypatch, True, reranker=str(folder))
        a = onnx.search(request)
        b = _engine(tmp_path / "index", monkeypatch, False, reranker=str(folder)).search(request)
        assert isinstance(onnx.reranker(), OnnxReranker)
        _assert_same(a, b)
        cross = (request.query.text is None) == (request.target == "texts")
        assert a.reranked == (request.rerank and cross)


# -- exports are never used stale ---------------------------------------------------------
def test_changed_weights_make_a_new_export(tmp_path, monkeypatch):
    """A model folder whose weights change in place gets another cache key: the old export
    is never found, and the answers follow the new weights as PyTorch's do."""
    from safetensors.numpy import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(
        SHIPPED_MODELS_DIR / "xmr-tiny", model, ignore=shutil.ignore_patterns("reranker")
    )
    make_images(tmp_path / "photos", 12)
    engine = Engine(tmp_path / "index", device="cpu")
    engine.index([tmp_path / "photos"], model=str(model))
    spec = parse_model_spec(str(model))
    before = store.model_folder(spec)
    assert store.present(before, store.read_meta(before), "text.onnx")

    weights = model / "open_clip_model.safetensors"
    state = load_file(str(weights))
    name = "text_projection"
    state[name] = (state[name] * -1.5).astype(state[name].dtype)  # same size, other values
    save_file(state, str(weights))
    after = store.model_folder(spec)
    assert after != before
    assert store.read_meta(after) is None  # nothing exported for these weights yet

    a = _engine(tmp_path / "index", monkeypatch, True).search("a red circle", k=10)
    b = _engine(tmp_path / "index", monkeypatch, False).search("a red circle", k=10)
    _assert_same(a, b)
    assert store.present(after, store.read_meta(after), "text.onnx")  # made on first need


def test_a_damaged_export_is_made_again(tiny_index, monkeypatch):
    """Bytes changed inside an export's weights (same size): their sha256 no longer matches
    meta.json, so the export is made again before any query reads it."""
    index, _ = tiny_index
    folder = store.model_folder(parse_model_spec("xmr-tiny"))
    path = folder / "text.onnx.data"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    assert store.present(folder, store.read_meta(folder), "text.onnx") is None
    a = _engine(index, monkeypatch, True).search("a red circle", k=10, candidates=16)
    b = _engine(index, monkeypatch, False).search("a red circle", k=10, candidates=16)
    _assert_same(a, b)
    assert store.present(folder, store.read_meta(folder), "text.onnx") is not None


# -- the real CLI: no torch on a cold query; the fallback -----------------------------------
def _cli(index: Path, *args: str, env: dict | None = None, importtime: bool = False):
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "xmr"]
    return subprocess.run(
        [*command, "search", *args, "--index", str(index), "--no-server", "--json"],
        capture_output=True,
        text=True,
        env=env or xmr_env(),
        timeout=300,
    )


def _imported(stderr: str) -> set[str]:
    """Top-level packages named by `python -X importtime` lines."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize(
    "args",
    [
        ("a red circle",),
        ("a red circle", "--no-rerank"),
        ("--image", "QUERY"),
        ("--image", "QUERY", "--texts"),
    ],
)
def test_cold_query_imports_neither_torch_nor_open_clip(tiny_index, args):
    index, outside = tiny_index
    args = tuple(str(outside) if a == "QUERY" else a for a in args)
    result = _cli(index, *args, importtime=True)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = _imported(result.stderr)
    assert "onnxruntime" in imported and "faiss" in imported
    heavy = {"torch", "open_clip", "torchvision", "timm", "transformers", "sqlalchemy"}
    assert not imported & heavy  # a search reads the database with plain sqlite3
    # A text query decodes no image; typer's pydantic validation is left out (typer<0.29).
    slow = {"pydantic"} | ({"PIL"} if "--image" not in args else set())
    assert not imported & slow
    assert json.loads(result.stdout)  # results came back
    torch_run = _cli(index, *args, env=xmr_env(XMR_ONNX="0"))
    got, want = json.loads(result.stdout), json.loads(torch_run.stdout)
    assert [r["id"] for r in got] == [r["id"] for r in want]
    assert np.allclose([r["score"] for r in got], [r["score"] for r in want], atol=1e-3)


def test_without_onnxruntime_queries_fall_back_with_a_notice(tiny_index, tmp_path):
    """onnxruntime shadowed by a package that fails to import: the answer is PyTorch's,
    with one `note:` line saying so."""
    index, _ = tiny_index
    shadow = tmp_path / "shadow" / "onnxruntime"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('onnxruntime is broken here')\n")
    env = xmr_env(PYTHONPATH=str(tmp_path / "shadow"))
    result = _cli(index, "a red circle", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    notes = [line for line in result.stderr.splitlines() if "ONNX" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ") and "PyTorch" in notes[0]
    want = _cli(index, "a red circle", env=xmr_env(XMR_ONNX="0"))
    assert [r["id"] for r in json.loads(result.stdout)] == [
        r["id"] for r in json.loads(want.stdout)
    ]
    assert np.allclose(
        [r["score"] for r in json.loads(result.stdout)],
        [r["score"] for r in json.loads(want.stdout)],
        atol=1e-6,
    )


def test_help_stays_free_of_onnxruntime():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(XMR), "--help"],
        capture_output=True,
        text=True,
        env=xmr_env(),
        timeout=120,
    )
    assert result.returncode == 0
    assert not _imported(result.stderr) & {"onnxruntime", "torch", "open_clip", "numpy"}


# -- a random-weight ViT-B-32 ---------------------------------------------------------------
@pytest.mark.slow
def test_vit_b_32_matches_pytorch(tmp_path, monkeypatch):
    """ViT-B-32 with random weights: four photos, text and image queries, re-ranked (by a
    random native re-ranker for its 7 x 7 tokens) and not. Exports both towers (about
    600 MB, a minute on two cores)."""
    make_images(tmp_path / "photos", 4)
    query = make_image(tmp_path / "q.png", seed=321, size=(300, 200))
    Engine(tmp_path / "index", device="cpu").index(
        [tmp_path / "photos"], model="ViT-B-32:none", workers=0
    )
    index = tmp_path / "index"
    folder = _random_reranker_folder(tmp_path / "rr", 512, 77, 49)  # a 7 x 7 grid
    for asked in ("a red circle", str(query)):
        for rerank in (True, False):
            a = _engine(index, monkeypatch, True, reranker=str(folder))
            got = a.search(asked, k=4, rerank=rerank)
            b = _engine(index, monkeypatch, False, reranker=str(folder))
            _assert_same(got, b.search(asked, k=4, rerank=rerank))
            assert got.reranked == (rerank and asked == "a red circle")
    va = _query_vectors(_engine(index, monkeypatch, True), "a red circle")
    vb = _query_vectors(_engine(index, monkeypatch, False), "a red circle")
    assert float(va.vector @ vb.vector) >= 0.9999
    ia = _query_vectors(_engine(index, monkeypatch, True), image=query)
    ib = _query_vectors(_engine(index, monkeypatch, False), image=query)
    assert float(ia.vector @ ib.vector) >= 0.9999
