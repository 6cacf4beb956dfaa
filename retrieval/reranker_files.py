"""A saved re-ranker's folder, read without torch: which folder `--reranker auto|none|FOLDER`
names, its config, its name in messages and the fingerprint of its files.

Loading the model itself is reranker.py's job (`resolve_reranker`, `load_reranker`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from xmr.retrieval.errors import InvalidModelSpec
from xmr.retrieval.modelspec import ModelSpec

if TYPE_CHECKING:
    from xmr.retrieval.encoder import LazyEncoder, TextEncoder


RERANKER_SUBDIR = "reranker"  # a model folder may carry its re-ranker here
# ... and the re-rankers it shipped before, "reranker-v1", "reranker-v2", ...: indexes built
# for one of those keep re-ranking with it until they are re-indexed (model_rerankers)
EARLIER_PREFIX = "reranker-v"
CONFIG_FILE = "reranker_config.json"  # what `xmr train-reranker --out` writes
WEIGHTS_FILE = "reranker.safetensors"


def reranker_folder(
    choice: str | None, model: ModelSpec | TextEncoder | LazyEncoder
) -> Path | None:
    """The folder `choice` names (auto: the model's own), without loading anything.
    `model`: an encoder or its ModelSpec."""
    if choice in (None, "", "none"):
        return None
    if choice == "auto":
        spec = model if isinstance(model, ModelSpec) else model.spec
        folder = Path(spec.name) / RERANKER_SUBDIR
        if spec.kind not in ("shipped", "folder") or not folder.is_dir():
            return None
        return folder
    return check_reranker_choice(choice)


def model_rerankers(model: ModelSpec | TextEncoder | LazyEncoder) -> list[Path]:
    """The re-rankers a shipped or folder model carries, its current one first, then the
    earlier ones newest first; `auto` picks the first that an index's tokens suit."""
    current = reranker_folder("auto", model)
    if current is None:
        return []
    earlier = [
        (int(version), path)
        for path in current.parent.glob(f"{EARLIER_PREFIX}*")
        if path.is_dir() and (version := path.name[len(EARLIER_PREFIX) :]).isdigit()
    ]
    return [current] + [path for _, path in sorted(earlier, reverse=True)]


def reranker_name(folder: Path) -> str:
    """How messages name the re-ranker in `folder` (a model's own: MODEL/reranker, or
    MODEL/reranker-v1 for one it shipped before)."""
    folder = Path(folder)
    if folder.name == RERANKER_SUBDIR or folder.name.startswith(EARLIER_PREFIX):
        return f"{folder.parent.name}/{folder.name}"
    return folder.name


def folder_config(folder: Path) -> dict:
    """The re-ranker config saved in `folder`, read without torch."""
    import json

    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidModelSpec(f"{folder} is not an xmr re-ranker ({exc})") from exc
    if not isinstance(config, dict):
        raise InvalidModelSpec(f"{path} is not an xmr re-ranker config")
    return config


class TokenSource(NamedTuple):
    """What each stored image token holds: the output of vision block `layer` (None: the
    last), then, when `pixels`, its patch's input pixels (3 x p x p, for a re-ranker's
    pixel stem; p is the input side over the grid side)."""

    layer: int | None = None
    pixels: bool = False


def folder_token_source(folder: Path | None) -> TokenSource:
    """The image tokens the re-ranker in `folder` reads (no folder: the last block's, no
    pixels), from its config alone: an index picks what it stores before any load."""
    config = {} if folder is None else folder_config(folder)
    layer = config.get("image_token_layer")
    return TokenSource(None if layer is None else int(layer), bool(config.get("pixel_patch")))


def folder_fingerprint(folder: Path) -> str:
    """The fingerprint of the re-ranker saved in `folder`, from its files alone (no torch):
    `xmr index` compares it with the kept image features' before deciding to load anything.
    Leaves out the stage-1 weight, which calibration changes without touching the
    features (the re-ranker's image stem output)."""
    folder = Path(folder)
    config = folder_config(folder)
    try:
        weights = (folder / WEIGHTS_FILE).read_bytes()
    except OSError as exc:
        raise InvalidModelSpec(f"{folder} is not an xmr re-ranker ({exc})") from exc
    digest = config_digest(config)
    digest.update(weights)
    return digest.hexdigest()[:16]


# Options added after re-rankers were first saved, and the value that means "off": a
# config with one off is the config of a re-ranker saved before it existed, so it digests
# the same (config_digest) and may start a run that turns it on (--init-from), its new
# weights starting neutral (reranker.Reranker.neutral_parameters).
ADDABLE = {"patch_position": "none", "relation_readout": False, "pixel_patch": 0}


def config_digest(config: dict):
    """sha256 of a re-ranker config, the start of either fingerprint (folder_fingerprint,
    reranker.fingerprint). Leaves out the stage-1 weight: calibration changes it, and the
    image features do not depend on it. An ADDABLE option that is off is left out too, so
    adding one keeps older digests."""
    import hashlib
    import json

    kept = {
        k: v
        for k, v in config.items()
        if k != "stage1_weight" and not (k in ADDABLE and v == ADDABLE[k])
    }
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode())


def check_reranker_choice(choice: str) -> Path | None:
    """The folder of an explicit `--reranker FOLDER` (None for auto/none); raises when it
    does not exist, before a command does any work."""
    if choice in (None, "", "none", "auto"):
        return None
    from xmr.retrieval.matcher_names import KNOWN, matcher_source

    if matcher_source(choice) is not None:  # a pretrained matcher (matcher_names.py)
        return None
    folder = Path(choice).expanduser()
    if not folder.is_dir():
        raise InvalidModelSpec(
            f"re-ranker folder {choice} does not exist; give the folder that "
            f"`xmr train-reranker` wrote, a BLIP model ({', '.join(KNOWN)}, a Hugging Face "
            "id or a folder in its layout), 'auto' or 'none'",
            setting="reranker",
        )
    return folder
