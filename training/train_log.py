"""OUT/train_log.json: the run's config and its validation rows, kept current during training.

Written after every validation row, not only at the end, so a long run (minutes to hours on
a CPU) can be followed with `cat OUT/train_log.json`, also under `--quiet`, and a killed run
still leaves what it had measured. Replaced atomically: a reader never sees half a file.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

TRAIN_LOG = "train_log.json"


def write_train_log(out: Path, config, history: list[dict], **extra) -> Path:
    """{"config": asdict(config), "history": history, **extra} -> OUT/train_log.json."""
    path = Path(out) / TRAIN_LOG
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"config": asdict(config), "history": history, **extra}, indent=2))
    tmp.replace(path)
    return path
