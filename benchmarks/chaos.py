"""Chaos: random operations and faults on one index, with the invariant checked every round.

    python benchmarks/chaos.py --rounds 30              # ~10 min on 2 busy cores
    python benchmarks/chaos.py --rounds 5 --out /tmp/c  # a quick look

Each round changes the photo folder (files added, moved, changed, deleted), runs one or
two random operations as real `xmr` processes (index, add-texts, compact; searches run in
this process between them) and injects faults:

  kill       SIGKILL at a random moment while the writer holds the index lock
  disk_full  the index's file system filled to a few KB free (a tmpfs mounted for the
             run; without mount rights, XMR_FAULT_ENOSPC_AT=N fails the N-th write)
  truncated  a derived or re-encodable file cut short: images.vec/.tok/.rrf, texts.vec/.tok,
             *.faiss, or (rarely) the manifest or the SQLite file

then recovers with a plain `xmr index` of the folder (and `xmr add-texts` of the corpus)
and checks the invariant:
  - every image file on disk is in the database exactly once, and in FAISS exactly once;
  - no search returns a file that is gone;
  - a copy of any indexed file (searched by --image) finds it at score >= 0.999;
  - `xmr check` finds nothing;
  - no command died of a signal we did not send, and none printed a traceback.
Writes benchmarks/results/chaos.json and chaos.md. Bounded: --rounds, and --minutes.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

MODEL = "xmr-tiny"
# What a truncation picks, and how often: derived and re-encodable files, and now and then
# the manifest or the database itself.
DAMAGE_WEIGHTS = {
    "images.vec": 2, "images.tok": 2, "images.rrf": 1, "texts.vec": 1, "texts.tok": 1,
    "images.faiss": 1, "texts.faiss": 1, "manifest.json": 1, "xmr.sqlite3": 1,
}  # fmt: skip
WORDS = "red blue green yellow circle square star small large two three on under".split()


class Chaos:
    def __init__(self, work: Path, rng: random.Random, tmpfs_dir: Path | None):
        self.work = work
        self.rng = rng
        self.photos = work / "photos"
        self.corpus = work / "corpus.txt"
        self.index = (tmpfs_dir or work) / "index"
        self.tmpfs = tmpfs_dir
        self.next_seed = 0
        self.changes: Counter = Counter()  # files added, moved, changed, deleted
        self.faults: Counter = Counter()
        self.operations: Counter = Counter()
        self.violations: list[dict] = []
        self.round = 0
        from xmr.retrieval.encoder import load_encoder

        self.encoder = load_encoder(MODEL, "cpu")

    # -- the folder ------------------------------------------------------------------------
    def add_photos(self, n: int) -> None:
        sub = self.photos / self.rng.choice(["", "a", "b/c"])
        common.make_photos(sub, n, (64, 48), start=self.next_seed)
        self.changes["added"] += n
        self.next_seed += n

    def files(self) -> list[Path]:
        return sorted(p for p in self.photos.rglob("*") if p.is_file())

    def mutate(self) -> None:
        rng = self.rng
        self.add_photos(rng.randint(0, 6))
        files = self.files()
        rng.shuffle(files)
        moves, changes, deletes = rng.randint(0, 3), rng.randint(0, 3), rng.randint(0, 3)
        for path in files[:moves]:
            target = self.photos / rng.choice(["", "a", "moved"]) / f"m{self.next_seed}_{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            self.changes["moved"] += 1
            self.next_seed += 1
        for path in files[moves : moves + changes]:
            fresh = common.make_photos(self.work / "fresh", 1, (64, 48), start=self.next_seed)[0]
            self.next_seed += 1
            shutil.move(fresh, path.with_suffix(fresh.suffix))
            if path.suffix != fresh.suffix:
                path.unlink()
            self.changes["changed"] += 1
        for path in files[moves + changes : moves + changes + deletes]:
            path.unlink(missing_ok=True)
            self.changes["deleted"] += 1
        lines = self.corpus.read_text().splitlines() if self.corpus.exists() else []
        rng.shuffle(lines)
        lines = lines[: rng.randint(len(lines) // 2, len(lines))]
        lines += [" ".join(rng.choices(WORDS, k=5)) for _ in range(rng.randint(0, 20))]
        self.corpus.write_text("\n".join(lines) + "\n")

    # -- running xmr -------------------------------------------------------------------------
    def xmr(self, *args, env_extra=None, kill: bool = False) -> subprocess.CompletedProcess:
        command = [str(Path(sys.executable).parent / "xmr"), *map(str, args)]
        env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        killed = False
        if kill:
            killed = self._kill_while_writing(proc)
        out, err = proc.communicate(timeout=600)
        result = subprocess.CompletedProcess(command, proc.returncode, out, err)
        self._judge(args[0], result, killed)
        return result

    def _kill_while_writing(self, proc: subprocess.Popen) -> bool:
        """SIGKILL a random moment after the process took the write lock."""
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if _lock_held(self.index):
                time.sleep(self.rng.uniform(0.0, 1.5))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    self.faults["kill"] += 1
                    return True
                return False
            time.sleep(0.01)
        return False

    def _judge(self, name: str, result, killed: bool) -> None:
        if "Traceback" in result.stderr:
            self.violate("traceback", f"xmr {name}: {result.stderr[-400:]}")
        code = result.returncode
        if code < 0 and not (killed and code == -signal.SIGKILL):
            self.violate("signal", f"xmr {name} died of signal {-code}: {result.stderr[-200:]}")
        if code == 1:
            lines = [x for x in result.stderr.splitlines() if x and not x.startswith("note:")]
            if len(lines) != 1 or not lines[0].startswith("Error: "):
                self.violate("error_message", f"xmr {name}: {result.stderr[-400:]}")

    def violate(self, kind: str, detail: str) -> None:
        self.violations.append({"round": self.round, "kind": kind, "detail": detail})
        common.log(f"VIOLATION {kind}: {detail}")

    # -- faults --------------------------------------------------------------------------------
    def fill_disk(self):
        """Fill the index's file system to a few KB free; returns an undo function and the
        environment for the next command (the ENOSPC hook where no tmpfs is mounted)."""
        self.faults["disk_full"] += 1
        if self.tmpfs is None:
            return (lambda: None), {"XMR_FAULT_ENOSPC_AT": str(self.rng.randint(1, 40))}
        filler = self.tmpfs / "filler.bin"
        stat = os.statvfs(self.tmpfs)
        free = stat.f_bavail * stat.f_frsize - self.rng.randint(0, 64 * 1024)
        with open(filler, "wb", buffering=0) as f:
            try:
                while free > 0:
                    free -= f.write(b"\0" * min(free, 1 << 16))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        return (lambda: filler.unlink(missing_ok=True)), {}

    def damage(self) -> bool:
        """Cut one file short; True when that may cost the texts (the database)."""
        rng = self.rng
        present = [
            n
            for n in DAMAGE_WEIGHTS
            if (self.index / n).exists() and (self.index / n).stat().st_size
        ]
        if not present:
            return False
        name = rng.choices(present, [DAMAGE_WEIGHTS[n] for n in present])[0]
        path = self.index / name
        os.truncate(path, rng.randint(0, path.stat().st_size - 1))
        self.faults[f"truncated {name}"] += 1
        return name == "xmr.sqlite3"

    # -- a round -------------------------------------------------------------------------------
    def run_round(self) -> None:
        self.round += 1
        rng = self.rng
        self.mutate()
        texts_touched = False
        for _ in range(rng.randint(1, 2)):
            op = rng.choices(["index", "add-texts", "compact", "search"], [5, 2, 2, 1])[0]
            self.operations[op] += 1
            texts_touched |= op == "add-texts"
            kill = op != "search" and rng.random() < 0.35
            undo, env = (lambda: None), {}
            if op != "search" and not kill and rng.random() < 0.25:
                undo, env = self.fill_disk()
            try:
                if op == "index":
                    self.xmr(*self._index_args(), env_extra=env, kill=kill)
                elif op == "add-texts":
                    self.xmr("add-texts", self.corpus, "--index", self.index, "--quiet",
                             env_extra=env, kill=kill)  # fmt: skip
                elif op == "compact":
                    self.xmr("compact", "--index", self.index, "--quiet", env_extra=env, kill=kill)
                else:
                    self.search_everything()
            finally:
                undo()
            if self.tmpfs is not None and list(self.index.glob("*.tmp")):
                self.violate("temporaries", str(list(self.index.glob("*.tmp"))))
            if rng.random() < 0.3 and self.index.exists():
                texts_touched |= self.damage()
                self.search_everything()  # a reader over the damage, before any repair
        self.recover(texts=texts_touched)
        self.check_invariant()

    def _index_args(self):
        return ["index", self.photos, "--index", self.index, "--model", MODEL, "--quiet"]

    def recover(self, texts: bool = True) -> None:
        """A plain `xmr index` (and `xmr add-texts` when texts were touched) must succeed."""
        result = self.xmr(*self._index_args())
        if result.returncode != 0:
            self.violate("recovery", f"xmr index exited {result.returncode}: {result.stderr}")
        if not texts:
            return
        result = self.xmr("add-texts", self.corpus, "--index", self.index, "--quiet")
        if result.returncode != 0:
            self.violate("recovery", f"xmr add-texts exited {result.returncode}: {result.stderr}")

    # -- the invariant -------------------------------------------------------------------------
    def search_everything(self):
        """Every image by a text query (reader in this process); raises nothing but
        XmrError (a one-line error), or it counts as a traceback."""
        from xmr.retrieval.errors import XmrError
        from xmr.retrieval.library import Library
        from xmr.retrieval.searcher import Searcher

        try:
            with Library.open(self.index) as library:
                searcher = Searcher(library, self.encoder)
                query = searcher.text_query(" ".join(self.rng.choices(WORDS, k=4)))
                return searcher.search(query, "images", k=100_000, rerank=False)
        except XmrError:
            return None
        except Exception as exc:  # noqa: BLE001 - exactly what the invariant counts
            self.violate("traceback", f"search: {exc!r}")
            return None

    def check_invariant(self) -> None:
        from xmr.retrieval.check import check_index
        from xmr.retrieval.library import Library
        from xmr.retrieval.searcher import Searcher

        on_disk = {str(p) for p in self.files()}
        with Library.open(self.index) as library:
            rows = [path for _, path, _ in library.db.indexed_images()]
            if sorted(rows) != sorted(on_disk):
                missing, extra = on_disk - set(rows), set(rows) - on_disk
                self.violate("files", f"{len(missing)} missing, {len(extra)} extra rows")
            ids = library.images.index.ids()
            if len(ids) != len(rows) or library.images.index.live_count != len(rows):
                self.violate("faiss", f"{len(ids)} ids in FAISS for {len(rows)} rows")
            searcher = Searcher(library, self.encoder)
            returned = {h.path for h in self.search_everything() or []}
            if returned - on_disk:  # a file deleted or moved away came back
                self.violate("gone_returned", str(sorted(returned - on_disk)[:3]))
            if len(returned) != len(on_disk):
                self.violate("search_misses", f"{len(returned)} of {len(on_disk)} returned")
            for original in self.rng.sample(sorted(on_disk), min(3, len(on_disk))):
                copy = self.work / f"copy{Path(original).suffix}"
                shutil.copy(original, copy)
                hits = searcher.search(searcher.image_query(copy), "images", k=1, rerank=False)
                twins = {p for p in on_disk if _same_bytes(p, original)}
                if not hits or hits[0].path not in twins or hits[0].score < 0.999:
                    found = (hits[0].path, round(hits[0].score, 5)) if hits else None
                    self.violate("copy_not_found", f"{original} -> {found}")
        report = check_index(self.index)
        if report.findings:
            self.violate("check", json.dumps([f.as_dict() for f in report.findings])[:400])


def _same_bytes(a: str, b: str) -> bool:
    return a == b or Path(a).read_bytes() == Path(b).read_bytes()


def _lock_held(index: Path) -> bool:
    try:
        fd = os.open(index / "write.lock", os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _mount_tmpfs(folder: Path, size: str) -> str | None:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "not root"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)  # fmt: skip
    return None if done.returncode == 0 else done.stderr.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--minutes", type=float, default=30, help="stop after this long")
    parser.add_argument("--images", type=int, default=40, help="photos at the start")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()

    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unmount and clean up first
    host = common.host()
    work = Path(tempfile.mkdtemp(prefix="xmr-chaos-"))
    mount = work / "fs"
    why_not = _mount_tmpfs(mount, "64m")
    chaos = Chaos(work, random.Random(args.seed), None if why_not else mount)
    final_files = None
    common.log(f"index on {'a 64 MB tmpfs' if not why_not else 'disk (ENOSPC hook): ' + why_not}")
    try:
        chaos.add_photos(args.images)
        chaos.corpus.write_text("\n".join(f"caption {i} of a red circle" for i in range(30)))
        chaos.recover()
        while chaos.round < args.rounds and time.monotonic() - started < args.minutes * 60:
            chaos.run_round()
            common.log(
                f"round {chaos.round}: {len(chaos.files())} files, faults "
                f"{dict(chaos.faults)}, violations {len(chaos.violations)}"
            )
        final_files = len(chaos.files())
    finally:
        if not why_not:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(work, ignore_errors=True)

    data = {
        "rounds": chaos.round,
        "seed": args.seed,
        "model": MODEL,
        "disk_full_by": "tmpfs 64 MB" if not why_not else "XMR_FAULT_ENOSPC_AT hook",
        "faults": dict(sorted(chaos.faults.items())),
        "faults_total": sum(chaos.faults.values()),
        "operations": dict(sorted(chaos.operations.items())),
        "file_changes": dict(sorted(chaos.changes.items())),
        "violations": len(chaos.violations),
        "violation_details": chaos.violations,
        "final_files": final_files,
        "seconds": round(time.monotonic() - started, 1),
        "command": " ".join(["python", "benchmarks/chaos.py", *sys.argv[1:]]),
        "host": host,
    }
    faults = "\n".join(f"| {kind} | {n} |" for kind, n in data["faults"].items())
    markdown = (
        f"# Chaos: {data['rounds']} rounds, {data['faults_total']} faults, "
        f"{data['violations']} invariant violations\n\n"
        f"`{data['command']}` ({MODEL}, disk full by {data['disk_full_by']}, "
        f"{data['seconds']:.0f} s, load average {host['load_avg']})\n\n"
        f"Operations: {', '.join(f'{k} {v}' for k, v in data['operations'].items())}; "
        f"files {', '.join(f'{k} {v}' for k, v in data['file_changes'].items())}.\n\n"
        "| fault | injected |\n|---|---|\n" + faults + "\n\n"
        "Invariant after every round (after a plain `xmr index` + `xmr add-texts`): every "
        "image file present exactly once (database and FAISS), no gone file returned, a copy "
        "of an indexed file found at score >= 0.999, `xmr check` clean, no traceback, no "
        "signal we did not send.\n"
    )
    common.write_results("chaos", data, markdown, args.out)
    print(markdown)


if __name__ == "__main__":
    main()
