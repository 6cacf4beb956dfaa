"""Does the re-ranker learn attribute binding when it sees enough scenes? (GPU experiment)

On the 2 development cores every re-ranker variant stayed at the dual encoder's level on
attribute swaps (~68%) after at most 12,000 training scenes and 1,500 steps. This script asks
the question at a scale only a GPU affords: `--scenes` fresh scenes (seed 0) drawn in memory
by the corpus generator, the frozen xmr-tiny run on the GPU every step (only pixels and token
ids are kept), one re-ranker per token source trained for `--minutes`, each judged on the test
split of `xmr make-corpus shapes --images 10000 --seed 1234` (1,000 images, 5,000 captions)
with the same metrics as `xmr bench`: stage-1 top-16 re-ranked R@1 both ways and accuracy on
the corpus's hard negatives.

Token sources (what a token store would hold per image, 64 tokens of width 128):
  stored   the projected last-layer tokens xmr stores today (ln_post + proj)
  block0   the residual stream after the first transformer block, layer-normalised
  patch    the patch embeddings with positions, before any block, layer-normalised

Writes reranker_scale.json / .md to --out. Runs on the CPU too (for a smoke test: tiny sizes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CAPTIONS = 5
NEGATIVE_KINDS = ("attribute_swap", "relation_swap", "shape_change", "colour_change")
_TOKENIZER = None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- data: scenes drawn and rendered in worker processes --------------------------------------


def _tokenize(texts: list[str], context: int = 48) -> np.ndarray:
    """open_clip's SimpleTokenizer output (n, context), memoised per word: the corpus speaks a
    vocabulary of ~60 words, and the plain tokenizer (ftfy, regex, BPE per call) costs ~200 us
    a caption, which at millions of captions would outlast the training."""
    global _TOKENIZER
    from open_clip import tokenizer

    if _TOKENIZER is None:
        _TOKENIZER = (tokenizer.SimpleTokenizer(context_length=context), {})
    tok, memo = _TOKENIZER
    out = np.zeros((len(texts), context), np.int32)
    for row, text in enumerate(texts):
        ids = [tok.sot_token_id]
        for word in tok.pat.findall(tokenizer.whitespace_clean(text.strip()).lower()):
            if word not in memo:
                memo[word] = tok.encode(word)
            ids += memo[word]
        ids = (ids + [tok.eot_token_id])[:context]
        ids[-1] = tok.eot_token_id  # open_clip's truncation keeps the end-of-text token
        out[row, : len(ids)] = ids
    return out


def _chunk(job) -> dict:
    """Pixels, caption ids and edited-caption ids of scenes[start:start+n] of one seed."""
    from training.corpus import DATASET_NAME, describe, render_scene
    from training.text_edits import flip_relation, swap_attributes

    seed, start, scenes = job
    pixels, captions, swaps, flips, negatives = [], [], [], [], []
    has_swap, has_flip, has_negative = [], [], []
    for offset, scene in enumerate(scenes):
        index = start + offset
        pixels.append(np.asarray(render_scene(scene, 64)))
        description = describe(scene, random.Random(f"{DATASET_NAME}/{seed}/{index}"))
        captions += description.captions
        edit_rng = random.Random(f"edits/{seed}/{index}")
        for caption in description.captions:
            swapped, flipped = swap_attributes(caption, edit_rng), flip_relation(caption, edit_rng)
            swaps.append(swapped or caption)
            flips.append(flipped or caption)
            has_swap.append(swapped is not None)
            has_flip.append(flipped is not None)
        for kind in NEGATIVE_KINDS:  # the corpus's own hard negatives of captions[0]
            negatives.append(description.negatives.get(kind, description.captions[0]))
            has_negative.append(kind in description.negatives)
    n = len(scenes)
    return {
        "pixels": np.stack(pixels),  # (n, 64, 64, 3) uint8
        "captions": _tokenize(captions).reshape(n, CAPTIONS, -1),
        "swaps": _tokenize(swaps).reshape(n, CAPTIONS, -1),
        "flips": _tokenize(flips).reshape(n, CAPTIONS, -1),
        "has_swap": np.array(has_swap).reshape(n, CAPTIONS),
        "has_flip": np.array(has_flip).reshape(n, CAPTIONS),
        "negatives": _tokenize(negatives).reshape(n, len(NEGATIVE_KINDS), -1),
        "has_negative": np.array(has_negative).reshape(n, len(NEGATIVE_KINDS)),
    }


def draw(n_scenes: int, seed: int, keep_from: int = 0, workers: int | None = None) -> dict:
    """Scenes keep_from..n_scenes-1 of `sample_scenes(n_scenes, seed)` (the corpus's order)."""
    from training.corpus import sample_scenes

    scenes = sample_scenes(n_scenes, seed)[keep_from:]
    workers = workers or max(1, (os.cpu_count() or 2) - 1)
    size = max(1, min(2000, -(-len(scenes) // workers)))
    jobs = [(seed, keep_from + a, scenes[a : a + size]) for a in range(0, len(scenes), size)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_chunk, jobs))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


# --- the frozen encoder, run on the GPU ------------------------------------------------------


class FrozenTokens:
    """xmr-tiny's pooled vectors and one token source, computed on the fly (no grad)."""

    def __init__(self, encoder, source: str):
        import torch

        self.encoder, self.source, self.torch = encoder, source, torch
        visual = encoder.model.visual
        self.visual = visual
        mean = torch.tensor(encoder.preprocess.transforms[-1].mean, device=encoder.device)
        std = torch.tensor(encoder.preprocess.transforms[-1].std, device=encoder.device)
        self.mean, self.std = mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)
        self._captured = None
        if source == "block0":
            visual.transformer.resblocks[0].register_forward_hook(self._capture_output)
        elif source == "patch":
            visual.transformer.resblocks[0].register_forward_pre_hook(self._capture_input)

    def _capture_output(self, module, args, output):
        self._captured = output

    def _capture_input(self, module, args):
        self._captured = args[0]

    def images(self, pixels_u8):
        """(B, 64, 64, 3) uint8 tensor -> vectors (B, D) fp32, tokens (B, 64, 128) fp32."""
        torch = self.torch
        x = pixels_u8.to(self.encoder.device).permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.mean) / self.std  # the encoder's Normalize (images are already 64 px)
        with torch.no_grad(), self.encoder._autocast():
            self.visual.output_tokens = True
            pooled, tokens = self.visual(x)  # (B, D), (B, 64, width)
            self.visual.output_tokens = False
            if self.source == "stored":
                tokens = tokens @ self.visual.proj  # what `xmr index` stores
            else:  # the residual stream at that depth, CLS dropped, normalised without params
                tokens = torch.nn.functional.layer_norm(
                    self._captured[:, 1:].float(), (self._captured.shape[-1],)
                )
        vectors = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return vectors, tokens.float()

    def texts(self, ids):
        """(B, 48) int tensor -> vectors (B, D), tokens (B, 48, D) fp32, lengths (B,)."""
        torch = self.torch
        ids = ids.to(self.encoder.device).long()
        with torch.no_grad(), self.encoder._autocast():
            pooled, tokens = self.encoder._text_forward(ids)
        lengths = (ids != 0).sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled.float(), dim=-1), tokens.float(), lengths


def embed_all(frozen, data: dict, batch: int = 4096) -> tuple:
    """Pooled vectors of every image (N, D) and caption (N*5, D), on the device."""
    import torch

    pixels = torch.from_numpy(data["pixels"])
    captions = torch.from_numpy(data["captions"].reshape(-1, data["captions"].shape[-1]))
    images = torch.cat(
        [frozen.images(pixels[a : a + batch])[0] for a in range(0, len(pixels), batch)]
    )
    texts = torch.cat(
        [frozen.texts(captions[a : a + batch])[0] for a in range(0, len(captions), batch)]
    )
    return images, texts


def mining_pools(images, texts, m: int, gallery: int) -> tuple:
    """The trainer's own hard-negative pools (`training.reranker_training.hard_pools`:
    stage-1 top-m within galleries of ~`gallery` images), as tensors on the images' device."""
    import torch

    from training.reranker_training import hard_pools

    n = len(images)
    vectors = SimpleNamespace(image_vectors=images.cpu().numpy(), text_vectors=texts.cpu().numpy())
    dataset = SimpleNamespace(text_to_image=np.repeat(np.arange(n), CAPTIONS))
    pools = hard_pools(vectors, dataset, m, gallery)
    return tuple(
        torch.from_numpy(a).to(images.device)
        for a in (pools.t2i, pools.t2i_sims, pools.i2t, pools.i2t_sims)
    )


def sample_from(pool_ids, pool_sims, rows, tau: float, k: int):
    """k distinct ids per row, drawn in proportion to softmax(similarity / tau) (ALBEF)."""
    import torch

    weights = torch.softmax(pool_sims[rows] / tau, dim=1)
    picks = torch.multinomial(weights, k, replacement=False)
    return pool_ids[rows].gather(1, picks)


# --- training -----------------------------------------------------------------------------


def train(frozen, data, pools, args, source: str, test, save=lambda history: None) -> dict:
    import torch
    import torch.nn.functional as F

    from retrieval.reranker import Reranker, RerankerConfig, take_states, text_mask

    device = frozen.encoder.device
    torch.manual_seed(args.seed)
    itc = float(frozen.encoder.model.logit_scale.exp())
    config = RerankerConfig(
        token_dim=128,
        text_len=48,
        image_tokens=64,
        width=args.width,
        layers=args.layers,
        heads=args.heads,
        image_layers=args.image_layers,
        image_pool=1,
        mlp_ratio=4.0,
        itc_weight=itc,
        stage1_weight=itc,
        encoder="xmr-tiny" if source == "stored" else f"xmr-tiny ({source} tokens)",
    )
    model = Reranker(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    pixels = torch.from_numpy(data["pixels"]).to(device)
    ids = {k: torch.from_numpy(data[k]).to(device) for k in ("captions", "swaps", "flips")}
    has_swap = torch.from_numpy(data["has_swap"]).to(device)
    has_flip = torch.from_numpy(data["has_flip"]).to(device)
    t2i_ids, t2i_sims, i2t_ids, i2t_sims = pools
    n, b, h = len(pixels), args.batch, args.hard
    history, step, started, loss_value = [], 0, time.monotonic(), float("nan")
    budget = args.minutes * 60
    next_eval = [budget * f for f in args.eval_at]
    while True:
        elapsed = time.monotonic() - started
        if next_eval and elapsed >= next_eval[0]:
            next_eval.pop(0)
            row = {"step": step, "seconds": round(elapsed, 1), "loss": round(loss_value, 4)}
            row.update({k: round(v, 2) for k, v in evaluate(frozen, model, test).items()})
            history.append(row)
            save(history)
            log(f"{source}: {row}")
            if not next_eval:
                break
            started += time.monotonic() - started - elapsed  # evaluation time is not training
        lr = args.lr * min(1.0, (step + 1) / 200)  # warm-up, then constant (time budget)
        for group in optimizer.param_groups:
            group["lr"] = lr
        scene = torch.randint(n, (b,), device=device)
        which = torch.randint(CAPTIONS, (b,), device=device)
        caption = scene * CAPTIONS + which  # (B,) global caption ids
        hard_images = sample_from(t2i_ids, t2i_sims, caption, args.tau, h)  # (B, H)
        hard_captions = sample_from(i2t_ids, i2t_sims, scene, args.tau, h)  # (B, H)
        image_ids = torch.cat([scene, hard_images.ravel()])  # (B + B*H,)
        img_vec, img_tok = frozen.images(pixels[image_ids])
        # texts: B captions, B*H hard captions, B swaps, B flips
        flat = ids["captions"].view(-1, 48)
        text_ids = torch.cat(
            [
                flat[caption],
                flat[hard_captions.ravel()],
                ids["swaps"][scene, which],
                ids["flips"][scene, which],
            ]
        )
        txt_vec, txt_tok, lengths = frozen.texts(text_ids)
        # text -> image lists: [own image, H hard, 1 other batch image]
        other = (torch.arange(b, device=device) + torch.randint(1, b, (b,), device=device)) % b
        t2i_images = torch.cat(
            [
                torch.arange(b, device=device)[:, None],
                b + torch.arange(b * h, device=device).view(b, h),
                other[:, None],
            ],
            1,
        )  # (B, C) rows of image_ids
        t2i_texts = torch.arange(b, device=device)[:, None].expand_as(t2i_images)
        # image -> text lists: [own caption, H hard, its swap, its flip]
        i2t_texts = torch.cat(
            [
                torch.arange(b, device=device)[:, None],
                b + torch.arange(b * h, device=device).view(b, h),
                (b + b * h + torch.arange(b, device=device))[:, None],
                (2 * b + b * h + torch.arange(b, device=device))[:, None],
            ],
            1,
        )  # (B, C') rows of text_ids
        i2t_images = torch.arange(b, device=device)[:, None].expand_as(i2t_texts)
        text_rows = torch.cat([t2i_texts.ravel(), i2t_texts.ravel()])
        image_rows = torch.cat([t2i_images.ravel(), i2t_images.ravel()])
        longest = int(lengths.max())
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            states = model.encode_images(img_tok)
            kv = take_states(states, image_rows)
            logits = model.match(
                txt_tok[text_rows, :longest], text_mask(lengths[text_rows], longest), kv
            ).float()
        stage1 = (txt_vec[text_rows] * img_vec[image_rows]).sum(-1)
        scores = logits + itc * stage1
        c = t2i_images.shape[1]
        t2i_scores = scores[: b * c].view(b, c)
        i2t_scores = scores[b * c :].view(b, -1)
        missing = torch.cat(
            [
                torch.zeros(b, 1 + h, dtype=torch.bool, device=device),
                ~has_swap[scene, which][:, None],
                ~has_flip[scene, which][:, None],
            ],
            1,
        )
        i2t_scores = i2t_scores.masked_fill(missing, -1e4)
        target = torch.zeros(b, dtype=torch.long, device=device)
        loss = 0.5 * (F.cross_entropy(t2i_scores, target) + F.cross_entropy(i2t_scores, target))
        swap_ok = has_swap[scene, which].float()
        pairwise = F.softplus(i2t_scores[:, 1 + h] - i2t_scores[:, 0]) * swap_ok
        loss = loss + args.swap_weight * pairwise.sum() / swap_ok.sum().clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 100 == 0 or step == 1:
            loss_value = loss.item()
            log(f"{source}: step {step} loss {loss_value:.4f} {elapsed / step * 1000:.0f} ms/step")
    if args.save and source == "stored":  # reads what `xmr index` stores: usable by search
        from retrieval.reranker import save_reranker

        model.eval()
        save_reranker(model, Path(args.save), torch.float16)  # fp32 would not come back
        log(f"saved the re-ranker to {args.save}")
    return {"source": source, "config": config.__dict__, "steps": step, "history": history}


# --- evaluation, the same metrics as `xmr bench` ----------------------------------------------


def test_features(frozen, test: dict) -> dict:
    import torch

    pixels = torch.from_numpy(test["pixels"])
    vec, tok = frozen.images(pixels)
    ids = torch.from_numpy(test["captions"].reshape(-1, 48))
    tvec, ttok, tlen = frozen.texts(ids)
    negs = torch.from_numpy(test["negatives"].reshape(-1, 48))
    nvec, ntok, nlen = frozen.texts(negs)
    k = len(NEGATIVE_KINDS)
    return {
        "image_vectors": vec.cpu().numpy(),
        "image_tokens": tok.half().cpu().numpy(),
        "text_vectors": tvec.cpu().numpy(),
        "text_tokens": ttok.half().cpu().numpy(),
        "text_lengths": tlen.cpu().numpy(),
        "neg_vectors": nvec.cpu().numpy().reshape(len(vec), k, -1),
        "neg_tokens": ntok.half().cpu().numpy().reshape(len(vec), k, 48, -1),
        "neg_lengths": nlen.cpu().numpy().reshape(len(vec), k),
        "has_negative": test["has_negative"],
    }


class _Embeddings:
    def __init__(self, f: dict):
        self.image_tokens, self.text_tokens = f["image_tokens"], f["text_tokens"]
        self.text_lengths = f["text_lengths"]


def evaluate(frozen, model, f: dict | None) -> dict:
    from evaluation import metrics
    from evaluation.rerank_eval import rerank_logits, reranked_ranks
    from retrieval.reranker import RerankerRuntime

    if f is None:
        return {}
    model.eval()
    runtime = RerankerRuntime(model, "experiment", frozen.encoder.device)
    scores = f["text_vectors"] @ f["image_vectors"].T  # (T, N)
    t2i_map = np.repeat(np.arange(len(f["image_vectors"])), CAPTIONS)
    weight = model.config.stage1_weight
    logits, _ = rerank_logits(runtime, _Embeddings(f), scores, 16)
    ranks = reranked_ranks(logits, t2i_map, weight)
    row = {
        "t2i_R@1": metrics.recall_at_ks(ranks["t2i"], (1,))["R@1"],
        "i2t_R@1": metrics.recall_at_ks(ranks["i2t"], (1,))["R@1"],
    }
    states = runtime.image_states(f["image_tokens"])
    for k, kind in enumerate(NEGATIVE_KINDS):
        images = np.flatnonzero(f["has_negative"][:, k])
        positives = images * CAPTIONS  # captions[0] of each scene
        pos = runtime.score_pairs(
            f["text_tokens"][positives], f["text_lengths"][positives], states, images
        ) + weight * (f["image_vectors"][images] * f["text_vectors"][positives]).sum(1)
        neg = runtime.score_pairs(
            f["neg_tokens"][images, k], f["neg_lengths"][images, k], states, images
        ) + weight * (f["image_vectors"][images] * f["neg_vectors"][images, k]).sum(1)
        row[kind] = round(metrics.hard_negative_accuracy(pos, neg), 1)
    model.train()
    return row


def dual_encoder_row(f: dict) -> dict:
    from evaluation import metrics

    scores = f["text_vectors"] @ f["image_vectors"].T
    t2i_map = np.repeat(np.arange(len(f["image_vectors"])), CAPTIONS)
    row = {
        "t2i_R@1": metrics.recall_at_ks(metrics.text_to_image_ranks(scores, t2i_map), (1,))["R@1"],
        "i2t_R@1": metrics.recall_at_ks(metrics.image_to_text_ranks(scores.T, t2i_map), (1,))[
            "R@1"
        ],
    }
    for k, kind in enumerate(NEGATIVE_KINDS):
        images = np.flatnonzero(f["has_negative"][:, k])
        pos = (f["image_vectors"][images] * f["text_vectors"][images * CAPTIONS]).sum(1)
        neg = (f["image_vectors"][images] * f["neg_vectors"][images, k]).sum(1)
        row[kind] = round(metrics.hard_negative_accuracy(pos, neg), 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200_000)
    parser.add_argument("--sources", default="stored,block0")
    parser.add_argument("--minutes", type=float, default=2.0, help="training time per source")
    parser.add_argument("--eval-at", default="0.5,1.0", help="fractions of --minutes")
    parser.add_argument("--test-images", type=int, default=10_000, help="corpus size of the seed")
    parser.add_argument("--test-seed", type=int, default=1234)
    parser.add_argument("--test-split", type=int, default=1000, help="its last images: test")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--hard", type=int, default=3)
    parser.add_argument("--pool", type=int, default=16, help="stage-1 top-M negatives come from")
    parser.add_argument("--gallery", type=int, default=1000, help="scenes negatives come from")
    parser.add_argument("--tau", type=float, default=0.05)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--image-layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--swap-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results/gpu"))
    parser.add_argument(
        "--save",
        default=None,
        help="write the `stored` run's re-ranker here (an `xmr search --reranker` folder)",
    )
    args = parser.parse_args()
    args.eval_at = [float(x) for x in args.eval_at.split(",")]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"drawing {args.scenes} training scenes (seed 0) and the seed-{args.test_seed} test split")
    t0 = time.monotonic()
    data = draw(args.scenes, 0, workers=args.workers)
    test = draw(args.test_images, args.test_seed, args.test_images - args.test_split, args.workers)
    draw_seconds = time.monotonic() - t0
    log(f"drawn in {draw_seconds:.0f} s; swaps for {data['has_swap'].mean():.0%} of captions")

    import torch

    from retrieval.encoder import load_encoder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {
        "args": vars(args),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "draw_seconds": round(draw_seconds, 1),
        "runs": [],
    }
    for source in args.sources.split(","):
        encoder = load_encoder("xmr-tiny", device)
        frozen = FrozenTokens(encoder, source)
        feats = test_features(frozen, test)
        if "dual_encoder" not in results:
            results["dual_encoder"] = dual_encoder_row(feats)
            log(f"dual encoder: {results['dual_encoder']}")
        if "pools" not in results:  # pooled vectors do not depend on the token source
            t0 = time.monotonic()
            images, texts = embed_all(frozen, data)
            pools = mining_pools(images, texts, args.pool, args.gallery)
            del images, texts
            results["pools"] = {"seconds": round(time.monotonic() - t0, 1)}
            log(f"stage-1 pools: {results['pools']}")
        run = {"source": source, "history": []}
        results["runs"].append(run)

        def save(history, run=run):  # after every evaluation: a cut-off run keeps its rows
            run["history"] = history
            (out / "reranker_scale.json").write_text(json.dumps(results, indent=2, default=str))
            (out / "reranker_scale.md").write_text(markdown(results))

        run.update(train(frozen, data, pools, args, source, feats, save))
        save(run["history"])
    log("done")


def markdown(results: dict) -> str:
    kinds = ("t2i_R@1", "i2t_R@1", *NEGATIVE_KINDS)
    lines = [
        f"Re-ranker at scale on {results['device']}: {results['args']['scenes']} training scenes,"
        f" {results['args']['minutes']} min per token source; test split of seed "
        f"{results['args']['test_seed']} (R@1 after re-ranking stage-1 top 16; hard-negative %).",
        "",
        "| run | steps | " + " | ".join(kinds) + " |",
        "|---" * (len(kinds) + 2) + "|",
        "| dual encoder | - | " + " | ".join(str(results["dual_encoder"][k]) for k in kinds) + " |",
    ]
    for run in results["runs"]:
        for row in run["history"]:
            cells = " | ".join(str(row.get(k, "")) for k in kinds)
            lines.append(f"| {run['source']} @ {row['seconds']} s | {row['step']} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
