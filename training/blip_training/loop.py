"""`train_blip_reranker`: load the start, decode and embed the training split once, mine
stage-1 negatives, step, validate, checkpoint, and write the Hugging Face folder."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from xmr.training.blip_training import checkpoints as ckpt
from xmr.training.blip_training.config import (
    DEFAULT_INIT,
    BlipTrainConfig,
    BlipTrainState,
    check_config,
)


def train_blip_reranker(
    config: BlipTrainConfig, progress=None, preparing=None, validated=None
) -> BlipTrainState:
    """`progress(step, total, loss, pairs_per_second)` after every step;
    `preparing(what, done, total)` while pixels are decoded and stage 1 embeds a split;
    `validated(row)` with each validation row as soon as it is measured."""
    import torch

    from xmr.evaluation.datasets import load_dataset
    from xmr.retrieval.blip_itm import enc_token_id
    from xmr.retrieval.encoder import load_encoder, select_device
    from xmr.retrieval.errors import InputError
    from xmr.training.blip_training.data import split_tensors
    from xmr.training.runs import seed_everything, warmup_cosine

    check_config(config)
    device = select_device(config.device)  # a missing GPU is an error before any work
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    train = load_dataset(config.data, config.images_root, split="train")
    if config.max_train_images:
        train = train.head(config.max_train_images)
    if config.batch_size > train.n_images:
        raise InputError(
            f"--batch-size {config.batch_size} is more than the {train.n_images} training "
            f"images of {config.data}: use a smaller --batch-size"
        )
    start, payload = _start_or_resume(config, out, train.captions)
    model, tokenizer, processor = start.model, start.tokenizer, start.processor
    model.to(device)
    lr = config.lr if config.lr is not None else (2e-5 if start.pretrained else 1e-3)

    encoder = load_encoder(config.model, device)
    data = split_tensors(train, tokenizer, processor, encoder, config.max_text_tokens, preparing)
    data.pixels, data.input_ids, data.lengths = (
        t.to(device) for t in (data.pixels, data.input_ids, data.lengths)
    )
    val = _validation_split(config, tokenizer, processor, encoder)
    # The ITM pass reads the first token as the scorer will (retrieval/blip_itm.py).
    first = enc_token_id(tokenizer, model.config.text_config.vocab_size)
    for split in (data, val):
        if split is not None:
            split.itm_first_token = first

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup_steps, config.steps)
    )
    state = BlipTrainState(pretrained=start.pretrained, source=start.source)
    if payload is not None:
        ckpt.restore(payload, optimizer, schedule, state)
    meta = {"lr": lr, "device": device}
    meta["itm_first_token"] = "[CLS]" if first is None else f"[ENC] (id {first})"
    _run_steps(config, model, tokenizer, optimizer, schedule, state, data, val, device,
               meta, progress, validated)  # fmt: skip

    model.eval()
    if val is not None and config.calibrate_fusion:
        meta["fusion"] = _calibrate(model, val, config, device, state)
    ckpt.save_folder(out, model.float())
    _write_log(config, state, meta)
    return state


def _start_or_resume(config, out: Path, captions):
    """(start, checkpoint payload or None): OUT's checkpoint when there is one (its weights,
    the folder's own tokenizer and processor), else --init-from, whose tokenizer and
    processor are written into OUT at once so a resumed run reads the same ones."""
    from xmr.training.blip_training.start import Start, load_start

    if not ckpt.resumable(out):
        start = load_start(config.init_from or DEFAULT_INIT, captions)
        ckpt.save_processing(out, start.tokenizer, start.processor)
        return start, None
    from transformers import AutoTokenizer, BlipImageProcessor

    payload = ckpt.load_checkpoint(out, "cpu")
    saved = payload["state"]
    start = Start(
        ckpt.model_from_checkpoint(payload),
        AutoTokenizer.from_pretrained(str(out)),
        BlipImageProcessor.from_pretrained(str(out)),
        saved["source"],
        saved["pretrained"],
    )
    return start, payload


def _validation_split(config, tokenizer, processor, encoder):
    """The val split's tensors (first `val_images` images), or None when there is none."""
    from xmr.evaluation.datasets import load_dataset
    from xmr.retrieval.errors import DatasetError
    from xmr.training.blip_training.data import split_tensors

    try:
        val = load_dataset(config.data, config.images_root, split="val").head(config.val_images)
    except DatasetError:
        return None
    return split_tensors(val, tokenizer, processor, encoder, config.max_text_tokens)


def _run_steps(config, model, tokenizer, optimizer, schedule, state, data, val, device, meta,
               progress, validated):  # fmt: skip
    """Train until `config.steps` (or `max_minutes`), checkpointing every 50 steps, at each
    validation and at the end. The learning rate follows `steps` either way."""
    import torch

    from xmr.retrieval.reranker import autocast
    from xmr.training.blip_training.edits import CaptionEditor
    from xmr.training.blip_training.itm import step_loss
    from xmr.training.reranker_training.mining import draw_batch, hard_pools

    pools = hard_pools(data, data.dataset, config.hard_pool, config.gallery)
    editor = CaptionEditor(data.dataset.captions, config.seed + state.step)
    rng = np.random.default_rng(config.seed + state.step)  # a resumed run draws fresh batches
    deadline = time.monotonic() + 60 * config.max_minutes if config.max_minutes else None
    out = Path(config.out)
    model.train()
    while state.step < config.steps:
        started = time.monotonic()
        batch = draw_batch(data.dataset, pools, config, rng)
        edits = (
            editor.batch(batch.captions, tokenizer, config.max_text_tokens)
            if config.edit_negatives
            else (torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, dtype=torch.long), [])
        )
        with autocast(device):  # bf16 on CUDA, full precision on the CPU
            loss, n_pairs = step_loss(model, batch, edits, data, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        state.step += 1
        state.losses.append(round(loss.item(), 4))
        if progress:
            progress(state.step, config.steps, loss.item(), n_pairs / (time.monotonic() - started))
        out_of_time = deadline is not None and time.monotonic() >= deadline
        last = state.step == config.steps or out_of_time
        validate = config.val_every and state.step % config.val_every == 0 and not last
        if validate and val is not None:
            row = {"step": state.step, "loss": round(loss.item(), 4)}
            row.update(_validate(model, val, config, device))
            state.history.append(row)
            if validated:
                validated(row)
        if validate or last or state.step % 50 == 0:
            ckpt.save_checkpoint(out, model, optimizer, schedule, state)
            _write_log(config, state, meta)
        if out_of_time:
            break


def _validate(model, val, config, device) -> dict:
    from xmr.training.blip_training.evaluate import best_weight, match_logits, recall_rows

    model.eval()
    rows = recall_rows(val, match_logits(model, val, config.candidates, device=device))
    model.train()
    best = best_weight(rows)
    logit_only = rows["fused"][0]
    return {
        "val_stage1_t2i_R@1": rows["stage1"]["t2i"]["R@1"],
        "val_stage1_i2t_R@1": rows["stage1"]["i2t"]["R@1"],
        "val_itm_t2i_R@1": logit_only["t2i"]["R@1"],
        "val_itm_i2t_R@1": logit_only["i2t"]["R@1"],
        "val_fused_t2i_R@1": best["t2i"]["R@1"],
        "val_fused_i2t_R@1": best["i2t"]["R@1"],
        "val_weight": best["weight"],
    }


def _calibrate(model, val, config, device, state) -> dict:
    """The stage-1 weight that fuses best on validation, with its sweep (the train log's
    "fusion"): what the scorer's weight setting should be for this matcher."""
    from xmr.training.blip_training.evaluate import best_weight, match_logits, recall_rows

    rows = recall_rows(val, match_logits(model, val, config.candidates, device=device))
    best = best_weight(rows)
    chosen = {
        "stage1_weight": best["weight"],
        "t2i_R@1": best["t2i"]["R@1"],
        "i2t_R@1": best["i2t"]["R@1"],
        "stage1_t2i_R@1": rows["stage1"]["t2i"]["R@1"],
        "stage1_i2t_R@1": rows["stage1"]["i2t"]["R@1"],
        "candidates": config.candidates,
        "val_images": val.dataset.n_images,
    }
    state.fusion = chosen
    sweep = [
        {"weight": r["weight"], "t2i_R@1": r["t2i"]["R@1"], "i2t_R@1": r["i2t"]["R@1"]}
        for r in rows["fused"]
    ]
    return {"chosen": chosen, "sweep": sweep}


def _write_log(config, state, meta) -> None:
    from xmr.training.train_log import write_train_log

    write_train_log(
        config.out, config, state.history,
        init_from=state.source, step=state.step, losses=state.losses, **meta,
    )  # fmt: skip
