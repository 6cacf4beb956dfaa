"""The ITM pass and the training loss.

The pass is transformers' `BlipForImageTextRetrieval.forward(..., use_itm_head=True)`
split in two, so that a batch runs the vision tower once per image, not once per pair:
  vision_states   pixels (I, 3, S, S) -> vision tokens (I, 1 + patches, Dv)
  itm_logits      text ids (P, L) cross-attending to the tokens of each pair's image
                  -> itm_head on the first token -> (P, 2), index 1 = match
The ITM pass reads the first token the way the scorer does (retrieval/blip_itm.py
`enc_token_id`): BLIP's [ENC] where the model has one (the hub checkpoints), else the
tokenizer's [CLS] (a model built from a config with its own vocabulary). The contrastive
pass keeps [CLS], as BLIP's does. tests/test_blip_training.py checks the split pass
against transformers' forward.
"""

from __future__ import annotations

import numpy as np

MATCH = 1  # logits[:, MATCH] is the match logit the scorer ranks by


def vision_states(model, pixels):
    """(I, 3, S, S) -> (I, 1 + patches, Dv) vision tokens."""
    return model.vision_model(pixel_values=pixels).last_hidden_state


def itm_logits(model, input_ids, lengths, states, rows, first_token: int | None = None):
    """Logits (P, 2) of pairs (input_ids[p], states[rows[p]]); ids (P, L), lengths (P,).
    `first_token`: the id put in place of [CLS] for the ITM pass (None: keep [CLS])."""
    import torch

    longest = int(lengths.max())
    ids = input_ids[:, :longest]
    if first_token is not None:
        ids = ids.clone()
        ids[:, 0] = first_token
    mask = (torch.arange(longest, device=ids.device)[None, :] < lengths[:, None]).long()
    image = states[rows]  # (P, 1 + patches, Dv)
    image_mask = torch.ones(image.shape[:2], dtype=torch.long, device=image.device)
    hidden = model.text_encoder(
        input_ids=ids,
        attention_mask=mask,
        encoder_hidden_states=image,
        encoder_attention_mask=image_mask,
    ).last_hidden_state  # (P, L, Dt)
    return model.itm_head(hidden[:, 0, :])  # (P, 2)


def itc_loss(model, states, input_ids, lengths, temperature: float):
    """BLIP's image-text contrastive loss over a batch of B matching (image, caption) pairs:
    states (B, 1 + patches, Dv) of the images, ids (B, L) of one caption each."""
    import torch
    import torch.nn.functional as F

    longest = int(lengths.max())
    mask = (torch.arange(longest, device=input_ids.device)[None, :] < lengths[:, None]).long()
    text = model.text_encoder(input_ids=input_ids[:, :longest], attention_mask=mask)
    text = F.normalize(model.text_proj(text.last_hidden_state[:, 0, :]), dim=-1)  # (B, E)
    image = F.normalize(model.vision_proj(states[:, 0, :]), dim=-1)  # (B, E)
    sims = image @ text.T / temperature  # (B, B), matches on the diagonal
    target = torch.arange(len(sims), device=sims.device)
    return 0.5 * (F.cross_entropy(sims, target) + F.cross_entropy(sims.T, target))


def step_loss(model, batch, edits, data, config):
    """One batch's loss and pair count.

    Pairs, built from B images (mining.Batch):
      caption b  x image b                   match
      caption b  x its H hard images         no match  (stage-1 look-alikes)
      caption b  x R other batch images      no match
      image b    x its H hard captions       no match
      image b    x its caption edited        no match  (when an edit applies)
    Loss: ITM cross-entropy over every pair (BLIP's), plus `rank_weight` times a listwise
    cross-entropy of the match logit over each query's candidates, true one first, plus
    `itc_weight` times the contrastive loss of the batch's true pairs.
    `edits`: (input_ids (E, L), lengths (E,), batch row of each).
    -> (loss, number of pairs)"""
    import torch
    import torch.nn.functional as F

    device = data.input_ids.device
    b, h = batch.hard_images.shape
    r = batch.random_images.shape[1]
    image_ids = torch.as_tensor(np.concatenate([batch.images, batch.hard_images.ravel()]))
    states = vision_states(model, data.pixels[image_ids.to(device)].float())  # (B + BH, ...)

    edit_ids, edit_lengths, edit_rows = edits
    e = len(edit_rows)
    caption_ids = torch.as_tensor(np.concatenate([batch.captions, batch.hard_captions.ravel()]))
    ids = _pad_cat(data.input_ids[caption_ids.to(device)], edit_ids.to(device))
    lengths = torch.cat([data.lengths[caption_ids.to(device)], edit_lengths.to(device)])

    # t2i: each caption with [its image, H hard, R random]; i2t: each image with [H hard
    # captions, its edit]: pairs as (text row, image row) into ids / states.
    t2i_images = np.concatenate(
        [np.arange(b)[:, None], b + np.arange(b * h).reshape(b, h), batch.random_images], 1
    )  # (B, 1 + H + R)
    text_rows = np.concatenate(
        [np.repeat(np.arange(b), 1 + h + r), b + np.arange(b * h), b + b * h + np.arange(e)]
    )
    image_rows = np.concatenate([t2i_images.ravel(), np.repeat(np.arange(b), h), edit_rows])
    image_rows = torch.as_tensor(image_rows, device=device)
    logits = itm_logits(
        model, ids[text_rows], lengths[text_rows], states, image_rows, data.itm_first_token
    )
    logits = logits.float()  # (P, 2)
    labels = torch.zeros(len(text_rows), dtype=torch.long, device=device)
    labels[torch.arange(b, device=device) * (1 + h + r)] = 1
    loss = F.cross_entropy(logits, labels)

    match = logits[:, MATCH]
    t2i = match[: b * (1 + h + r)].view(b, 1 + h + r)  # (B, C)
    i2t = torch.full((b, 1 + h + 1), -1e4, device=device)  # (B, 1 + H + 1), edit masked
    i2t[:, 0] = t2i[:, 0]  # the true pair is scored once and serves both lists
    i2t[:, 1 : 1 + h] = match[b * (1 + h + r) : b * (1 + h + r) + b * h].view(b, h)
    if e:
        i2t[torch.as_tensor(edit_rows, device=device), 1 + h] = match[-e:]
    target = torch.zeros(b, dtype=torch.long, device=device)
    rank = 0.5 * (F.cross_entropy(t2i, target) + F.cross_entropy(i2t, target))
    loss = loss + config.rank_weight * rank
    if config.itc_weight:
        itc = itc_loss(model, states[:b], ids[:b], lengths[:b], config.itc_temperature)
        loss = loss + config.itc_weight * itc.float()
    return loss, len(text_rows)


def _pad_cat(a, b):
    """Stack (n, La) and (m, Lb) id tensors, right-padding the narrower with 0; padding is
    masked by the lengths, so its value does not matter."""
    import torch
    import torch.nn.functional as F

    if not len(b):
        return a
    width = max(a.shape[1], b.shape[1])
    return torch.cat([F.pad(a, (0, width - a.shape[1])), F.pad(b, (0, width - b.shape[1]))])
