"""Short phrases as re-ranker queries (--phrase-queries).

A sentence describes one scene; "a red circle" is true of many. Trained on sentences
alone, the re-ranker answers phrases little better than stage 1, which finds the colour
and leaves the shape to luck. Here each step scores some of the training split's phrases
against their stage-1 look-alikes, and every image the phrase is true of (by its corpus
scene, corpus/phrases.is_phrase_true) counts as a right answer: a multi-positive softmax,
so "red things that are not circles", stage 1's near misses, are what it learns to push
down, and other red circles are never pushed down with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xmr.training.reranker_training.losses import FeatureTensors, torch_rows

# Look-alikes per phrase: its stage-1 top G training images. A search re-ranks the top 128
# of its index; for 8,000 training images this keeps a share of true images close to what
# such a depth holds, with enough near misses to learn from.
GALLERY = 256
# Candidates drawn from that gallery per phrase and step, beside the phrase's own image.
CANDIDATES = 15


@dataclass
class PhraseBatch:
    """n phrase queries, each with its candidate images (own image first)."""

    phrases: np.ndarray  # (n,) rows into PhraseQueries.texts
    images: np.ndarray  # (n, 1 + C) training image rows
    positive: np.ndarray  # (n, 1 + C) bool: the phrase is true of that image
    valid: np.ndarray  # (n, 1 + C) bool: False for a repeat of the own image


@dataclass
class PhraseQueries:
    """The training split's phrases, encoded once, with each one's look-alike gallery."""

    texts: list[str]  # (Q,) distinct phrases
    tokens: object  # (Q, L, D) float16 tensor
    lengths: object  # (Q,) int64 tensor
    vectors: object  # (Q, D) float32 tensor
    owners: np.ndarray  # (O,) phrase of each (image, one of its own phrases) occurrence
    owner_images: np.ndarray  # (O,) that image
    gallery: np.ndarray  # (Q, G) each phrase's stage-1 top-G training images
    truth: np.ndarray  # (Q, G) bool: the phrase is true of that gallery image

    def draw(self, n: int, rng, candidates: int = CANDIDATES) -> PhraseBatch:
        """n occurrences (common phrases as often as the corpus writes them), each with
        `candidates` images drawn from its phrase's gallery."""
        pick = rng.choice(len(self.owners), n, replace=n > len(self.owners))
        phrases, own = self.owners[pick], self.owner_images[pick]
        g = self.gallery.shape[1]
        columns = np.argsort(rng.random((n, g)), axis=1)[:, : min(candidates, g)]  # (n, C)
        drawn = self.gallery[phrases[:, None], columns]
        images = np.concatenate([own[:, None], drawn], axis=1)
        positive = np.concatenate(
            [np.ones((n, 1), bool), self.truth[phrases[:, None], columns]], axis=1
        )
        valid = np.concatenate([np.ones((n, 1), bool), drawn != own[:, None]], axis=1)
        return PhraseBatch(phrases, images, positive, valid)


def phrase_queries(
    encoder, phrases_of_images: list[list[str]], scenes: list, image_vectors, progress=None
) -> PhraseQueries:
    """phrases_of_images (N,) each training image's own phrases, scenes (N,) its corpus
    Scene, image_vectors (N, D) its stage-1 vectors -> the phrases encoded, with galleries.
    `progress("phrases", done, total)` while they are encoded."""
    from xmr.training.corpus.phrases import is_phrase_true
    from xmr.training.reranker_training.edits import encoded_texts

    texts = sorted({p for own in phrases_of_images for p in own})
    row = {text: q for q, text in enumerate(texts)}
    owners = np.array([row[p] for own in phrases_of_images for p in own], np.int64)
    owner_images = np.array([i for i, own in enumerate(phrases_of_images) for _ in own], np.int64)
    tokens, lengths, vectors = encoded_texts(encoder, texts, "phrases", encoder.device, progress)
    gallery = _top_images(vectors.cpu().numpy(), np.asarray(image_vectors, np.float32), GALLERY)
    truth = np.array(
        [[is_phrase_true(scenes[i], texts[q]) for i in gallery[q]] for q in range(len(texts))],
        bool,
    ).reshape(gallery.shape)
    return PhraseQueries(texts, tokens, lengths, vectors, owners, owner_images, gallery, truth)


def _top_images(text_vectors: np.ndarray, image_vectors: np.ndarray, g: int) -> np.ndarray:
    """(Q, D), (N, D) unit vectors -> (Q, min(g, N)) each text's most similar images, best
    first; in blocks of texts so the similarity matrix stays small."""
    g = min(g, len(image_vectors))
    out = np.empty((len(text_vectors), g), np.int64)
    for start in range(0, len(text_vectors), 512):
        sims = text_vectors[start : start + 512] @ image_vectors.T  # (q, N)
        top = np.argpartition(-sims, g - 1, axis=1)[:, :g]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[start : start + 512] = np.take_along_axis(top, order, axis=1)
    return out


def phrase_query_loss(model, batch: PhraseBatch, queries: PhraseQueries, f: FeatureTensors):
    """Multi-positive softmax over each phrase's candidates, scored like search (the
    re-ranker logit fused with the stage-1 cosine, as in listwise_loss):
    -log(sum over true images of p), p the softmax over all its candidates."""
    import torch

    from xmr.retrieval.reranker import fused_score, take_states, text_mask

    device = f.image_tokens.device
    n, c = batch.images.shape
    unique, rows = np.unique(batch.images, return_inverse=True)
    states = model.encode_images(f.image_tokens[torch_rows(unique, device)].float())
    kv = take_states(states, torch_rows(rows.reshape(-1), device))  # one per (phrase, image)

    phrase_rows = torch_rows(np.repeat(batch.phrases, c), device)  # (n * C,)
    lengths = queries.lengths[phrase_rows]
    longest = int(lengths.max())
    logits = model.match(
        queries.tokens[phrase_rows, :longest].float(), text_mask(lengths, longest), kv
    )  # (n * C,)
    image_rows = torch_rows(batch.images.reshape(-1), device)
    stage1 = (queries.vectors[phrase_rows].float() * f.image_vectors[image_rows].float()).sum(-1)
    scores = fused_score(logits.float(), stage1, model.config.itc_weight).view(n, c)
    scores = scores.masked_fill(~torch_rows(batch.valid, device), -1e4)
    right = scores.masked_fill(~torch_rows(batch.positive & batch.valid, device), -1e4)
    return (torch.logsumexp(scores, 1) - torch.logsumexp(right, 1)).mean()
