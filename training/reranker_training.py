"""`xmr train-reranker`: image-text matching over frozen encoder tokens.

Every step builds four kinds of (text, image) pairs from a batch of B images:
  positive      an image and one of its captions                          label 1
  hard image    the caption with an image sampled from its stage-1 top-M,
                in proportion to softmax(similarity / tau) (ALBEF)         label 0
  hard caption  the image with a caption sampled likewise                  label 0
  edited        the image with its caption edited (colours swapped,
                relation reversed, object changed; training/text_edits)    label 0
and minimises binary cross-entropy on the re-ranker's logits. The encoder is frozen and
its tokens are computed once (edited captions are encoded per step: they are new text).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

CHECKPOINT = "checkpoint.pt"


@dataclass
class RerankerTrainConfig:
    data: str
    model: str  # the frozen encoder's spec
    out: str
    images_root: str | None = None
    steps: int = 1500
    batch_size: int = 64  # images per step (4 pairs each)
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    width: int = 128
    layers: int = 2
    heads: int = 4
    image_layers: int = 1
    hard_pool: int = 16  # M: stage-1 top-M each negative is drawn from
    tau: float = 0.05
    max_train_images: int | None = None
    val_images: int = 500
    val_every: int = 500
    candidates: int = 16  # stage-1 depth used in validation re-ranking
    seed: int = 0
    threads: int | None = None


@dataclass
class RerankerTrainState:
    step: int = 0
    history: list[dict] = field(default_factory=list)


def train_reranker(config: RerankerTrainConfig, progress=None) -> RerankerTrainState:
    """`progress(step, total, loss, pairs_per_second)` after every step."""
    import torch

    from retrieval.datasets import load_dataset
    from retrieval.embed_dataset import embed_dataset
    from retrieval.encoder import load_encoder
    from retrieval.reranker import Reranker, RerankerConfig, save_reranker
    from training.text_edits import object_words

    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    encoder = load_encoder(config.model, "cpu")
    train = load_dataset(config.data, config.images_root, split="train")
    if config.max_train_images:
        train = train.head(config.max_train_images)
    feats = embed_dataset(encoder, train, with_tokens=True)
    pools = _hard_pools(feats, train, config.hard_pool)
    objects = object_words(train.captions)

    rconfig = RerankerConfig(
        token_dim=feats.image_tokens.shape[2],
        text_len=feats.text_tokens.shape[1],
        image_tokens=feats.image_tokens.shape[1],
        width=config.width,
        layers=config.layers,
        heads=config.heads,
        image_layers=config.image_layers,
        encoder=encoder.spec.canonical,
        itc_weight=float(encoder.model.logit_scale.exp()),
    )
    model = Reranker(rconfig)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config))
    state = RerankerTrainState()
    _maybe_resume(out, model, optimizer, schedule, state)
    val = _validation_set(config, encoder)
    rng = random.Random(config.seed + state.step)
    nprng = np.random.default_rng(config.seed + state.step)
    image_tokens = torch.from_numpy(feats.image_tokens)  # (N, P, D) float16
    text_tokens = torch.from_numpy(feats.text_tokens)  # (T, L, D) float16
    text_lengths = torch.from_numpy(feats.text_lengths.astype(np.int64))  # (T,)

    model.train()
    while state.step < config.steps:
        t0 = time.monotonic()
        images = nprng.choice(len(train.image_paths), config.batch_size, replace=False)
        captions = np.array([nprng.choice(train.image_to_texts[i]) for i in images])
        neg_images = np.array(
            [_sample(pools.t2i[c], pools.t2i_sims[c], config.tau, nprng) for c in captions]
        )
        neg_captions = np.array(
            [_sample(pools.i2t[i], pools.i2t_sims[i], config.tau, nprng) for i in images]
        )
        edited_text, edited_len, edited_rows = _edited(encoder, train, captions, rng, objects)

        text = torch.cat(
            [text_tokens[captions], text_tokens[captions], text_tokens[neg_captions], edited_text]
        )  # (4B', L, D)
        lengths = torch.cat(
            [text_lengths[captions], text_lengths[captions], text_lengths[neg_captions], edited_len]
        )
        image = torch.cat(
            [
                image_tokens[images],
                image_tokens[neg_images],
                image_tokens[images],
                image_tokens[images[edited_rows]],
            ]
        )
        labels = torch.cat([torch.ones(len(images)), torch.zeros(len(text) - len(images))])
        loss = _loss(model, text, lengths, image, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        state.step += 1
        if progress:
            progress(state.step, config.steps, loss.item(), len(text) / (time.monotonic() - t0))
        if state.step % config.val_every == 0 or state.step == config.steps:
            row = {"step": state.step, "loss": round(loss.item(), 4)}
            if val is not None:
                from retrieval.rerank_eval import quick_validation

                model.eval()
                row.update(quick_validation(model, val, config.candidates))
                model.train()
            state.history.append(row)
            _save_checkpoint(out, model, optimizer, schedule, state)

    model.eval()
    if val is not None:
        model.config.stage1_weight = _choose_stage1_weight(model, val, config.candidates)
    save_reranker(model, out)
    (out / "train_log.json").write_text(
        json.dumps({"config": asdict(config), "history": state.history}, indent=2)
    )
    return state


def _choose_stage1_weight(model, val, k: int) -> float:
    """Final score = logit, or logit + ITC logit (BLIP): whichever ranks val better at R@1."""
    from retrieval import metrics
    from retrieval.rerank_eval import rerank_logits, reranked_ranks
    from retrieval.reranker import RerankerRuntime

    dataset, embeddings, _ = val
    scores = embeddings.text_vectors @ embeddings.image_vectors.T
    logits, _ = rerank_logits(RerankerRuntime(model, "training"), embeddings, scores, k)
    best, best_weight = -1.0, 0.0
    for weight in (0.0, model.config.itc_weight):
        ranks = reranked_ranks(logits, np.asarray(dataset.text_to_image), weight)
        total = sum(metrics.recall_at_ks(r, (1,))["R@1"] for r in ranks.values())
        if total > best:
            best, best_weight = total, weight
    return best_weight


def _loss(model, text, lengths, image, labels):
    import torch
    import torch.nn.functional as F

    from retrieval.reranker import text_mask

    longest = int(lengths.max())
    logits = model(text[:, :longest].float(), text_mask(lengths, longest), image.float())
    # Positives are 1 in 4 pairs; weight them up so both classes count equally.
    n_neg = (labels == 0).sum().clamp(min=1)
    pos_weight = n_neg / (labels == 1).sum().clamp(min=1)
    return F.binary_cross_entropy_with_logits(
        logits, labels, pos_weight=torch.as_tensor(pos_weight)
    )


@dataclass
class _Pools:
    t2i: np.ndarray  # (T, M) image ids most similar to each caption, own image excluded
    t2i_sims: np.ndarray
    i2t: np.ndarray  # (N, M) caption ids most similar to each image, own captions excluded
    i2t_sims: np.ndarray


def _hard_pools(feats, dataset, m: int) -> _Pools:
    t2i_map = np.asarray(dataset.text_to_image)
    images, texts = feats.image_vectors, feats.text_vectors
    t2i, t2i_s = _topm(
        texts, images, m, own=lambda rows: t2i_map[rows][:, None] == np.arange(len(images))[None, :]
    )
    i2t, i2t_s = _topm(images, texts, m, own=lambda rows: rows[:, None] == t2i_map[None, :])
    return _Pools(t2i, t2i_s, i2t, i2t_s)


def _topm(queries, items, m, own):
    """Top-m items per query by inner product, excluding each query's own matches."""
    out_ids = np.empty((len(queries), m), dtype=np.int64)
    out_sims = np.empty((len(queries), m), dtype=np.float32)
    for start in range(0, len(queries), 2048):
        rows = np.arange(start, min(start + 2048, len(queries)))
        sims = queries[rows] @ items.T  # (r, n_items)
        sims[own(rows)] = -np.inf
        top = np.argpartition(-sims, m, axis=1)[:, :m]
        out_ids[rows] = top
        out_sims[rows] = np.take_along_axis(sims, top, axis=1)
    return out_ids, out_sims


def _sample(ids, sims, tau, rng) -> int:
    weights = np.exp((sims - sims.max()) / tau)
    return int(ids[rng.choice(len(ids), p=weights / weights.sum())])


def _edited(encoder, dataset, captions, rng, objects):
    """Edited versions of the batch's captions (those that admit an edit), encoded now."""
    import torch

    from training.text_edits import random_edit

    texts, rows = [], []
    for row, c in enumerate(captions):
        edited = random_edit(dataset.captions[c], rng, objects)
        if edited is not None:
            texts.append(edited)
            rows.append(row)
    if not texts:
        return torch.zeros(0, 1, 1), torch.zeros(0, dtype=torch.long), np.array([], dtype=int)
    encoded = encoder.encode_texts(texts)
    return (
        torch.from_numpy(encoded.tokens),
        torch.from_numpy(encoded.lengths.astype(np.int64)),
        np.array(rows),
    )


def _validation_set(config: RerankerTrainConfig, encoder):
    from retrieval.datasets import load_dataset
    from retrieval.embed_dataset import embed_dataset
    from retrieval.errors import DatasetError

    try:
        val = load_dataset(config.data, config.images_root, split="val").head(config.val_images)
    except DatasetError:
        return None
    return val, embed_dataset(encoder, val, with_tokens=True), encoder


def _warmup_cosine(config: RerankerTrainConfig):
    import math

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        done = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))

    return factor


def _save_checkpoint(out: Path, model, optimizer, schedule, state) -> None:
    import torch

    tmp = out / f"{CHECKPOINT}.tmp"
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "state": asdict(state),
        },
        tmp,
    )
    tmp.replace(out / CHECKPOINT)


def _maybe_resume(out: Path, model, optimizer, schedule, state) -> None:
    import torch

    path = out / CHECKPOINT
    if not path.exists():
        return
    payload = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    state.step = payload["state"]["step"]
    state.history = payload["state"]["history"]
