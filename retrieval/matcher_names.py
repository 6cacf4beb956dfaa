"""Which pretrained matcher `--reranker X` names, decided without torch or transformers.

A pretrained matcher (today BLIP ITM, see blip_itm.py) brings its own vision tower, so
it is named like a model, not like a folder `xmr train-reranker` wrote:

    blip-itm-base-coco | blip-itm-base-flickr | blip-itm-large-coco | blip-itm-large-flickr
    OWNER/NAME (a Hugging Face repository id)
    FOLDER     (Hugging Face layout: config.json of a BLIP model + weights + tokenizer
                files + preprocessor_config.json, as save_pretrained writes them)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

FAMILY = "blip-itm"
INSTALL_HINT = "pip install 'xmr[blip]' (from a checkout: pip install -e '.[blip]')"
DEFAULT_MATCHER = "blip-itm-base-coco"
KNOWN = {
    "blip-itm-base-coco": "Salesforce/blip-itm-base-coco",
    "blip-itm-base-flickr": "Salesforce/blip-itm-base-flickr",
    "blip-itm-large-coco": "Salesforce/blip-itm-large-coco",
    "blip-itm-large-flickr": "Salesforce/blip-itm-large-flickr",
}
_HUB_ID = re.compile(r"^(hf:)?[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
MODEL_TYPES = ("blip",)


@dataclass(frozen=True)
class MatcherSource:
    """Where a matcher's files come from: a hub repository or a local folder."""

    kind: str  # "hub" | "folder"
    ref: str  # repository id, or the folder's absolute path
    name: str  # how messages and answers name it

    def as_dict(self) -> dict:
        return {"kind": self.kind, "ref": self.ref, "name": self.name}

    @classmethod
    def from_dict(cls, entry: dict) -> MatcherSource:
        return cls(str(entry["kind"]), str(entry["ref"]), str(entry.get("name") or entry["ref"]))


def is_matcher_folder(folder: Path) -> bool:
    """A folder in Hugging Face layout whose config.json describes a BLIP model."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") in MODEL_TYPES


def matcher_source(choice: str | None) -> MatcherSource | None:
    """The matcher `choice` names, or None when it names none (auto, none, a native
    re-ranker's folder). Reads at most one small JSON file."""
    if choice in (None, "", "none", "auto"):
        return None
    if choice in KNOWN:
        return MatcherSource("hub", KNOWN[choice], choice)
    folder = Path(choice).expanduser()
    if folder.is_dir():
        if is_matcher_folder(folder):
            resolved = folder.resolve()
            return MatcherSource("folder", str(resolved), resolved.name)
        return None  # a native re-ranker's folder (reranker_files.py decides)
    if _HUB_ID.match(choice) and not choice.startswith((".", "/", "~")):
        repo = choice.removeprefix("hf:")
        return MatcherSource("hub", repo, repo)
    return None
