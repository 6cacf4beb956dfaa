"""`train_reranker`: embed the training split once, then step, validate, checkpoint, and at
the end calibrate the final score's stage-1 weight and save the re-ranker."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmr.training.reranker_training.checkpoints import (
    CHECKPOINT,
    resume,
    save_checkpoint,
    start_from,
)
from xmr.training.reranker_training.config import (
    RerankerTrainConfig,
    RerankerTrainState,
    check_config,
)
from xmr.training.reranker_training.edits import (
    CaptionEdits,
    EditPairs,
    caption_edits,
    edit_pair_pool,
)
from xmr.training.reranker_training.grounding import (
    GroundingTargets,
    grounding_loss,
    grounding_targets,
)
from xmr.training.reranker_training.losses import (
    FeatureTensors,
    edit_pair_loss,
    hardest_edit_pairs,
    listwise_loss,
)
from xmr.training.reranker_training.mining import Pools, draw_batch, hard_pools
from xmr.training.reranker_training.phrase_queries import (
    PhraseQueries,
    phrase_queries,
    phrase_query_loss,
)
from xmr.training.reranker_training.relation_pairs import (
    RelationPairs,
    relation_pair_loss,
    relation_pairs,
)
from xmr.training.runs import seed_everything, warmup_cosine
from xmr.training.train_log import write_train_log


@dataclass
class TrainingData:
    """The training split as the loop reads it: frozen features, negatives, edits."""

    train: object  # evaluation.datasets.RetrievalDataset
    tensors: FeatureTensors
    pools: Pools
    edits: CaptionEdits
    edit_pairs: EditPairs
    grounding: GroundingTargets | None  # where object words should look (--grounding)
    relation_pairs: RelationPairs | None  # which words relations join (--relation-pairs)
    phrases: PhraseQueries | None = None  # short phrases and their look-alikes (--phrase-queries)


def train_reranker(
    config: RerankerTrainConfig, progress=None, preparing=None, validated=None
) -> RerankerTrainState:
    """`progress(step, total, loss, pairs_per_second)` after every step;
    `preparing(what, done, total)` while the frozen encoder embeds the training split
    ("images", "texts") and the caption edits ("caption edits"): minutes on a CPU;
    `validated(row)` with each validation row as soon as it is measured."""
    import torch

    from xmr.retrieval.encoder import load_encoder
    from xmr.retrieval.reranker import save_reranker

    check_config(config)  # a typo or a start that does not fit fails before any embedding
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    encoder = load_encoder(config.model, config.device)
    data = _training_data(config, encoder, preparing)
    model = _new_reranker(config, encoder, data.tensors)
    optimizer = torch.optim.AdamW(
        _parameter_groups(config, model), weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup_steps, config.steps)
    )
    state = RerankerTrainState()
    resuming = (out / CHECKPOINT).exists()
    started = model.neutral_parameters()  # all new without --init-from
    if config.init_from and not resuming:
        started = set(start_from(model, Path(config.init_from)))
    resume(out, model, optimizer, schedule, state, encoder.device)
    val = _validation_set(config, encoder)
    if config.pixel_stem_epochs and not resuming and model.pixel_parameters() <= started:
        state.pixel_stem = _pretrain_pixel_stem(config, model, data, val, preparing)
    _run_steps(config, model, optimizer, schedule, state, data, val, progress, validated)

    model.eval()
    extra = {}
    if val is not None and config.calibrate_fusion:
        extra["fusion"] = _calibrate(model, val, config.candidates, state)
    save_reranker(model, out)
    if val is not None and config.calibrate_fusion:
        extra["score_calibration"] = _calibrate_scores(model, val, config.candidates, out)
    if state.pixel_stem is not None:
        extra["pixel_stem"] = state.pixel_stem
    write_train_log(out, config, state.history, **extra)
    return state


def _calibrate_scores(model, val, candidates: int, out: Path) -> dict:
    """Fit the shown score's mapping (retrieval/calibration.py) on the validation split's
    candidate pairs and keep it beside the saved weights; -> its log entry."""
    from xmr.evaluation.calibration import candidate_pairs, fit_score_calibration
    from xmr.retrieval.calibration import write_calibration
    from xmr.retrieval.reranker import RerankerRuntime
    from xmr.retrieval.reranker_files import folder_fingerprint

    dataset, embeddings, _ = val
    runtime = RerankerRuntime(model, "training", str(next(model.parameters()).device))
    pairs = candidate_pairs(runtime, dataset, embeddings, candidates)
    try:
        fits = fit_score_calibration(pairs, model.config.stage1_weight)
    except ValueError as exc:  # e.g. no match among the candidates: keep the default
        return {"skipped": str(exc)}
    write_calibration(
        out,
        rerank=fits["rerank"],
        stage1_weight=model.config.stage1_weight,
        fingerprint=folder_fingerprint(out),
        fitted_on=f"validation split of {dataset.name}, top {candidates} both ways",
    )
    return fits["report"]


def _training_data(config: RerankerTrainConfig, encoder, preparing) -> TrainingData:
    """Embed the training split and its caption edits once; mine the hard-negative pools."""
    from xmr.evaluation.datasets import load_dataset
    from xmr.evaluation.embed_dataset import embed_dataset
    from xmr.retrieval.errors import InputError

    train = load_dataset(config.data, config.images_root, split="train")
    if config.max_train_images:
        train = train.head(config.max_train_images)
    if config.batch_size > len(train.image_paths):
        raise InputError(
            f"--batch-size {config.batch_size} is more than the {len(train.image_paths)} "
            f"training images of {config.data}: use a smaller --batch-size"
        )
    feats = embed_dataset(
        encoder,
        train,
        progress=preparing,
        token_layer=config.image_token_layer,
        with_pixels=config.pixel_stem,
    )
    pools = hard_pools(feats, train, config.hard_pool, config.gallery)
    edits = caption_edits(
        encoder, train.captions, random.Random(config.seed), encoder.device, preparing
    )
    pairs = edit_pair_pool(edits, config.edit_kinds, train.text_to_image)
    grounding = _grounding(config, encoder, train, feats.image_tokens.shape[1])
    related = _relation_pairs(config, encoder, train)
    phrases = _phrase_queries(config, encoder, train, feats.image_vectors, preparing)
    tensors = FeatureTensors.of(feats, encoder.device)
    return TrainingData(train, tensors, pools, edits, pairs, grounding, related, phrases)


def _pretrain_pixel_stem(config: RerankerTrainConfig, model, data: TrainingData, val, preparing):
    """Teach the new pixel stem what each training patch shows (--pixel-stem-epochs),
    measured on the validation split when there is one; -> the log entry."""
    import torch

    from xmr.retrieval.token_pooling import pooled_side
    from xmr.training.reranker_training.patch_labels import patch_labels, pretrain_pixel_stem

    side = pooled_side(model.config.image_tokens, 1)
    d = model.config.token_dim  # the pixels follow the encoder's features in each token
    labels = patch_labels(_scenes(config, data.train, "--pixel-stem-epochs"), side)
    held_out = None
    if val is not None:
        dataset, embedded, _ = val
        pixels = torch.from_numpy(embedded.image_tokens[..., d:]).to(data.tensors.image_tokens)
        held_out = (pixels, patch_labels(_scenes(config, dataset, "--pixel-stem-epochs"), side))
    return pretrain_pixel_stem(
        model.pixel_stem,
        data.tensors.image_tokens[..., d:],
        labels,
        config.pixel_stem_epochs,
        held_out,
        seed=config.seed,
        progress=preparing,
    )


def _scenes(config: RerankerTrainConfig, dataset, option: str) -> list:
    """The corpus scene of each image of `dataset`, for an option that reads them."""
    from xmr.training.corpus.records import dataset_records
    from xmr.training.corpus.scenes import Scene

    records = dataset_records(config.data, dataset, f"{option} reads what the images show")
    return [Scene.from_json(rec["scene"]) for rec in records]


def _grounding(config: RerankerTrainConfig, encoder, train, image_tokens: int):
    """The grounding targets of the training split (--grounding), or None."""
    if not config.grounding:
        return None
    from xmr.retrieval.errors import InputError
    from xmr.retrieval.token_pooling import pooled_side

    scenes = _scenes(config, train, "--grounding")
    side = pooled_side(image_tokens, config.image_pool)
    targets = grounding_targets(scenes, train, encoder.tokenizer, side)
    if len(targets.distinct_captions) < config.grounding:
        raise InputError(
            f"--grounding {config.grounding}: only {len(targets.distinct_captions)} "
            f"captions of {config.data} name an object alone; use a smaller --grounding"
        )
    return targets


def _parameter_groups(config: RerankerTrainConfig, model) -> list[dict]:
    """The optimizer's groups: the relation term's weights at --relation-lr and the pixel
    stem's at --pixel-lr when given, everything else at --lr."""
    named = list(model.named_parameters())
    own_rates = [
        (model.relation_parameters(), config.relation_lr),
        (model.pixel_parameters(), config.pixel_lr),
    ]
    groups, taken = [], set()
    for names, rate in own_rates:
        if rate is not None:  # check_config: given only with their option on
            groups.append({"params": [p for n, p in named if n in names], "lr": rate})
            taken |= names
    rest = {"params": [p for n, p in named if n not in taken], "lr": config.lr}
    return [rest, *groups]


def _relation_pairs(config: RerankerTrainConfig, encoder, train):
    """The relation pairs of the training split's captions (--relation-pairs), or None."""
    if not config.relation_pairs:
        return None
    from xmr.retrieval.errors import InputError

    pairs = relation_pairs(train.captions, encoder.tokenizer)
    if len(pairs.distinct_captions) < config.relation_pairs:
        raise InputError(
            f"--relation-pairs {config.relation_pairs}: only {len(pairs.distinct_captions)} "
            f"captions of {config.data} state a relation in the xmr-shapes grammar; "
            "use a smaller --relation-pairs"
        )
    return pairs


def _phrase_queries(config: RerankerTrainConfig, encoder, train, image_vectors, preparing):
    """The training split's phrases with their galleries (--phrase-queries), or None."""
    if not config.phrase_queries:
        return None
    from xmr.retrieval.errors import InputError
    from xmr.training.corpus.records import dataset_records
    from xmr.training.corpus.scenes import Scene

    records = dataset_records(config.data, train, "--phrase-queries reads what the images show")
    own = [list(rec.get("phrases") or []) for rec in records]
    if not any(own):
        raise InputError(
            f"--phrase-queries: the records of {config.data} have no phrases; write the "
            "corpus again with xmr make-corpus, which adds them"
        )
    scenes = [Scene.from_json(rec["scene"]) for rec in records]
    return phrase_queries(encoder, own, scenes, image_vectors, preparing)


def _new_reranker(config: RerankerTrainConfig, encoder, tensors: FeatureTensors):
    """A fresh re-ranker shaped for the encoder's tokens, its head at zero (see Reranker),
    fused with stage 1 at the encoder's logit scale: trained as a correction of stage 1."""
    from xmr.retrieval.reranker import Reranker, RerankerConfig

    itc = float(encoder.model.logit_scale.exp())
    token_dim = tensors.text_tokens.shape[2]  # the encoder's D, on both sides
    pixel_features = tensors.image_tokens.shape[2] - token_dim  # 3 p^2 with a pixel stem
    rconfig = RerankerConfig(
        token_dim=token_dim,
        text_len=tensors.text_tokens.shape[1],
        image_tokens=tensors.image_tokens.shape[1],
        width=config.width,
        layers=config.layers,
        heads=config.heads,
        image_layers=config.image_layers,
        image_pool=config.image_pool,
        image_token_layer=config.image_token_layer,
        image_stem=config.image_stem,
        token_alignment=config.token_alignment,
        patch_position=config.patch_position,
        relation_readout=config.relation_readout,
        pixel_patch=round((pixel_features / 3) ** 0.5),
        encoder=encoder.spec.canonical,
        itc_weight=itc,
        stage1_weight=itc,
    )
    return Reranker(rconfig).to(encoder.device)


def _run_steps(config, model, optimizer, schedule, state, data, val, progress, validated):
    """Train until `config.steps` (or `max_minutes`), validating and checkpointing every
    `val_every` steps and at the end. The learning rate follows `steps` either way."""
    import torch

    rng = np.random.default_rng(config.seed + state.step)  # a resumed run draws fresh batches
    deadline = time.monotonic() + 60 * config.max_minutes if config.max_minutes else None
    model.train()
    while state.step < config.steps:
        started = time.monotonic()
        loss, n_pairs = _step_loss(config, model, data, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        state.step += 1
        if progress:
            progress(state.step, config.steps, loss.item(), n_pairs / (time.monotonic() - started))
        out_of_time = deadline is not None and time.monotonic() >= deadline
        if state.step % config.val_every == 0 or state.step == config.steps or out_of_time:
            row = {"step": state.step, "loss": round(loss.item(), 4)}
            if val is not None:
                row.update(_validate(model, val, config.candidates))
            state.history.append(row)
            save_checkpoint(Path(config.out), model, optimizer, schedule, state)
            write_train_log(config.out, config, state.history)
            if validated:
                validated(row)
        if out_of_time:
            break


def _step_loss(config: RerankerTrainConfig, model, data: TrainingData, rng):
    """One batch's loss: the listwise loss, plus the edit-pair, grounding, relation-pair and
    phrase losses when asked for.
    -> (loss, number of pairs scored)."""
    from xmr.retrieval.reranker import autocast

    batch = draw_batch(data.train, data.pools, config, rng)
    edited = data.edits.of(batch.captions)
    with autocast(str(data.tensors.image_tokens.device)):  # bf16 on CUDA, off on the CPU
        loss, n_pairs = listwise_loss(model, batch, edited, data.tensors)
        if config.edit_pairs and len(data.edit_pairs.captions):
            pairs = data.edit_pairs.draw(config.edit_pairs * config.edit_mining, rng)
            if config.edit_mining > 1:
                pairs = hardest_edit_pairs(
                    model, pairs, data.edits, data.tensors, config.edit_pairs
                )
            pair_loss = edit_pair_loss(model, pairs, data.edits, data.tensors)
            loss = loss + config.edit_weight * pair_loss
            n_pairs += 2 * len(pairs.captions)
        if data.grounding is not None:
            targets = data.grounding.of_captions(config.grounding, rng)
            loss = loss + grounding_loss(model, targets, data.train.text_to_image, data.tensors)
            n_pairs += config.grounding
        if data.relation_pairs is not None:
            related = data.relation_pairs.of_captions(config.relation_pairs, rng)
            loss = loss + relation_pair_loss(model, related, data.train.text_to_image, data.tensors)
            n_pairs += config.relation_pairs
        if data.phrases is not None:
            phrases = data.phrases.draw(config.phrase_queries, rng)
            loss = loss + phrase_query_loss(model, phrases, data.phrases, data.tensors)
            n_pairs += int(phrases.valid.sum())
    return loss, n_pairs


def _validate(model, val, candidates: int) -> dict:
    from xmr.evaluation.rerank_eval import quick_validation

    model.eval()
    row = quick_validation(model, val, candidates)
    model.train()
    return row


def _calibrate(model, val, candidates: int, state: RerankerTrainState) -> dict:
    """Set the final score's stage-1 weight to the validation sweep's best; -> its log entry."""
    from xmr.evaluation.rerank_eval import best_fusion, fusion_sweep

    sweep = fusion_sweep(model, val, candidates)
    chosen = best_fusion(sweep)
    model.config.stage1_weight = chosen["stage1_weight"]
    state.fusion = chosen
    return {"chosen": chosen, "sweep": sweep}


def _validation_set(config: RerankerTrainConfig, encoder):
    """(val split, its embeddings, encoder), or None when the data has no val split."""
    from xmr.evaluation.datasets import load_dataset
    from xmr.evaluation.embed_dataset import embed_dataset
    from xmr.retrieval.errors import DatasetError

    try:
        val = load_dataset(config.data, config.images_root, split="val").head(config.val_images)
    except DatasetError:
        return None
    embedded = embed_dataset(
        encoder, val, token_layer=config.image_token_layer, with_pixels=config.pixel_stem
    )
    return val, embedded, encoder
