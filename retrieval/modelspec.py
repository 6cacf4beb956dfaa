"""Parse and resolve `--model NAME[:PRETRAINED]` without importing torch or open_clip.

NAME is one of
  - an xmr model shipped in the package (e.g. `xmr-tiny`), a folder in `retrieval/models/`,
  - an open_clip model name (`ViT-B-32`),
  - a path to an open_clip config JSON (plain model config, or the hub layout with
    `model_cfg` + `preprocess_cfg`),
  - a path to a folder in open_clip's hub layout (`open_clip_config.json` +
    `open_clip_model.safetensors`).
PRETRAINED is an open_clip tag (`laion2b_s34b_b79k`), a path to a local checkpoint
(.safetensors/.pt/.bin), or `none` for random weights (tests and speed benchmarks only).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from xmr.retrieval.errors import InvalidModelSpec

DEFAULT_MODEL = "ViT-B-32:laion2b_s34b_b79k"
SHIPPED_MODELS_DIR = Path(__file__).parent / "models"
HUB_CONFIG_FILE = "open_clip_config.json"
HUB_WEIGHTS_FILE = "open_clip_model.safetensors"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth")
RANDOM_WEIGHTS = "none"


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model name: what to build and where its weights come from."""

    text: str  # the spec as the user wrote it (normalised)
    kind: str  # "shipped" | "openclip" | "config" | "folder"
    name: str  # open_clip model name, or absolute path of the config JSON / folder
    pretrained: str | None  # tag, absolute checkpoint path, "none", or None (folder weights)

    @property
    def random_weights(self) -> bool:
        return self.pretrained == RANDOM_WEIGHTS

    @property
    def canonical(self) -> str:
        """A spec string that resolves to this model again from any working directory."""
        name = Path(self.name).name if self.kind == "shipped" else self.name
        return name if self.pretrained is None else f"{name}:{self.pretrained}"

    def identity(self) -> dict:
        """What makes two encoders produce the same vectors; stored in an index's manifest."""
        name = Path(self.name).name if self.kind == "shipped" else self.name
        ident: dict[str, object] = {"kind": self.kind, "name": name, "pretrained": self.pretrained}
        for key, value in (("config", self.name), ("pretrained", self.pretrained)):
            if value and Path(value).is_file():
                # A local file is identified by content size too, so a replaced checkpoint
                # at the same path is noticed.
                ident[f"{key}_bytes"] = Path(value).stat().st_size
        if self.kind == "config":
            ident["config_sha1"] = hashlib.sha1(Path(self.name).read_bytes()).hexdigest()
        if self.kind in ("shipped", "folder"):
            weights = Path(self.name) / HUB_WEIGHTS_FILE
            if weights.is_file():
                ident["weights_bytes"] = weights.stat().st_size
        return ident


def shipped_models() -> list[str]:
    """Names of the models shipped inside the package."""
    if not SHIPPED_MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_MODELS_DIR.iterdir() if (p / HUB_CONFIG_FILE).is_file())


def parse_model_spec(spec: str) -> ModelSpec:
    """Split and resolve a `NAME[:PRETRAINED]` string; raises InvalidModelSpec with the fix."""
    spec = spec.strip()
    if not spec:
        raise InvalidModelSpec(
            "empty model name; use NAME[:PRETRAINED], e.g. " + DEFAULT_MODEL, setting="model"
        )
    pretrained: str | None
    name, _, pretrained = spec.partition(":")
    pretrained = pretrained.strip() or None

    if pretrained and pretrained.lower() == RANDOM_WEIGHTS:
        pretrained = RANDOM_WEIGHTS
    elif pretrained and _looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise InvalidModelSpec(
                f"checkpoint {pretrained} does not exist; give an existing "
                f".safetensors/.pt/.bin file, an open_clip tag, or 'none'"
            )
        pretrained = str(path.resolve())

    if name in shipped_models():
        return ModelSpec(spec, "shipped", str(SHIPPED_MODELS_DIR / name), pretrained)

    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / HUB_CONFIG_FILE).is_file():
            raise InvalidModelSpec(
                f"folder {name} has no {HUB_CONFIG_FILE}; an open_clip model folder holds "
                f"{HUB_CONFIG_FILE} and {HUB_WEIGHTS_FILE}"
            )
        return ModelSpec(spec, "folder", str(path.resolve()), pretrained)
    if name.endswith(".json"):
        if not path.is_file():
            raise InvalidModelSpec(f"model config {name} does not exist")
        _check_config_json(path)
        if pretrained is None and (path.parent / HUB_WEIGHTS_FILE).is_file():
            # A hub-layout config next to its weights: load the folder.
            return ModelSpec(spec, "folder", str(path.parent.resolve()), None)
        if pretrained is None:
            raise InvalidModelSpec(
                f"model config {name} needs weights: add ':/path/to/checkpoint.safetensors' "
                f"(or ':none' for random weights)"
            )
        return ModelSpec(spec, "config", str(path.resolve()), pretrained)
    if pretrained is None:
        raise InvalidModelSpec(
            f"model '{name}' needs weights: write '{name}:TAG' with an open_clip tag, "
            f"'{name}:/path/to/checkpoint.safetensors', or '{name}:none' for random weights"
        )
    return ModelSpec(spec, "openclip", name, pretrained)


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.endswith(CHECKPOINT_SUFFIXES) or value.startswith("~")


def _check_config_json(path: Path) -> None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidModelSpec(f"model config {path} is not valid JSON: {exc}") from exc
    cfg = data.get("model_cfg", data) if isinstance(data, dict) else None
    if not isinstance(cfg, dict) or not all(
        k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")
    ):
        raise InvalidModelSpec(
            f"model config {path} lacks embed_dim/vision_cfg/text_cfg; "
            f"it must be an open_clip model config"
        )
