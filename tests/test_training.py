"""Dual-encoder training on a generated corpus: learning, the artefact, resuming.

A tiny open_clip CLIP (32 px, 16 patches) learns the shapes corpus in a few hundred
steps; the assertions have wide margins over chance, never timings.
"""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.mark.slow
def test_training_raises_recall_well_above_chance(trained, shapes_corpus):
    from xmr.evaluation.datasets import load_dataset

    _, state = trained
    val = state.history[-1]["val"]
    n_val = load_dataset(shapes_corpus.captions_path, split="val").n_images  # 60
    chance_t2i = 100 * 5 / n_val  # R@5 of a random ranking: ~8%
    assert val["n_images"] == n_val
    assert val["t2i"]["R@5"] > 3 * chance_t2i, state.history
    assert val["i2t"]["R@5"] > 3 * chance_t2i, state.history
    first, last = state.history[0], state.history[-1]
    assert last["loss"] < first["loss"]


@pytest.mark.slow
def test_artefact_loads_with_plain_open_clip_and_gives_identical_embeddings(trained):
    import open_clip
    import torch
    from PIL import Image

    from xmr.retrieval.encoder import load_encoder

    out, _ = trained
    assert (out / "open_clip_model.safetensors").stat().st_size < 16 * 2**20
    open_clip.add_model_config(str(out / "xmr-test-tiny.json"))
    plain = open_clip.create_model(
        "xmr-test-tiny", pretrained=str(out / "open_clip_model.safetensors")
    ).eval()
    hub, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    ours = load_encoder(str(out), "cpu")  # the folder, as `--model FOLDER`
    texts = ["a red circle left of a blue square", "there is a small green star"]
    tokens = open_clip.get_tokenizer(f"local-dir:{out}")(texts)
    image = preprocess(Image.new("RGB", (64, 64), (200, 30, 30))).unsqueeze(0)
    with torch.no_grad():
        plain_text = plain.encode_text(tokens, normalize=True).numpy()
        hub_image = hub.eval().encode_image(image, normalize=True).numpy()
    np.testing.assert_allclose(ours.encode_texts(texts).vectors, plain_text, atol=1e-6)
    np.testing.assert_allclose(ours.encode_images(image).vectors, hub_image, atol=1e-6)


@pytest.mark.slow
def test_resume_continues_the_step_count(shapes_corpus, train_config_path, tmp_path):
    from conftest import tiny_encoder_run

    from xmr.training.encoder_training import train_encoder

    def run(steps: int):
        return tiny_encoder_run(
            shapes_corpus, train_config_path, tmp_path / "run", seed=3, max_steps=steps
        )

    first = train_encoder(run(8))
    assert first.step == 8
    second = train_encoder(run(14))
    assert second.step == 14
    steps = [row["step"] for row in second.history]
    assert steps[0] == first.history[0]["step"]  # history carried over, not restarted
    assert steps[-1] == 14 and len(steps) > len(first.history)
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert log["history"][-1]["step"] == 14


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train-encoder", "train-reranker"])
def test_training_commands_print_each_row_when_measured_and_honour_threads(
    command, cli, shapes_corpus, train_config_path, tmp_path
):
    """A training row (train-encoder: per epoch; train-reranker: per --val-every steps) is
    printed when it is measured, not all at the end; `--threads` reaches the trainer (and
    its log); stdout is OUT alone, for pipes."""
    from conftest import torch_threads_during

    out = tmp_path / "run"
    if command == "train-encoder":
        model = f"{train_config_path}:none"
        options = ["--model", model, "--epochs", "2", "--batch-size", "64"]
        is_row, expected = (lambda line: line.startswith("epoch")), ["1", "2"]
    else:
        options = ["--steps", "4", "--val-every", "2", "--batch-size", "8"]
        options += ["--max-train-images", "60", "--no-calibrate"]
        is_row, expected = (lambda line: "val_attribute_swap" in line), ["2", "4"]
    result, threads_during = torch_threads_during(
        lambda: cli(command, shapes_corpus.captions_path, "--out", out, *options, "--threads", "1")
    )
    assert result.exit_code == 0, result.output
    assert threads_during == 1
    lines = result.stderr.splitlines()
    rows = [n for n, line in enumerate(lines) if is_row(line)]
    assert [lines[n].split()[1] for n in rows] == expected, result.stderr  # epoch or step
    if command == "train-encoder":
        assert all("t2i R@1/5/10" in lines[n] for n in rows)
    log = json.loads((out / "train_log.json").read_text())
    last_step = log["history"][-1]["step"]
    # the first row comes before the progress line of training's last step
    last = next(n for n, line in enumerate(lines) if line.startswith(f"step {last_step}/"))
    assert rows[0] < last, result.stderr
    assert log["config"]["threads"] == 1
    assert result.stdout.strip() == str(out)
