"""`xmr train-encoder`: contrastive (CLIP) training of an open_clip dual encoder.

From scratch for a tiny config (`cfg.json:none`) or fine-tuning any open_clip model on a
user's image-caption pairs. Images are decoded once into memory (training/pixels.py),
captions tokenised once; each step draws a batch of images and one random caption per
image and minimises open_clip's `ClipLoss`. Checkpoints every epoch (resumable, with
RNG state), validation recall@k at each epoch's end, and a standard open_clip artefact
at the end (training/artifact.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from xmr.retrieval.errors import InputError
from xmr.training.runs import save_atomically, seed_everything, warmup_cosine
from xmr.training.train_log import write_train_log

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"


@dataclass
class EncoderTrainConfig:
    data: str  # Karpathy-format JSON (xmr make-corpus, COCO, Flickr30k)
    model: str  # NAME[:PRETRAINED]
    out: str
    images_root: str | None = None
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0
    max_steps: int | None = None  # stop early (tests, time budgets)
    val_images: int = 1000  # cap on validation images per epoch
    threads: int | None = None
    name: str = "xmr-encoder"
    # Train on an xmr corpus's short phrases too ("a red circle", "two squares"), beside its
    # sentences: queries people type are phrases (load_dataset's `phrases`).
    phrases: bool = False
    # With phrases: leave out of a step's negatives the pairs where one image's phrase is
    # true of another image of the batch ("circles" and every image with circles), read
    # from the corpus's scenes (training/phrase_truth.py).
    mask_true_phrases: bool = False


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    history: list[dict] = field(default_factory=list)  # one row per epoch: loss, recall


def train_encoder(config: EncoderTrainConfig, progress=None, validated=None) -> TrainState:
    """Train; `progress(step, total_steps, loss, images_per_second)` after each step,
    `validated(row)` with each epoch's row (loss, validation recall) once it is measured."""
    import torch
    from open_clip import ClipLoss

    from xmr.evaluation.datasets import load_dataset
    from xmr.retrieval.encoder import build_open_clip
    from xmr.retrieval.modelspec import parse_model_spec
    from xmr.training.artifact import model_config_of, save_open_clip_artifact
    from xmr.training.pixels import preload_pixels

    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    out = Path(config.out)
    spec = parse_model_spec(config.model)
    model, preprocess, tokenizer = build_open_clip(spec)
    model_cfg, _ = model_config_of(spec)
    from open_clip.model import get_model_preprocess_cfg

    preprocess_cfg = get_model_preprocess_cfg(model)

    train = load_dataset(config.data, config.images_root, split="train", phrases=config.phrases)
    truth = _phrase_truth(config, train)
    val = _val_split(config)
    pixels = preload_pixels(train.image_paths, preprocess)  # (N, 3, H, W) float16
    tokens = tokenizer(train.captions)  # (T, ctx)
    captions_of = [np.asarray(ids) for ids in train.image_to_texts]

    steps_per_epoch = max(1, len(train.image_paths) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup_steps, total_steps)
    )
    state = TrainState()
    resumed = _maybe_resume(out, model, optimizer, schedule, state)
    run = _ClipRun(
        model, optimizer, schedule, ClipLoss(), pixels, tokens, captions_of, config.batch_size,
        steps_per_epoch, total_steps, truth,
    )  # fmt: skip
    model.train()
    rng = np.random.default_rng(config.seed + state.step)  # resumed runs draw fresh batches

    while state.step < total_steps:
        first = (state.step % steps_per_epoch) * config.batch_size if resumed else 0
        resumed = False
        losses = _run_epoch(run, state, first, rng, progress)
        state.epoch += 1
        row = {
            "epoch": state.epoch,
            "step": state.step,
            "loss": float(np.mean(losses)) if losses else None,
        }
        if val is not None:
            row["val"] = evaluate_encoder(model, preprocess, tokenizer, val, config.val_images)
            model.train()
        state.history.append(row)
        _save_checkpoint(out, model, optimizer, schedule, state, config)
        write_train_log(out, config, state.history)
        if validated:
            validated(row)

    model.eval()
    save_open_clip_artifact(model, model_cfg, preprocess_cfg, out, config.name)
    write_train_log(out, config, state.history)
    return state


@dataclass
class _ClipRun:
    """What every contrastive step reads: the model and its optimizer, the decoded images
    (N, 3, H, W) float16, the tokenised captions (T, ctx) and each image's caption ids."""

    model: object
    optimizer: object
    schedule: object
    loss_fn: object  # open_clip.ClipLoss
    pixels: object
    tokens: object
    captions_of: list
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    truth: object = None  # phrase_truth.PhraseTruth when true phrases are masked


def _phrase_truth(config: EncoderTrainConfig, train):
    if not config.mask_true_phrases:
        return None
    if not config.phrases:
        raise InputError("masking true phrases needs --phrases (there are none to mask)")
    from xmr.training.phrase_truth import PhraseTruth

    return PhraseTruth.of_dataset(config.data, train)


def _run_epoch(run: _ClipRun, state: TrainState, first: int, rng, progress) -> list[float]:
    """One pass over a fresh permutation of the images, from batch offset `first` on (the
    rest of an epoch a resumed run stopped in); -> the steps' losses."""
    order = rng.permutation(len(run.pixels))
    losses = []
    for start in range(first, run.steps_per_epoch * run.batch_size, run.batch_size):
        if state.step >= run.total_steps:
            break
        started = time.monotonic()
        batch = order[start : start + run.batch_size]
        caption_ids = [int(rng.choice(run.captions_of[i])) for i in batch]
        mask = None if run.truth is None else run.truth.false_negatives(batch, caption_ids)
        losses.append(_clip_step(run, run.pixels[batch].float(), run.tokens[caption_ids], mask))
        state.step += 1
        if progress:
            rate = len(batch) / (time.monotonic() - started)
            progress(state.step, run.total_steps, losses[-1], rate)
    return losses


def _clip_step(run: _ClipRun, images, texts, false_negatives=None) -> float:
    """images (B, 3, H, W), texts (B, ctx) -> one optimizer step on ClipLoss (with the
    (B, B) `false_negatives` left out, when given); its loss."""
    import torch

    image_features = run.model.encode_image(images, normalize=True)  # (B, D)
    text_features = run.model.encode_text(texts, normalize=True)  # (B, D)
    scale = run.model.logit_scale.exp()
    if false_negatives is None:
        loss = run.loss_fn(image_features, text_features, scale)
    else:
        from xmr.training.phrase_truth import masked_clip_loss

        loss = masked_clip_loss(image_features, text_features, scale, false_negatives)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
    run.optimizer.step()
    run.schedule.step()
    with torch.no_grad():  # CLIP's clamp: temperature no lower than 1/100
        run.model.logit_scale.clamp_(0, math.log(100))
    return loss.item()


def evaluate_encoder(model, preprocess, tokenizer, dataset, max_images: int | None = None):
    """Dual-encoder recall@1/5/10 (percent) both ways on (the first max_images of) a split."""
    import torch

    from xmr.evaluation.metrics import retrieval_recall
    from xmr.training.pixels import preload_pixels

    n = len(dataset.image_paths) if not max_images else min(max_images, len(dataset.image_paths))
    caption_ids = [c for i in range(n) for c in dataset.image_to_texts[i]]
    text_to_image = np.asarray(dataset.text_to_image)[caption_ids]
    model.eval()
    pixels = preload_pixels(dataset.image_paths[:n], preprocess)
    with torch.inference_mode():
        image_vectors = torch.cat(
            [
                model.encode_image(pixels[i : i + 256].float(), normalize=True)
                for i in range(0, n, 256)
            ]
        )
        texts = tokenizer([dataset.captions[c] for c in caption_ids])
        text_vectors = torch.cat(
            [
                model.encode_text(texts[i : i + 512], normalize=True)
                for i in range(0, len(texts), 512)
            ]
        )
    scores = (text_vectors @ image_vectors.T).numpy()  # (T, N)
    recall = retrieval_recall(scores, text_to_image)
    return {"t2i": recall["text_to_image"], "i2t": recall["image_to_text"], "n_images": n}


def _val_split(config: EncoderTrainConfig):
    from xmr.evaluation.datasets import load_dataset
    from xmr.retrieval.errors import DatasetError

    try:
        return load_dataset(config.data, config.images_root, split="val")
    except DatasetError:
        return None  # no val split: train without validation


def _param_groups(model, weight_decay: float):
    """No weight decay on gains, biases, embeddings and the temperature (as open_clip does)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exclude = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
        exclude = exclude or "logit_scale" in name or "embedding" in name
        (no_decay if exclude else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _save_checkpoint(out: Path, model, optimizer, schedule, state: TrainState, config) -> None:
    import torch

    folder = out / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "state": asdict(state),
        "config": asdict(config),
        "torch_rng": torch.get_rng_state(),
    }
    save_atomically(payload, folder / LAST_CHECKPOINT)


def _maybe_resume(out: Path, model, optimizer, schedule, state: TrainState) -> bool:
    import torch

    path = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not path.exists():
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(payload["model"])
    except Exception as exc:
        raise InputError(f"cannot resume from {path}: {exc}; delete it to start over") from exc
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    saved = payload["state"]
    state.step, state.epoch, state.history = saved["step"], saved["epoch"], saved["history"]
    torch.set_rng_state(payload["torch_rng"])
    return True
