"""A tiny random BLIP ITM model saved in Hugging Face layout, and photos to match it with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = "a red blue green circle square dog cat on the beach left of".split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]", *WORDS]


def save_tiny_blip(folder: Path, seed: int = 0, with_enc: bool = True) -> Path:
    """config.json + model.safetensors + tokenizer + preprocessor_config.json in `folder`:
    32 px images, 8 px patches (17 vision tokens of width 48), a 2-layer text encoder."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = VOCAB if with_enc else [w for w in VOCAB if w != "[ENC]"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=40, encoder_hidden_size=48,
            bos_token_id=2, sep_token_id=3, pad_token_id=0, eos_token_id=3,
            initializer_range=0.2,
        ),
        vision_config=dict(
            hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
            image_size=32, patch_size=8, initializer_range=0.2,
        ),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(config).eval()
    with torch.no_grad():  # weights that tell pairs apart more than a fresh init does
        model.itm_head.weight.mul_(20)
        for layer in model.text_encoder.encoder.layer:
            for p in layer.crossattention.parameters():
                p.mul_(5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def write_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n distinct noisy colour photos (PNG) of varied sizes."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(30, 80)), int(rng.integers(30, 80))
        base = rng.integers(0, 255, size=3)
        pixels = np.clip(base + rng.normal(0, 60, size=(h, w, 3)), 0, 255).astype("uint8")
        path = folder / f"photo{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths
