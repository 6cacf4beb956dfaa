"""Where a run starts from: OUT/checkpoint.pt (resume a stopped run: weights, optimizer,
schedule, step and history) or, for a new run, a saved re-ranker's weights (--init-from)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from xmr.training.reranker_training.config import check_start
from xmr.training.runs import save_atomically

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(out: Path, model, optimizer, schedule, state) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "state": asdict(state),
    }
    save_atomically(payload, out / CHECKPOINT)


def resume(out: Path, model, optimizer, schedule, state, device: str) -> None:
    """Continue from OUT's checkpoint, when there is one."""
    import torch

    path = out / CHECKPOINT
    if not path.exists():
        return
    payload = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    restore_state(state, payload["state"])


def restore_state(state, saved: dict) -> None:
    """Set a RerankerTrainState from a checkpoint's copy of one (the fusion is chosen
    again at the end, so it is not restored)."""
    state.step = saved["step"]
    state.history = saved["history"]
    state.pixel_stem = saved.get("pixel_stem")


def start_from(model, folder: Path) -> list[str]:
    """Load a saved re-ranker's weights into `model`, whose config must match its own
    (the fused stage-1 weight aside: training starts again from the encoder's scale), or
    add options it lacked (reranker_files.ADDABLE), whose new weights start neutral.
    -> the names of those new weights."""
    from safetensors.torch import load_file

    from xmr.retrieval.errors import InputError
    from xmr.retrieval.reranker import start_weights
    from xmr.retrieval.reranker_files import WEIGHTS_FILE

    check_start(folder, asdict(model.config))
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except OSError as exc:
        raise InputError(f"--init-from {folder}: {exc}") from exc
    try:
        return start_weights(model, state)  # float16 files are cast to the model's float32
    except ValueError as exc:
        raise InputError(f"--init-from {folder}: {exc}") from exc
