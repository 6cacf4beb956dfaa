"""The two training losses over frozen encoder features.

listwise_loss    cross-entropy over each query's candidate list (true candidate first),
                 scored like search: the fused final score at the encoder's logit scale
edit_pair_loss   logistic loss on (true caption - its edit) logits against the same image
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xmr.training.reranker_training.edits import EditPairs
from xmr.training.reranker_training.mining import Batch


@dataclass
class FeatureTensors:
    """The frozen encoder's outputs for the training split, as torch tensors on the device."""

    image_tokens: object  # (N, P, D) float16
    text_tokens: object  # (T, L, D) float16
    text_lengths: object  # (T,) int64
    image_vectors: object  # (N, D) float32
    text_vectors: object  # (T, D) float32

    @classmethod
    def of(cls, feats, device: str = "cpu") -> FeatureTensors:
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


def torch_rows(rows, device):
    """Row indices (numpy or a list) as a tensor on `device`."""
    import torch

    return torch.as_tensor(np.asarray(rows), device=device)


def own_image_words(model, captions: np.ndarray, text_to_image, f: FeatureTensors):
    """Each caption's word states read against its own image: what the grounding and
    relation-pair losses supervise. captions (C,) rows -> (words (C, L, W), mask (C, L),
    the images' states from encode_images)."""
    from xmr.retrieval.reranker import text_mask

    device = f.image_tokens.device
    states = model.encode_images(
        f.image_tokens[torch_rows(text_to_image[captions], device)].float()
    )
    rows = torch_rows(captions, device)
    lengths = f.text_lengths[rows]
    longest = int(lengths.max())
    mask = text_mask(lengths, longest)
    text = f.text_tokens[rows][:, :longest].float()  # (C, L, D)
    return model.text_states(text, mask, states)[:, 1:], mask, states


def listwise_loss(model, batch: Batch, edited, f: FeatureTensors):
    """Cross-entropy over each query's candidate list, true candidate first.

    text -> image: [its image, H hard images, R batch images]
    image -> text: [its caption, H hard captions, its caption edited (when one exists)]
    A candidate's score is the re-ranker logit fused with the frozen stage-1 cosine at the
    encoder's logit scale (itc_weight), so training starts from the dual encoder's ranking
    and learns what it gets wrong: binding, relations, fine differences.
    Returns (loss, number of pairs scored).
    """
    import torch
    import torch.nn.functional as F

    from xmr.retrieval.reranker import fused_score, take_states, text_mask

    b, h = batch.hard_images.shape
    device = f.image_tokens.device

    # Unique images: the B batch images, then the B*H hard ones. States computed once each.
    image_ids = torch_rows(np.concatenate([batch.images, batch.hard_images.ravel()]), device)
    states = model.encode_images(f.image_tokens[image_ids].float())
    t2i_cands = np.concatenate(
        [np.arange(b)[:, None], b + np.arange(b * h).reshape(b, h), batch.random_images], axis=1
    )  # (B, C) rows into image_ids
    c_img = t2i_cands.shape[1]

    edited_tokens, edited_lengths, edited_rows, edited_vectors = edited
    # Texts: B true captions, B*H hard captions, E edited ones.
    caption_ids = torch_rows(np.concatenate([batch.captions, batch.hard_captions.ravel()]), device)
    texts = _then(f.text_tokens[caption_ids], edited_tokens)
    lengths = _then(f.text_lengths[caption_ids], edited_lengths)
    vectors = _then(f.text_vectors[caption_ids], edited_vectors)

    # Pairs: t2i (text row i, image cand) then i2t (text cand, image row i).
    i2t_lists, padding = _caption_lists(b, h, edited_rows)  # (B, C')
    c_txt = i2t_lists.shape[1]
    t2i_text = np.repeat(np.arange(b), c_img)
    text_rows = torch_rows(np.concatenate([t2i_text, i2t_lists.ravel()]), device)
    image_rows = torch_rows(
        np.concatenate([t2i_cands.ravel(), np.repeat(np.arange(b), c_txt)]), device
    )

    longest = int(lengths[text_rows].max())
    kv = take_states(states, image_rows)
    logits = model.match(
        texts[text_rows, :longest].float(), text_mask(lengths[text_rows], longest), kv
    )  # (P,)
    stage1 = (vectors[text_rows].float() * f.image_vectors[image_ids][image_rows].float()).sum(-1)
    scores = fused_score(logits.float(), stage1, model.config.itc_weight)  # (P,) float32
    t2i_scores = scores[: b * c_img].view(b, c_img)
    i2t_scores = scores[b * c_img :].view(b, c_txt).masked_fill(torch_rows(padding, device), -1e4)
    target = torch.zeros(b, dtype=torch.long, device=device)  # true candidates come first
    loss = 0.5 * (F.cross_entropy(t2i_scores, target) + F.cross_entropy(i2t_scores, target))
    return loss, len(text_rows)


def _caption_lists(b: int, h: int, edited_rows) -> tuple[np.ndarray, list[list[bool]]]:
    """Each image's candidate captions as rows into [B true, B*H hard, E edited] texts:
    (B, C') lists and their padding mask. Rows without an edit are padded with their own
    caption and the padding masked, so one row lacking an edit does not drop the others'."""
    lists = [[i] + list(b + i * h + np.arange(h)) for i in range(b)]
    for e, row in enumerate(edited_rows):
        lists[row].append(b + b * h + e)
    width = max(len(x) for x in lists)
    padding = [[False] * len(x) + [True] * (width - len(x)) for x in lists]
    return np.array([x + [x[0]] * (width - len(x)) for x in lists]), padding


def _then(rows, extra):
    """`rows` followed by `extra` (the edited captions' rows), which may be empty."""
    import torch

    return torch.cat([rows, extra]) if len(extra) else rows


def edit_pair_loss(model, pairs: EditPairs, edits, f: FeatureTensors):
    """Logistic loss on (true caption - its edit) logits against the caption's own image.

    Stage 1 is left out on purpose: it barely tells the two apart, so this term's whole
    gradient goes to what the edit changed (which colour is on which shape, which side)."""
    import torch.nn.functional as F

    return F.softplus(-edit_pair_margins(model, pairs, edits, f)).mean()


def hardest_edit_pairs(model, pairs: EditPairs, edits, f: FeatureTensors, n: int) -> EditPairs:
    """The n of `pairs` whose true caption the re-ranker now scores least above its edit:
    where the binding still fails (crowded scenes, small objects), not where it is learnt."""
    import torch

    with torch.no_grad():
        margins = edit_pair_margins(model, pairs, edits, f)  # (P,)
    return pairs.take(torch.argsort(margins)[:n].cpu().numpy())


def edit_pair_margins(model, pairs: EditPairs, edits, f: FeatureTensors):
    """(P,) float32: each pair's true caption logit minus its edit's, on the caption's image."""
    from xmr.retrieval.reranker import text_mask

    device = f.image_tokens.device
    images = f.image_tokens[torch_rows(pairs.images, device)].float()  # (P, N, D)
    states = model.encode_images(images)

    def logits(tokens, lengths):
        longest = int(lengths.max())
        return model.match(tokens[:, :longest].float(), text_mask(lengths, longest), states)

    captions, edited = torch_rows(pairs.captions, device), torch_rows(pairs.edits, device)
    true = logits(f.text_tokens[captions], f.text_lengths[captions])  # (P,)
    false = logits(edits.tokens[edited], edits.lengths[edited])  # (P,)
    return true.float() - false.float()
