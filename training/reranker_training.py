"""`xmr train-reranker`: image-text matching over frozen encoder tokens.

Every step builds four kinds of (text, image) pairs from a batch of B images:
  positive      an image and one of its captions                          label 1
  hard image    the caption with an image sampled from its stage-1 top-M,
                in proportion to softmax(similarity / tau) (ALBEF)         label 0
  hard caption  the image with a caption sampled likewise                  label 0
  edited        the image with its caption edited: colours swapped, relation
                reversed, object changed (training/text_edits), each kind
                that applies                                               label 0
and minimises a listwise cross-entropy over each query's candidates. The encoder is frozen
and its tokens are computed once, the edited captions' included.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from training.text_edits import object_words
from training.train_log import write_train_log

CHECKPOINT = "checkpoint.pt"


@dataclass
class RerankerTrainConfig:
    data: str
    model: str  # the frozen encoder's spec
    out: str
    images_root: str | None = None
    steps: int = 1500
    max_minutes: float | None = None  # stop (validate, save) after this much training time
    batch_size: int = 32  # queries per step, each direction (about 8 pairs each)
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    width: int = 64
    layers: int = 2
    heads: int = 4
    image_layers: int = 0
    image_pool: int = 2
    image_token_layer: int | None = None  # vision block the image tokens come from (None: last)
    image_stem: str = "attention"  # or "conv" (see RerankerConfig)
    token_alignment: bool = False
    # Extra (image, true caption, its edit) triples per step, scored by the logit alone:
    # the direct binding signal that the listwise loss, dominated by stage 1, dilutes.
    edit_pairs: int = 0
    edit_kinds: str = "attribute"  # which edits those are: attribute,relation,object
    edit_weight: float = 1.0
    hard_pool: int = 16  # M: stage-1 top-M each negative is drawn from
    gallery: int = 1000  # images per mining gallery: about the size stage 2 will re-rank from
    hard_negatives: int = 2  # H per query, drawn from the pool
    random_negatives: int = 1  # R easy negatives per caption (other batch images)
    tau: float = 0.05
    max_train_images: int | None = None
    val_images: int = 500
    val_every: int = 500
    candidates: int = 16  # stage-1 depth used in validation re-ranking
    # After training, pick the final score's stage1_weight on the validation split
    # (rerank_eval.fusion_sweep); off: keep the training-time weight (itc_weight).
    calibrate_fusion: bool = True
    seed: int = 0
    threads: int | None = None
    device: str | None = None  # None: cuda when present, else cpu
    # A saved re-ranker (an --out folder, or a model's own) to start from instead of random
    # weights, with the same architecture options; a fresh optimizer and schedule. A
    # checkpoint in `out` (resume) wins over it.
    init_from: str | None = None


@dataclass
class RerankerTrainState:
    step: int = 0
    history: list[dict] = field(default_factory=list)
    fusion: dict | None = None  # the validation-chosen stage1_weight and its R@1s


def train_reranker(
    config: RerankerTrainConfig, progress=None, preparing=None, validated=None
) -> RerankerTrainState:
    """`progress(step, total, loss, pairs_per_second)` after every step;
    `preparing(what, done, total)` while the frozen encoder embeds the training split
    ("images", "texts") and the caption edits ("caption edits"): minutes on a CPU;
    `validated(row)` with each validation row as soon as it is measured."""
    import torch

    from evaluation.datasets import load_dataset
    from evaluation.embed_dataset import embed_dataset
    from retrieval.encoder import load_encoder
    from retrieval.errors import InputError
    from retrieval.reranker import (
        IMAGE_STEMS,
        Reranker,
        RerankerConfig,
        autocast,
        save_reranker,
    )

    if config.width % config.heads:
        raise InputError(
            f"--width {config.width} is not a multiple of --heads {config.heads}: "
            "pick --heads that divides it"
        )
    if config.image_stem not in IMAGE_STEMS:
        raise InputError(f"--image-stem {config.image_stem} is not one of {', '.join(IMAGE_STEMS)}")
    edit_columns(config.edit_kinds)  # a typo fails now, not after minutes of embedding
    if config.init_from:  # so does a start that does not fit these options
        _check_start(Path(config.init_from), asdict(config))
    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    encoder = load_encoder(config.model, config.device)
    device = encoder.device
    train = load_dataset(config.data, config.images_root, split="train")
    if config.max_train_images:
        train = train.head(config.max_train_images)
    if config.batch_size > len(train.image_paths):
        raise InputError(
            f"--batch-size {config.batch_size} is more than the {len(train.image_paths)} "
            f"training images of {config.data}: use a smaller --batch-size"
        )
    feats = embed_dataset(encoder, train, progress=preparing, token_layer=config.image_token_layer)
    pools = hard_pools(feats, train, config.hard_pool, config.gallery)
    edits = caption_edits(encoder, train.captions, random.Random(config.seed), device, preparing)

    rconfig = RerankerConfig(
        token_dim=feats.image_tokens.shape[2],
        text_len=feats.text_tokens.shape[1],
        image_tokens=feats.image_tokens.shape[1],
        width=config.width,
        layers=config.layers,
        heads=config.heads,
        image_layers=config.image_layers,
        image_pool=config.image_pool,
        image_token_layer=config.image_token_layer,
        image_stem=config.image_stem,
        token_alignment=config.token_alignment,
        encoder=encoder.spec.canonical,
        itc_weight=float(encoder.model.logit_scale.exp()),
    )
    rconfig.stage1_weight = rconfig.itc_weight  # trained as a correction of stage 1
    model = Reranker(rconfig).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config))
    state = RerankerTrainState()
    if config.init_from and not (out / CHECKPOINT).exists():
        _start_from(model, Path(config.init_from))
    _maybe_resume(out, model, optimizer, schedule, state, device)
    val = _validation_set(config, encoder)
    rng = np.random.default_rng(config.seed + state.step)
    tensors = _FeatureTensors.of(feats, device)
    pair_pool = edit_pair_pool(edits, config.edit_kinds, train.text_to_image)
    model.train()
    # A time budget (a lent GPU's minutes) ends the run early; lr follows `steps` regardless.
    deadline = time.monotonic() + 60 * config.max_minutes if config.max_minutes else None
    while state.step < config.steps:
        t0 = time.monotonic()
        batch = _draw_batch(train, pools, config, rng)
        edited = edits.of(batch.captions)
        with autocast(device):  # bf16 on CUDA; a no-op on the CPU
            loss, n_pairs = _listwise_loss(model, batch, edited, tensors)
            if config.edit_pairs and len(pair_pool.captions):
                pairs = pair_pool.draw(config.edit_pairs, rng)
                loss = loss + config.edit_weight * _edit_pair_loss(model, pairs, edits, tensors)
                n_pairs += 2 * len(pairs.captions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        state.step += 1
        if progress:
            progress(state.step, config.steps, loss.item(), n_pairs / (time.monotonic() - t0))
        out_of_time = deadline is not None and time.monotonic() >= deadline
        if state.step % config.val_every == 0 or state.step == config.steps or out_of_time:
            row = {"step": state.step, "loss": round(loss.item(), 4)}
            if val is not None:
                from evaluation.rerank_eval import quick_validation

                model.eval()
                row.update(quick_validation(model, val, config.candidates))
                model.train()
            state.history.append(row)
            _save_checkpoint(out, model, optimizer, schedule, state)
            write_train_log(out, config, state.history)
            if validated:
                validated(row)
        if out_of_time:
            break

    model.eval()
    extra = {}
    if val is not None and config.calibrate_fusion:
        from evaluation.rerank_eval import best_fusion, fusion_sweep

        sweep = fusion_sweep(model, val, config.candidates)
        chosen = best_fusion(sweep)
        model.config.stage1_weight = chosen["stage1_weight"]
        state.fusion = chosen
        extra["fusion"] = {"chosen": chosen, "sweep": sweep}
    save_reranker(model, out)
    write_train_log(out, config, state.history, **extra)
    return state


@dataclass
class _Batch:
    images: np.ndarray  # (B,) the batch's images
    captions: np.ndarray  # (B,) one true caption of each
    hard_images: np.ndarray  # (B, H) stage-1 look-alikes of each caption's image
    hard_captions: np.ndarray  # (B, H) stage-1 look-alike captions of each image
    random_images: np.ndarray  # (B, R) other batch rows: easy negatives


def _draw_batch(train, pools, config, rng) -> _Batch:
    b, h = config.batch_size, config.hard_negatives
    images = rng.choice(len(train.image_paths), b, replace=False)
    captions = np.array([rng.choice(train.image_to_texts[i]) for i in images])
    hard_images = _sample(pools.t2i[captions], pools.t2i_sims[captions], config.tau, rng, h)
    hard_captions = _sample(pools.i2t[images], pools.i2t_sims[images], config.tau, rng, h)
    shift = rng.integers(1, b, size=(b, config.random_negatives))
    random_images = (np.arange(b)[:, None] + shift) % b  # rows of the batch, never itself
    return _Batch(images, captions, hard_images, hard_captions, random_images)


@dataclass
class _FeatureTensors:
    """The frozen encoder's outputs for the training split, as torch tensors on the device."""

    image_tokens: object  # (N, P, D) float16
    text_tokens: object  # (T, L, D) float16
    text_lengths: object  # (T,) int64
    image_vectors: object  # (N, D) float32
    text_vectors: object  # (T, D) float32

    @classmethod
    def of(cls, feats, device: str = "cpu") -> _FeatureTensors:
        import torch

        def tensor(array):
            return torch.from_numpy(array).to(device)

        return cls(
            tensor(feats.image_tokens),
            tensor(feats.text_tokens),
            tensor(feats.text_lengths.astype(np.int64)),
            tensor(feats.image_vectors),
            tensor(feats.text_vectors),
        )


def _listwise_loss(model, batch: _Batch, edited, f: _FeatureTensors):
    """Cross-entropy over each query's candidate list, true candidate first.

    text -> image: [its image, H hard images, R batch images]
    image -> text: [its caption, H hard captions, its caption edited (when one exists)]
    A candidate's score is the re-ranker logit plus the frozen stage-1 logit
    (itc_weight * cosine), so training starts from the dual encoder's ranking and learns
    what it gets wrong: binding, relations, fine differences.
    """
    import torch
    import torch.nn.functional as F

    from retrieval.reranker import take_states, text_mask

    b, h = batch.hard_images.shape
    itc = model.config.itc_weight
    device = f.image_tokens.device

    def on_device(array):
        return torch_rows(array, device)

    # Unique images: the B batch images, then the B*H hard ones. States computed once each.
    image_ids = on_device(np.concatenate([batch.images, batch.hard_images.ravel()]))
    states = model.encode_images(f.image_tokens[image_ids].float())
    t2i_cands = np.concatenate(
        [np.arange(b)[:, None], b + np.arange(b * h).reshape(b, h), batch.random_images], axis=1
    )  # (B, C) rows into image_ids
    c_img = t2i_cands.shape[1]

    edited_tokens, edited_lengths, edited_rows, edited_vectors = edited
    # Texts: B true captions, B*H hard captions, E edited ones.
    caption_ids = on_device(np.concatenate([batch.captions, batch.hard_captions.ravel()]))
    texts = _then(f.text_tokens[caption_ids], edited_tokens)
    lengths = _then(f.text_lengths[caption_ids], edited_lengths)
    vectors = _then(f.text_vectors[caption_ids], edited_vectors)

    # Pairs: t2i (text row i, image cand) then i2t (text cand, image row i).
    t2i_text = np.repeat(np.arange(b), c_img)
    t2i_image = t2i_cands.ravel()
    i2t_lists = [[i] + list(b + i * h + np.arange(h)) for i in range(b)]
    for e, row in enumerate(edited_rows):
        i2t_lists[row].append(b + b * h + e)
    # Rows without an edit are padded (with their own caption) and the padding masked, so
    # one row lacking an edit does not drop the others' edits.
    c_txt = max(len(x) for x in i2t_lists)
    padding = on_device([[False] * len(x) + [True] * (c_txt - len(x)) for x in i2t_lists])
    i2t_lists = np.array([x + [x[0]] * (c_txt - len(x)) for x in i2t_lists])  # (B, C')
    text_rows = on_device(np.concatenate([t2i_text, i2t_lists.ravel()]))
    image_rows = on_device(np.concatenate([t2i_image, np.repeat(np.arange(b), c_txt)]))

    longest = int(lengths[text_rows].max())
    kv = take_states(states, image_rows)
    logits = model.match(
        texts[text_rows, :longest].float(), text_mask(lengths[text_rows], longest), kv
    )  # (P,)
    stage1 = (vectors[text_rows].float() * f.image_vectors[image_ids][image_rows].float()).sum(-1)
    scores = logits.float() + itc * stage1  # (P,) float32 also under bf16 autocast
    t2i_scores = scores[: b * c_img].view(b, c_img)
    i2t_scores = scores[b * c_img :].view(b, c_txt).masked_fill(padding, -1e4)
    target = torch.zeros(b, dtype=torch.long, device=device)  # true candidates come first
    loss = 0.5 * (F.cross_entropy(t2i_scores, target) + F.cross_entropy(i2t_scores, target))
    return loss, len(text_rows)


def _then(rows, extra):
    """`rows` followed by `extra` (the edited captions' rows), which may be empty."""
    import torch

    return torch.cat([rows, extra]) if len(extra) else rows


@dataclass
class _Pools:
    t2i: np.ndarray  # (T, M) image ids most similar to each caption, own image excluded
    t2i_sims: np.ndarray
    i2t: np.ndarray  # (N, M) caption ids most similar to each image, own captions excluded
    i2t_sims: np.ndarray


def gallery_blocks(n_images: int, gallery: int) -> list[np.ndarray]:
    """Image ids split into consecutive, near-equal blocks of about `gallery` images."""
    n_blocks = max(1, round(n_images / max(1, gallery)))
    return np.array_split(np.arange(n_images), n_blocks)


def hard_pools(feats, dataset, m: int, gallery: int) -> _Pools:
    """Each caption's stage-1 top-m images and each image's top-m captions, searched within
    its gallery (a block of about `gallery` images and their captions), own matches excluded.

    Why galleries: mined from the whole training set, negatives outrank the true item far
    more often than in the gallery stage 2 re-ranks at test time, and the re-ranker learns
    "high stage-1 similarity means negative", which buries right answers (measured on an
    H100 with 200,000 scenes: t2i R@1 56 -> 26; with 1,000-image galleries 56 -> 72).
    ALBEF's in-batch mining has the same effect through its batch size."""
    t2i_map = np.asarray(dataset.text_to_image)
    images, texts = feats.image_vectors, feats.text_vectors
    blocks = gallery_blocks(len(images), gallery)
    m = min(m, min(len(b) for b in blocks) - 1)
    if m < 1:
        raise ValueError("hard negatives need at least two training images")
    t2i = np.empty((len(texts), m), np.int64)
    t2i_s = np.empty((len(texts), m), np.float32)
    i2t = np.empty((len(images), m), np.int64)
    i2t_s = np.empty((len(images), m), np.float32)
    for block in blocks:
        captions = np.flatnonzero((t2i_map >= block[0]) & (t2i_map <= block[-1]))
        ids, sims = _topm(
            texts[captions],
            images[block],
            m,
            own=lambda rows, c=captions, b=block: t2i_map[c[rows]][:, None] == b[None, :],
        )
        t2i[captions], t2i_s[captions] = block[ids], sims
        ids, sims = _topm(
            images[block],
            texts[captions],
            m,
            own=lambda rows, c=captions, b=block: b[rows][:, None] == t2i_map[c][None, :],
        )
        i2t[block], i2t_s[block] = captions[ids], sims
    return _Pools(t2i, t2i_s, i2t, i2t_s)


def _topm(queries, items, m, own):
    """Top-m items per query (indices into `items`) by inner product, excluding each query's
    own matches (`own(rows)`: a (len(rows), len(items)) bool mask)."""
    out_ids = np.empty((len(queries), m), dtype=np.int64)
    out_sims = np.empty((len(queries), m), dtype=np.float32)
    for start in range(0, len(queries), 2048):
        rows = np.arange(start, min(start + 2048, len(queries)))
        sims = queries[rows] @ items.T  # (r, n_items)
        sims[own(rows)] = -np.inf
        top = (
            np.argpartition(-sims, m, axis=1)[:, :m]
            if m < sims.shape[1]
            else np.tile(np.arange(sims.shape[1]), (len(rows), 1))
        )
        out_ids[rows] = top
        out_sims[rows] = np.take_along_axis(sims, top, axis=1)
    return out_ids, out_sims


def _sample(ids, sims, tau, rng, n: int = 1) -> np.ndarray:
    """ids, sims (B, M) -> (B, n): per row n distinct ids drawn in proportion to
    softmax(similarity / tau) (ALBEF), without replacement.

    Gumbel top-n: adding Gumbel noise to the logits and keeping the n largest draws exactly
    that, for all rows at once (a Python loop of rng.choice cost ~0.3 ms per query)."""
    keys = sims / tau + rng.gumbel(size=sims.shape)  # (B, M)
    top = np.argpartition(-keys, n - 1, axis=1)[:, :n]  # (B, n); n > M is an error, as before
    return np.take_along_axis(ids, top, axis=1)


@dataclass
class _EditPairs:
    """(caption, its edit, the caption's image) triples the edit-pair loss draws from."""

    captions: np.ndarray  # (P,) caption ids
    edits: np.ndarray  # (P,) rows into _CaptionEdits' arrays
    images: np.ndarray  # (P,) image id of each caption

    def draw(self, n: int, rng) -> _EditPairs:
        pick = rng.choice(len(self.captions), min(n, len(self.captions)), replace=False)
        return _EditPairs(self.captions[pick], self.edits[pick], self.images[pick])


EDIT_KINDS = ("attribute", "relation", "object")  # the columns of _CaptionEdits.rows


def edit_columns(kinds: str) -> list[int]:
    """The _CaptionEdits.rows columns of the named edit kinds ("attribute,relation")."""
    from retrieval.errors import InputError

    names = [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = sorted(set(names) - set(EDIT_KINDS))
    if unknown:
        raise InputError(
            f"--edit-kinds {kinds}: unknown kind {', '.join(unknown)}; "
            f"use a comma-separated subset of {','.join(EDIT_KINDS)}"
        )
    return [EDIT_KINDS.index(k) for k in names]


def edit_pair_pool(edits, kinds: str, text_to_image) -> _EditPairs:
    """Every (caption, edit) of the named kinds, for the edit-pair loss."""
    rows = edits.rows[:, edit_columns(kinds)]  # (T, k)
    caption, column = np.nonzero(rows >= 0)
    return _EditPairs(caption, rows[caption, column], np.asarray(text_to_image)[caption])


def _edit_pair_loss(model, pairs: _EditPairs, edits, f: _FeatureTensors):
    """Logistic loss on (true caption - its edit) logits against the caption's own image.

    Stage 1 is left out on purpose: it barely tells the two apart, so this term's whole
    gradient goes to what the edit changed (which colour is on which shape, which side)."""
    import torch.nn.functional as F

    from retrieval.reranker import text_mask

    device = f.image_tokens.device
    images = f.image_tokens[torch_rows(pairs.images, device)].float()  # (P, N, D)
    states = model.encode_images(images)

    def logits(tokens, lengths):
        longest = int(lengths.max())
        return model.match(tokens[:, :longest].float(), text_mask(lengths, longest), states)

    captions, edited = torch_rows(pairs.captions, device), torch_rows(pairs.edits, device)
    true = logits(f.text_tokens[captions], f.text_lengths[captions])  # (P,)
    false = logits(edits.tokens[edited], edits.lengths[edited])  # (P,)
    return F.softplus(false.float() - true.float()).mean()


def torch_rows(rows: np.ndarray, device):
    import torch

    return torch.as_tensor(np.asarray(rows), device=device)


@dataclass
class _CaptionEdits:
    """Every training caption's meaning-changing edits, encoded once.

    Encoding them per step cost the CPU trainer ~5% of a step and a GPU run its text
    tower every step; a caption has few distinct edits, so once is enough."""

    rows: np.ndarray  # (T, E) row of caption t's edit of kind e in the arrays below; -1: none
    tokens: object  # (X, L, D) float16 tensor
    lengths: object  # (X,) int64 tensor
    vectors: object  # (X, D) float32 tensor

    def of(self, captions: np.ndarray):
        """The edits of a batch's captions: (tokens, lengths, batch row of each, vectors)."""
        rows = self.rows[captions]  # (B, E)
        batch_row, kind = np.nonzero(rows >= 0)
        ids = rows[batch_row, kind]
        return self.tokens[ids], self.lengths[ids], batch_row, self.vectors[ids]


def caption_edits(
    encoder, captions, rng: random.Random, device: str = "cpu", progress=None
) -> _CaptionEdits:
    """Each caption's attribute swap, relation flip and object change (those that apply);
    `progress("caption edits", done, total)` as they are encoded."""
    import torch

    from evaluation.embed_dataset import encode_text_list
    from training.text_edits import change_object, flip_relation, swap_attributes

    objects = object_words(captions)
    kinds = (swap_attributes, flip_relation, lambda c, r: change_object(c, r, objects))
    rows = np.full((len(captions), len(kinds)), -1, np.int64)
    texts = []
    for t, caption in enumerate(captions):
        for k, edit in enumerate(kinds):
            edited = edit(caption, rng)
            if edited is not None and edited != caption:
                rows[t, k] = len(texts)
                texts.append(edited)
    if not texts:  # captions without colours, relations or known objects: no text negatives
        empty = torch.zeros(0, device=device)
        return _CaptionEdits(rows, empty, empty.long(), empty)
    encoded = encode_text_list(
        encoder,
        texts,
        progress=progress and (lambda _, done, total: progress("caption edits", done, total)),
    )
    return _CaptionEdits(
        rows,
        torch.from_numpy(encoded.tokens).to(device),
        torch.from_numpy(encoded.lengths.astype(np.int64)).to(device),
        torch.from_numpy(encoded.vectors).to(device),
    )


def _validation_set(config: RerankerTrainConfig, encoder):
    from evaluation.datasets import load_dataset
    from evaluation.embed_dataset import embed_dataset
    from retrieval.errors import DatasetError

    try:
        val = load_dataset(config.data, config.images_root, split="val").head(config.val_images)
    except DatasetError:
        return None
    return val, embed_dataset(encoder, val, token_layer=config.image_token_layer), encoder


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


def _check_start(folder: Path, ours: dict) -> None:
    """Refuse an --init-from whose saved config differs from `ours` in a key both have
    (the fused stage-1 weight aside): a training config before embedding, the model's after."""
    from retrieval.errors import InputError
    from retrieval.reranker import RerankerConfig
    from retrieval.reranker_files import folder_config

    saved = {"image_token_layer": None, **folder_config(folder)}
    fields = RerankerConfig.__dataclass_fields__.keys()
    keys = (ours.keys() & saved.keys() & fields) - {"stage1_weight"}
    differ = sorted(k for k in keys if ours[k] != saved[k])
    if differ:
        shown = ", ".join(f"{k} {saved[k]!r} (here {ours[k]!r})" for k in differ)
        raise InputError(f"--init-from {folder} was trained with {shown}: give the same options")


def _start_from(model, folder: Path) -> None:
    """Load a saved re-ranker's weights into `model`, whose config must match its own
    (the fused stage-1 weight aside: training starts again from the encoder's scale)."""
    from safetensors.torch import load_file

    from retrieval.errors import InputError
    from retrieval.reranker_files import WEIGHTS_FILE

    _check_start(folder, asdict(model.config))
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except OSError as exc:
        raise InputError(f"--init-from {folder}: {exc}") from exc
    model.load_state_dict(state)  # float16 files are cast to the model's float32


def _maybe_resume(out: Path, model, optimizer, schedule, state, device: str) -> None:
    import torch

    path = out / CHECKPOINT
    if not path.exists():
        return
    payload = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    state.step = payload["state"]["step"]
    state.history = payload["state"]["history"]
