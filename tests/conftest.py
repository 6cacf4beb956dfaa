"""Shared fixtures: a tiny real open_clip encoder, generated images, and ways to run `xmr`.

Everything here is real: the encoder is an open_clip CLIP built from a tiny config with
seeded random weights (spec `CONFIG.json:none`), images are PNG/JPEG files drawn with PIL,
the index is real FAISS + SQLite, and `run_xmr` runs the installed `xmr` console script
in a subprocess.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
XMR = Path(sys.executable).parent / "xmr"

# An open_clip CLIP small enough to build in a fraction of a second and encode thousands
# of 32 px images a second: 32-d joint space, 4x4 patches of 8 px, 16 text tokens.
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# A second, different model (one more vision layer), for encoder-mismatch tests.
OTHER_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


# -- the fast lane: `pytest -m "not slow"` trains nothing -------------------------------------
TRAINING_FIXTURES = {"trained", "trained_reranker"}


def pytest_collection_modifyitems(config, items):
    """A test that uses a trained fixture must be marked slow (session fixtures are built
    before any per-test guard could see them)."""
    unmarked = [
        item.nodeid
        for item in items
        if TRAINING_FIXTURES & set(item.fixturenames) and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests use a trained fixture but are not marked slow: " + ", ".join(unmarked)
        )


@pytest.fixture(autouse=True)
def fast_lane_trains_nothing(request):
    """In a test not marked slow, an optimizer step is an error that names the fix."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    def refuse(optimizer, args, kwargs):
        raise RuntimeError(
            f"{request.node.nodeid} trains (an optimizer step) but is not marked slow: "
            "add @pytest.mark.slow, or keep the fast lane free of training"
        )

    handle = register_optimizer_step_pre_hook(refuse)
    try:
        yield
    finally:
        handle.remove()


# -- models ------------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    """ONNX exports (retrieval/onnx/store.py) go to a folder of this session, never to
    the user's cache; subprocesses inherit it through the environment."""
    folder = tmp_path_factory.mktemp("xmr-cache")
    os.environ["XMR_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_config(models_dir) -> Path:
    path = models_dir / "tiny.json"
    path.write_text(json.dumps(TINY_CFG))
    return path


@pytest.fixture(scope="session")
def tiny_spec(tiny_config) -> str:
    return f"{tiny_config}:none"


@pytest.fixture(scope="session")
def other_spec(models_dir) -> str:
    path = models_dir / "other.json"
    path.write_text(json.dumps(OTHER_CFG))
    return f"{path}:none"


@pytest.fixture(scope="session")
def encoder(tiny_spec):
    """The tiny encoder, loaded once per session (open_clip's import is the slow part)."""
    import torch

    from xmr.retrieval.encoder import load_encoder

    # One thread: the machines running the suite share their cores, and a 32 px model
    # gains nothing from a second thread that has to wait for a busy core.
    torch.set_num_threads(1)
    return load_encoder(tiny_spec, "cpu")


# -- images ------------------------------------------------------------------------------
def make_image(path: Path, seed: int, size: tuple[int, int] = (48, 40), **save_kwargs) -> Path:
    """A distinct picture: random background, shapes in random colours, and pixel noise.

    The format follows the extension; the same seed always draws the same picture.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        x0, x1 = sorted(int(v) for v in rng.integers(0, w, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, h, 2))
        box = (x0, y0, x1 + 4, y1 + 4)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle(box, fill=colour)
        else:
            draw.ellipse(box, fill=colour)
    pixels = np.asarray(image).astype(np.int16)
    pixels += rng.integers(-20, 21, pixels.shape, dtype=np.int16)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save_kwargs)
    return path


def bump_mtime(path: Path, seconds: int = 10) -> None:
    """Move a file's mtime forward, so a rewrite is seen as a change on any file system."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def make_images(folder: Path, n: int, start_seed: int = 0, ext: str = ".png") -> list[Path]:
    return [make_image(folder / f"img{i:04d}{ext}", start_seed + i) for i in range(n)]


def make_bad_files(folder: Path) -> dict[str, str]:
    """One file of every kind that cannot be indexed -> the reason text expected for it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is a shopping list, not a photo\n")
    (folder / "noise.png").write_bytes(np.random.default_rng(0).bytes(4000))
    png = make_image(folder / "whole.png", seed=70).read_bytes()
    (folder / "whole.png").unlink()
    (folder / "half.png").write_bytes(png[: len(png) // 2])
    jpg = make_image(folder / "whole.jpg", seed=71, size=(96, 96)).read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "half.jpg").write_bytes(jpg[: len(jpg) // 2])
    make_image(folder / "bomb.png", seed=72, size=(200, 200))  # 40,000 px > --max-pixels
    (folder / "scans.jpg").write_bytes(jpeg_scan_bomb())
    return {
        "empty.jpg": "empty file",
        "notes.jpg": "not an image",
        "noise.png": "not an image",
        "half.png": "corrupt or truncated",
        "half.jpg": "corrupt or truncated",
        "bomb.png": "exceeds the limit",
        "scans.jpg": "2,010 scans",
    }


def jpeg_scan_bomb(repeats: int = 2000) -> bytes:
    """A small progressive JPEG whose last scan is repeated `repeats` times: every copy is
    another full decoding pass (a few KB here; minutes of work at tens of megapixels)."""
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (40, 120, 200)).save(out, "JPEG", progressive=True)
    data = out.getvalue()
    last_scan, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last_scan:end] * repeats + data[end:]


MAX_PIXELS = 10_000  # above every good test image (48x40, 96x96), below the bomb


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Twelve distinct images, some in a subfolder, PNG and JPEG."""
    folder = tmp_path / "photos"
    make_images(folder, 8)
    make_images(folder / "trip", 4, start_seed=100, ext=".jpg")
    return folder


def random_reranker(dim=32, text_len=12, image_tokens=9, seed=0, **config):
    """A random re-ranker that speaks (a normal head, not a trained one's zeros), as a
    runtime on the CPU; `config`: other RerankerConfig fields."""
    import torch

    from xmr.retrieval.reranker import Reranker, RerankerConfig, RerankerRuntime

    torch.manual_seed(seed)
    config = RerankerConfig(
        token_dim=dim,
        text_len=text_len,
        image_tokens=image_tokens,
        **{"width": 32, "layers": 2, "heads": 4, **config},
    )
    model = Reranker(config).eval()
    torch.nn.init.normal_(model.head.weight)
    if config.patch_position != "none":  # starts at zero, which would test nothing
        torch.nn.init.normal_(model.grid_position.weight, std=0.2)
    if config.relation_readout:  # the same
        torch.nn.init.normal_(model.relation_direction.weight, std=0.3)
    if config.pixel_patch:  # the same
        torch.nn.init.normal_(model.pixel_stem.out.weight, std=1.0)
    return RerankerRuntime(model, f"random-pool{config.image_pool}", "cpu")


def prepared_training(folder: Path, seed: int, **options):
    """The re-ranker trainer's own training data (embedded split, pools, caption edits) for
    the 40 training scenes of a 50-scene generated corpus in `folder`, with a fresh
    re-ranker (width 32, one layer, conv stem, token alignment) for it; `options`: other
    RerankerTrainConfig fields. -> (config, encoder, data, model)."""
    import torch

    from xmr.retrieval.encoder import load_encoder
    from xmr.training.corpus import make_corpus
    from xmr.training.reranker_training import RerankerTrainConfig
    from xmr.training.reranker_training.loop import _new_reranker, _training_data

    torch.set_num_threads(1)
    corpus = make_corpus(folder / "shapes", 50, seed=seed)
    config = RerankerTrainConfig(
        data=str(corpus.captions_path),
        model="xmr-tiny",
        out=str(folder / "out"),
        batch_size=8,
        width=32,
        layers=1,
        image_pool=1,
        image_stem="conv",
        token_alignment=True,
        **options,
    )
    encoder = load_encoder(config.model, "cpu")
    data = _training_data(config, encoder, None)
    torch.manual_seed(0)
    return config, encoder, data, _new_reranker(config, encoder, data.tensors)


# -- the library -------------------------------------------------------------------------
def index_with(index_dir: Path, encoder, folders, **options):
    """Run the library's `index_folders` once (decoding in-process unless told)."""
    from xmr.indexer.images import IndexOptions, index_folders
    from xmr.retrieval.library import Library

    options.setdefault("workers", 0)
    with Library.open_or_create(index_dir, encoder) as library:
        return index_folders(library, encoder, [Path(f) for f in folders], IndexOptions(**options))


def db_rows(index_dir: Path, table: str = "images") -> list[dict]:
    """Rows of the index's SQLite file, read with plain sqlite3 (not through xmr)."""
    with sqlite3.connect(index_dir / "xmr.sqlite3") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id")]


def indexed_paths(index_dir: Path) -> dict[str, int]:
    """path -> id of every indexed (not skipped) image."""
    return {r["path"]: r["id"] for r in db_rows(index_dir) if r["state"] == "indexed"}


def faiss_ids(index_dir: Path, collection: str = "images") -> set[int]:
    """Ids in the FAISS index as an index opened read-only sees it."""
    from xmr.retrieval.library import Library

    with Library.open(index_dir) as library:
        return set(getattr(library, collection).index.ids().tolist())


def stored_vectors(index_dir: Path, ids, collection: str = "images") -> np.ndarray:
    from xmr.retrieval.library import Library

    with Library.open(index_dir) as library:
        return getattr(library, collection).vectors.read(np.asarray(list(ids), dtype=np.int64))


# -- the command line --------------------------------------------------------------------
def xmr_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    env.pop("XMR_INDEX", None)
    env.update(extra)
    return env


def run_xmr(*args, env: dict | None = None, timeout: float = 180, cwd=None):
    """Run the installed `xmr` script; returns the CompletedProcess (text mode)."""
    return subprocess.run(
        [str(XMR), *map(str, args)],
        capture_output=True,
        text=True,
        env=env or xmr_env(),
        timeout=timeout,
        cwd=cwd or REPO,
    )


def torch_threads_during(run):
    """run() -> (its result, torch's thread count right after it), the count then restored:
    an in-process `--threads` run must not leave the rest of the suite on its setting."""
    import torch

    before = torch.get_num_threads()
    try:
        result = run()
        return result, torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def cli():
    """Invoke `xmr` in-process through typer's CliRunner: cli(*args) -> Result."""
    from typer.testing import CliRunner

    from xmr.cli.main import app

    runner = CliRunner()

    def invoke(*args, env: dict | None = None):
        return runner.invoke(app, [str(a) for a in args], env=env)

    return invoke


# -- a generated corpus and a tiny encoder trained on it (training, re-ranker, bench) -----
TRAIN_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 96, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 48, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def shapes_corpus(tmp_path_factory):
    from xmr.training.corpus import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus") / "shapes", 600, seed=5)


@pytest.fixture(scope="session")
def train_config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "train-tiny.json"
    path.write_text(json.dumps(TRAIN_CFG))
    return path


def tiny_encoder_run(corpus, config_path: Path, out: Path, **settings):
    """An EncoderTrainConfig for the tiny test CLIP on a generated corpus: batches of 64,
    as many epochs as `max_steps` needs; `settings` override."""
    from xmr.training.encoder_training import EncoderTrainConfig

    base = dict(epochs=100, batch_size=64, seed=0)
    return EncoderTrainConfig(
        data=str(corpus.captions_path),
        model=f"{config_path}:none",
        out=str(out),
        **(base | settings),
    )


@pytest.fixture(scope="session")
def trained(shapes_corpus, train_config_path, tmp_path_factory):
    """A tiny encoder trained for 300 steps (tests that use it are marked slow)."""
    from xmr.training.encoder_training import train_encoder

    out = tmp_path_factory.mktemp("trained") / "tiny"
    config = tiny_encoder_run(
        shapes_corpus,
        train_config_path,
        out,
        lr=2e-3,
        warmup_steps=20,
        max_steps=300,
        name="xmr-test-tiny",
    )
    state = train_encoder(config)
    return out, state


@pytest.fixture(scope="session")
def trained_reranker(trained, shapes_corpus, tmp_path_factory):
    """A re-ranker trained for 300 steps on the tiny trained encoder's frozen tokens."""
    from xmr.training.reranker_training import RerankerTrainConfig, train_reranker

    encoder_dir, _ = trained
    out = tmp_path_factory.mktemp("reranker") / "rr"
    config = RerankerTrainConfig(
        data=str(shapes_corpus.captions_path),
        model=str(encoder_dir),
        out=str(out),
        steps=300,
        batch_size=32,
        lr=1e-3,
        warmup_steps=30,
        width=64,
        layers=2,
        heads=4,
        val_every=300,
        val_images=60,
        candidates=8,
        seed=0,
    )
    state = train_reranker(config)
    return out, state


# -- a running `xmr serve` ---------------------------------------------------------------
class Served:
    """A real `xmr serve` subprocess on a free loopback port, and plain HTTP to it."""

    def __init__(self, index_dir: Path, *extra, env: dict | None = None):
        self.index_dir = Path(index_dir)
        self.token = None
        if "--token" in extra:
            self.token = extra[list(extra).index("--token") + 1]
        # stderr to a file: the server logs every request, and a pipe nobody reads
        # would fill and stall it.
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [str(XMR), "serve", "--index", str(index_dir), "--port", "0", *map(str, extra)],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            text=True,
            env=env or xmr_env(),
        )
        self.url = self._wait_until_ready()

    def _wait_until_ready(self, seconds: float = 180) -> str:
        import time

        deadline = time.monotonic() + seconds
        record = self.index_dir / "server.json"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"xmr serve exited: {self.stderr()}")
            try:
                data = json.loads(record.read_text())
                if data["pid"] == self.process.pid:
                    return data["url"]
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError("xmr serve did not come up")

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None):
        """(status, headers, body bytes) of one request; errors are answers too."""
        import urllib.error
        import urllib.request

        headers = dict(headers or {})
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, path: str, **kwargs):
        status, _, body = self.request(path, **kwargs)
        return status, json.loads(body)

    def stderr(self) -> str:
        """What the server has logged so far."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.log.closed:
            self.stderr_text = self.stderr()  # all it logged, kept after the stop
            self.log.close()


def multipart(fields: dict, file_field: str, filename: str, data: bytes):
    """(body, headers) of a multipart/form-data upload, as a browser sends it."""
    boundary = "testboundary7MA4YWxkTrZu0gW"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def besides_random_weights(notices: list[str]) -> list[str]:
    """The notices other than the random-weights one that every answer and write of the
    tiny test models carries (tests/test_engine.py asserts that one on its own)."""
    return [n for n in notices if "has random weights" not in n]
