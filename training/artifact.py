"""Save a trained open_clip model as a standard artefact other tools can load.

    OUT/open_clip_config.json       {"model_cfg": ..., "preprocess_cfg": ...}  (hub layout)
    OUT/open_clip_model.safetensors weights (float16 to keep the shipped model small)
    OUT/<name>.json                 the plain model config, for open_clip.add_model_config

Loads with `open_clip.create_model_and_transforms("local-dir:OUT")`, or with
`open_clip.add_model_config("OUT/<name>.json")` +
`open_clip.create_model("<name>", pretrained="OUT/open_clip_model.safetensors")`.
"""

from __future__ import annotations

import json
from pathlib import Path

from xmr.retrieval.modelspec import HUB_CONFIG_FILE, HUB_WEIGHTS_FILE


def save_open_clip_artifact(
    model, model_cfg: dict, preprocess_cfg: dict, out: Path, name: str, half: bool = True
) -> Path:
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().to(torch.float16) if half and v.is_floating_point() else v.detach())
        .contiguous()
        .cpu()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(out / HUB_WEIGHTS_FILE))
    hub = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (out / HUB_CONFIG_FILE).write_text(json.dumps(hub, indent=2))
    (out / f"{name}.json").write_text(json.dumps(model_cfg, indent=2))
    return out / HUB_WEIGHTS_FILE


def model_config_of(spec) -> tuple[dict, dict]:
    """(model_cfg, preprocess_cfg) of a parsed ModelSpec, as open_clip would build it."""
    from xmr.retrieval.encoder import _import_open_clip

    open_clip = _import_open_clip()
    if spec.kind in ("shipped", "folder"):
        hub = json.loads((Path(spec.name) / HUB_CONFIG_FILE).read_text())
        return hub["model_cfg"], hub.get("preprocess_cfg", {})
    if spec.kind == "config":
        data = json.loads(Path(spec.name).read_text())
        return data.get("model_cfg", data), data.get("preprocess_cfg", {})
    cfg = open_clip.get_model_config(spec.name)
    return cfg, {}
