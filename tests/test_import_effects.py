"""Importing xmr changes nothing in the process: the umask is read, the fault hook's
variable parsed and the fork hook registered only when an index is first opened for
writing (a reader, `xmr --help` or another program importing xmr never pays for them)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

PROBE = r"""
import importlib, json, os, pkgutil, sys
calls = []
real_umask, real_fork = os.umask, os.register_at_fork


def ours(what):  # the stdlib and torch register fork hooks of their own: count code not theirs
    caller = sys._getframe(2).f_code.co_filename
    if "site-packages" not in caller and not caller.startswith((sys.base_prefix, "<")):
        calls.append(what)


os.umask = lambda mask: ours("umask") or real_umask(mask)
os.register_at_fork = lambda **hooks: ours("fork") or real_fork(**hooks)
os.environ["XMR_FAULT_ENOSPC_AT"] = sys.argv[2]

import xmr
skipped = []
for package in ("retrieval", "indexer", "engine", "evaluation", "server", "cli"):
    pkg = importlib.import_module(f"xmr.{package}")
    for info in pkgutil.walk_packages(pkg.__path__, f"xmr.{package}."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
imported = calls[:]

from pathlib import Path
from xmr.retrieval.errors import XmrError
from xmr.retrieval.write_lock import WriteLock
try:
    first = WriteLock.acquire(Path(sys.argv[1]) / "a")
    first.release()
    WriteLock.acquire(Path(sys.argv[1]) / "b").release()
    error = None
except XmrError as exc:
    error = str(exc)
print(json.dumps({"on_import": imported, "on_write": calls[len(imported):], "error": error}))
"""


def _probe(tmp_path, fault_hook: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path), fault_hook],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_importing_every_module_sets_nothing_and_the_first_writer_does_it_once(tmp_path):
    seen = _probe(tmp_path, "1000000")
    assert seen["on_import"] == []
    # umask read (set, then set back) once; one fork hook for two write locks
    assert seen["on_write"] == ["umask", "umask", "fork"]
    assert seen["error"] is None


def test_a_bad_fault_hook_value_fails_the_writer_not_the_import(tmp_path):
    seen = _probe(tmp_path, "twelve")
    assert seen["on_import"] == []
    assert seen["error"] == "XMR_FAULT_ENOSPC_AT='twelve' is not a number of writes"


def test_the_probe_would_see_an_import_time_umask(tmp_path):
    """The probe counts what a module does at import: one that reads the umask is seen."""
    (tmp_path / "flips.py").write_text("import os\nos.umask(os.umask(0))\n")
    code = PROBE.replace("import xmr\n", "import xmr\nsys.path.insert(0, '.')\nimport flips\n")
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["on_import"] == ["umask", "umask"]


assert REPO.is_dir()  # the tests run against the installed package, from any folder
