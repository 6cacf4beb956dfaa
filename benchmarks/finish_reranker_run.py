"""Finish a stopped `xmr train-reranker` run from its last checkpoint, without embedding the
training split again: the steps the checkpoint holds, then what the trainer does at the end
(the final score's stage-1 weight chosen on the validation split, the shown score's
calibration, the saved re-ranker and train_log.json).

For experiments cut short by a time limit after a validation (each validation writes
OUT/checkpoint.pt and OUT/train_log.json). Resuming the same command with a smaller
--steps does the same, after minutes of embedding the training split again.

    python benchmarks/finish_reranker_run.py OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import log


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the run's --out folder")
    args = parser.parse_args()

    import torch

    from xmr.retrieval.encoder import load_encoder
    from xmr.retrieval.reranker import save_reranker
    from xmr.training.reranker_training.checkpoints import CHECKPOINT, restore_state
    from xmr.training.reranker_training.config import RerankerTrainConfig, RerankerTrainState
    from xmr.training.reranker_training.loop import (
        _calibrate,
        _calibrate_scores,
        _new_reranker,
        _validation_set,
    )
    from xmr.training.reranker_training.losses import FeatureTensors
    from xmr.training.train_log import write_train_log

    logged = json.loads((args.out / "train_log.json").read_text())
    config = RerankerTrainConfig(**logged["config"])
    if config.threads:
        torch.set_num_threads(config.threads)
    payload = torch.load(args.out / CHECKPOINT, map_location="cpu", weights_only=False)
    state = RerankerTrainState()
    restore_state(state, payload["state"])
    encoder = load_encoder(config.model, "cpu")
    val = _validation_set(config, encoder)
    if val is None:
        raise SystemExit(f"{config.data} has no validation split to calibrate on")
    model = _new_reranker(config, encoder, FeatureTensors.of(val[1]))  # shapes from val
    model.load_state_dict(payload["model"])
    model.eval()
    log(f"{args.out}: step {state.step} of {config.steps}; calibrating on validation")
    extra = {"fusion": _calibrate(model, val, config.candidates, state)}
    save_reranker(model, args.out)
    extra["score_calibration"] = _calibrate_scores(model, val, config.candidates, args.out)
    extra["stopped_at_step"] = state.step
    if state.pixel_stem is not None:
        extra["pixel_stem"] = state.pixel_stem
    write_train_log(args.out, config, state.history, **extra)
    log(f"saved {args.out} (stage-1 weight {model.config.stage1_weight:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
