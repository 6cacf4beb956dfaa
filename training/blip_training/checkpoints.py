"""OUT/checkpoint.pt, to resume a stopped run (weights, optimizer, schedule, step, history,
the BlipConfig), and the finished folder in Hugging Face layout.

The tokenizer and image processor are written into OUT before the first step, so a
resumed run reads the same vocabulary back instead of rebuilding it."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from xmr.training.runs import save_atomically

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(out: Path, model, optimizer, schedule, state) -> None:
    payload = {
        "blip_config": model.config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "state": asdict(state),
    }
    save_atomically(payload, out / CHECKPOINT)


def resumable(out: Path) -> bool:
    return (out / CHECKPOINT).is_file()


def load_checkpoint(out: Path, device: str) -> dict:
    import torch

    return torch.load(out / CHECKPOINT, map_location=device, weights_only=False)


def model_from_checkpoint(payload: dict):
    """The BlipForImageTextRetrieval a checkpoint was taken of, its weights loaded."""
    from transformers import BlipConfig, BlipForImageTextRetrieval

    model = BlipForImageTextRetrieval(BlipConfig.from_dict(payload["blip_config"]))
    model.load_state_dict(payload["model"])
    return model


def restore(payload: dict, optimizer, schedule, state) -> None:
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    saved = payload["state"]
    state.step, state.history, state.losses = saved["step"], saved["history"], saved["losses"]


def save_processing(out: Path, tokenizer, processor) -> None:
    tokenizer.save_pretrained(str(out))
    processor.save_pretrained(str(out))


def save_folder(out: Path, model) -> None:
    """config.json + model.safetensors beside the tokenizer and processor files: what
    `BlipForImageTextRetrieval.from_pretrained(out)` and `--reranker OUT` read.
    transformers' own progress bar is off meanwhile: library code does not print."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        model.save_pretrained(str(out))
    finally:
        if shown:
            logging.enable_progress_bar()
