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

CONFIG_PREFIX = "config:"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # training/configs


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
    from xmr.retrieval.matcher_names import KNOWN, matcher_source

    folder = Path(init_from).expanduser()
    if folder.is_dir():
        return _from_folder(str(folder), str(folder))
    source = matcher_source(init_from)  # the names `--reranker` takes, one rule for both
    if source is not None and source.kind == "hub":
        from xmr.retrieval.hub_weights import prepare_repo

        try:
            with prepare_repo(source.ref, source.name):  # cached, or downloaded if allowed
                return _from_folder(source.ref, source.ref)
        except ModelNotAvailable as exc:
            raise ModelNotAvailable(
                f"{exc}; or train from random weights with --init-from config:blip-tiny"
            ) from exc
    raise InputError(
        f"--init-from {init_from}: not a folder, a checkpoint name or a Hugging Face id. "
        f"Use one of {', '.join(KNOWN)}, OWNER/NAME, a folder in Hugging Face layout, or "
        f"config:NAME with NAME one of {', '.join(shipped_configs())} (or config:FILE.json)"
    )


def _from_folder(folder: str, source: str) -> Start:
    """From a folder in Hugging Face layout, or a hub repository id."""
    from transformers import AutoTokenizer, BlipForImageTextRetrieval, BlipImageProcessor

    try:
        model = BlipForImageTextRetrieval.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        processor = BlipImageProcessor.from_pretrained(folder)
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
