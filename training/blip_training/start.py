"""Where a BLIP ITM run starts: `--init-from NAME | HF-ID | FOLDER | config:JSON`.

  blip-itm-base-coco ...   a named Salesforce checkpoint (NAMED below)
  owner/name               any Hugging Face repository with BlipForImageTextRetrieval weights
  FOLDER                   a local folder in Hugging Face layout (config.json, weights,
                           tokenizer, preprocessor_config.json): one this command wrote
  config:blip-tiny         random weights from a shipped BlipConfig (training/configs), or
  config:PATH.json         from any BlipConfig JSON; the tokenizer is a WordPiece vocabulary
                           of the training captions (vocab.py), the pixels BLIP's processor at
                           the config's image size

Hub weights follow the engine's policy for encoder weights (retrieval/weights.py): cached
means no network call; not cached means a download after a short reachability probe;
offline or with XMR_OFFLINE=1 the start fails within seconds, saying what to do instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from xmr.retrieval.errors import InputError, ModelNotAvailable

NAMED = {
    "blip-itm-base-coco": "Salesforce/blip-itm-base-coco",
    "blip-itm-large-coco": "Salesforce/blip-itm-large-coco",
    "blip-itm-base-flickr": "Salesforce/blip-itm-base-flickr",
    "blip-itm-large-flickr": "Salesforce/blip-itm-large-flickr",
}
CONFIG_PREFIX = "config:"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # training/configs
HUB_HOST = ("huggingface.co", 443)
HUB_FILES = ["*.json", "*.safetensors", "*.txt"]  # config, weights, tokenizer, processor


@dataclass
class Start:
    model: object  # transformers BlipForImageTextRetrieval, float32 on the CPU
    tokenizer: object
    processor: object  # BlipImageProcessor
    source: str  # what was loaded, for the train log
    pretrained: bool  # False for random weights from a config


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("blip-*.json"))


def load_start(init_from: str, captions) -> Start:
    """The model, tokenizer and image processor a run starts from (see the module doc);
    `captions` (the training captions) make the vocabulary of a config start."""
    if init_from.startswith(CONFIG_PREFIX):
        return _from_config(init_from[len(CONFIG_PREFIX) :], captions)
    folder = Path(init_from).expanduser()
    if folder.is_dir():
        return _from_folder(folder, str(folder))
    repo = NAMED.get(init_from, init_from)
    if init_from in NAMED or _looks_like_repo(init_from):
        return _from_folder(hub_folder(repo), repo)
    raise InputError(
        f"--init-from {init_from}: not a folder, a checkpoint name or a Hugging Face id. "
        f"Use one of {', '.join(NAMED)}, OWNER/NAME, a folder in Hugging Face layout, or "
        f"config:NAME with NAME one of {', '.join(shipped_configs())} (or config:FILE.json)"
    )


def _looks_like_repo(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def hub_folder(repo: str) -> Path:
    """The local snapshot of a hub repository: cached, else downloaded when allowed and
    reachable; ModelNotAvailable at once otherwise."""
    from xmr.retrieval.weights import OFFLINE_ENV, downloads_forbidden, reachable

    cached = _cached_snapshot(repo)
    if cached is not None:
        return cached
    why = None
    if downloads_forbidden():
        why = f"{OFFLINE_ENV} is set"
    elif not reachable(*HUB_HOST):
        why = f"{HUB_HOST[0]} cannot be reached"
    if why is None:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo, allow_patterns=HUB_FILES))
        except Exception as exc:  # a missing repository, a dropped connection
            why = f"the download failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"
    raise ModelNotAvailable(
        f"cannot load BLIP weights {repo} (not on this machine and {why}). Pass a local "
        f"folder in Hugging Face layout, run once on a machine with network (the weights are "
        f"then cached), or train from random weights with --init-from config:blip-tiny"
    )


def _cached_snapshot(repo: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError), or a half-written cache entry
        return None


def _from_folder(folder: Path, source: str) -> Start:
    from transformers import AutoTokenizer, BlipForImageTextRetrieval, BlipImageProcessor

    try:
        model = BlipForImageTextRetrieval.from_pretrained(str(folder))
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        processor = BlipImageProcessor.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"--init-from {source}: not a BLIP ITM checkpoint in Hugging Face layout "
            f"(config.json, model.safetensors, tokenizer files, preprocessor_config.json): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    return Start(model.float(), tokenizer, processor, source, pretrained=True)


def _from_config(name: str, captions) -> Start:
    """Random weights from a BlipConfig JSON, with a tokenizer of the captions' words."""
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor

    from xmr.training.blip_training.vocab import build_tokenizer

    path = CONFIGS / f"{name}.json" if name in shipped_configs() else Path(name).expanduser()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(
            f"--init-from config:{name}: cannot read a BlipConfig JSON there ({exc}); shipped "
            f"configs: {', '.join(shipped_configs())}"
        ) from exc
    tokenizer = build_tokenizer(captions)
    text = dict(raw.get("text_config", {}))
    text.update(  # the vocabulary decides these, whatever the file says
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    # BlipVisionConfig's default initializer_range is 1e-10, fine under pretrained weights
    # but a dead tower from scratch (every vision output ~1e-7): BERT's 0.02 unless given.
    vision = {"initializer_range": 0.02, **raw.get("vision_config", {})}
    if text.get("encoder_hidden_size", vision.get("hidden_size")) != vision.get("hidden_size"):
        raise InputError(
            f"--init-from config:{name}: text_config.encoder_hidden_size must equal "
            "vision_config.hidden_size (the text cross-attends to the vision tokens)"
        )
    try:
        config = BlipConfig(**{**raw, "text_config": text, "vision_config": vision})
    except (TypeError, ValueError) as exc:
        raise InputError(f"--init-from config:{name}: not a valid BlipConfig: {exc}") from exc
    size = config.vision_config.image_size
    processor = BlipImageProcessor(size={"height": size, "width": size})
    model = BlipForImageTextRetrieval(config)
    return Start(model, tokenizer, processor, f"config:{name}", pretrained=False)
