"""What `xmr index` does before its first batch, seen from a fresh process.

A new process is the only honest place: torch reads its threading settings once, when it
loads, and a test process has long loaded it.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import make_image, xmr_env

# Runs Engine.index in a new process; prints what it saw: the OpenMP wait policy torch
# loaded with, whether torch was loaded before indexing began, and how many times the
# model was built.
PROBE = """
import json, os, sys
import xmr.retrieval.encoder as encoder_module
from xmr.engine.engine import Engine

builds = []
build = encoder_module.build_open_clip
def counting(*args, **kwargs):
    builds.append(1)
    return build(*args, **kwargs)
encoder_module.build_open_clip = counting

torch_before = "torch" in sys.modules
report = Engine(sys.argv[1]).index([sys.argv[2]], model=sys.argv[3], workers=0)
print(json.dumps({
    "policy": os.environ.get("OMP_WAIT_POLICY"),
    "torch_before": torch_before,
    "builds": len(builds),
    "new": report.summary.new,
}))
"""


def _probe(tmp_path, tiny_spec, **env: str) -> dict:
    folder = tmp_path / "photos"
    for seed in range(3):
        make_image(folder / f"p{seed}.jpg", seed)
    run_env = xmr_env(**env)
    if "OMP_WAIT_POLICY" not in env:
        run_env.pop("OMP_WAIT_POLICY", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "index"), str(folder), tiny_spec],
        capture_output=True,
        text=True,
        env=run_env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_index_loads_torch_with_sleeping_threads_and_builds_the_model_once(tmp_path, tiny_spec):
    seen = _probe(tmp_path, tiny_spec)
    assert seen == {"policy": "PASSIVE", "torch_before": False, "builds": 1, "new": 3}


def test_a_wait_policy_the_user_set_is_kept(tmp_path, tiny_spec):
    seen = _probe(tmp_path, tiny_spec, OMP_WAIT_POLICY="ACTIVE")
    assert seen["policy"] == "ACTIVE" and seen["new"] == 3


def test_index_does_not_import_transformers(tmp_path, tiny_spec):
    """open_clip is imported with HuggingFace transformers held back (a second of start-up
    no CLIP with open_clip's own text tower uses)."""
    probe = PROBE.replace('"new": report.summary.new,', '"new": report.summary.new, '
                          '"transformers": "transformers" in sys.modules,')  # fmt: skip
    folder = tmp_path / "photos"
    make_image(folder / "p.jpg", 0)
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "index"), str(folder), tiny_spec],
        capture_output=True,
        text=True,
        env=xmr_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["new"] == 1 and seen["transformers"] is False


# Builds a CLIP whose text tower is a HuggingFace BERT (from a local folder: no network)
# after open_clip was imported with transformers held back, and encodes a text with it.
HF_PROBE = """
import json, sys
from xmr.retrieval.open_clip_import import import_open_clip, transformers_held_back
open_clip = import_open_clip()
held = transformers_held_back() and "transformers" not in sys.modules
from xmr.retrieval.encoder import load_encoder
encoder = load_encoder(sys.argv[1] + ":none")
vectors = encoder.encode_texts(["a red circle", "two blue squares"]).vectors
print(json.dumps({"held": held, "shape": list(vectors.shape),
                  "tower": type(encoder.model.text).__name__}))
"""


def test_a_huggingface_text_tower_still_builds_after_the_hold_back(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    bert = tmp_path / "tiny-bert"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "two", "blue"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(bert)
    config = BertConfig(
        vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(bert)  # open_clip loads the tower's weights from here
    clip = tmp_path / "hf-clip.json"
    clip.write_text(
        json.dumps(
            {
                "embed_dim": 16,
                "vision_cfg": {
                    "image_size": 32,
                    "layers": 1,
                    "width": 32,
                    "head_width": 16,
                    "patch_size": 16,
                },
                "text_cfg": {
                    "hf_model_name": str(bert),
                    "hf_tokenizer_name": str(bert),
                    "hf_model_pretrained": False,
                    "hf_proj_type": "linear",
                    "context_length": 16,
                },
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", HF_PROBE, str(clip)],
        capture_output=True,
        text=True,
        env=xmr_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"held": True, "shape": [2, 16], "tower": "HFTextEncoder"}
