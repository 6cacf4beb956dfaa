"""What `pip install` puts on a user's machine: one package, `xmr`, and nothing generic.

The repository keeps `retrieval/`, `cli/`, `server/`... at its top level; pyproject.toml
maps them under `xmr` so that a user's site-packages never gains a `cli` or a `server`
that clashes with another project's.
"""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile

import pytest
from conftest import REPO

PRODUCT_FOLDERS = ("retrieval", "evaluation", "indexer", "engine", "server", "cli", "training")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + [str(REPO), "-w", str(out)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("xmr-*.whl")
    return built


def test_the_wheel_installs_one_top_level_package_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names} - {"xmr-0.1.0.dist-info"}
    assert top_level == {"xmr"}
    for folder in PRODUCT_FOLDERS:  # every folder of the repository is inside it
        assert f"xmr/{folder}/__init__.py" in names
    # Data the product reads at run time travels too.
    assert "xmr/server/static/index.html" in names
    assert "xmr/retrieval/models/xmr-tiny/open_clip_model.safetensors" in names
    assert "xmr/training/configs/xmr-tiny.json" in names
    entry_points = zipfile.ZipFile(wheel).read("xmr-0.1.0.dist-info/entry_points.txt")
    assert b"xmr = xmr.cli.main:run" in entry_points


def test_a_fresh_environment_imports_xmr_and_no_generic_names(wheel, tmp_path):
    """Only the wheel (no dependencies): `import xmr` is cheap enough to work without them,
    and none of the repository's folder names is importable."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
        check=True,
        capture_output=True,
    )
    probe = (
        "import importlib.util, xmr; "
        "print(xmr.__file__); "
        f"print([n for n in {PRODUCT_FOLDERS!r} if importlib.util.find_spec(n)])"
    )
    # From an empty folder, so the checkout's own folders cannot be found through the cwd.
    result = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    location, importable = result.stdout.splitlines()
    assert str(env_dir) in location
    assert importable == "[]"
    result = subprocess.run([python, "-c", "import cli"], cwd=tmp_path, capture_output=True)
    assert result.returncode != 0 and b"No module named 'cli'" in result.stderr
