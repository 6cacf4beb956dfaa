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
