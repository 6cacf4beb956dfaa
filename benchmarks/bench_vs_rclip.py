"""`xmr index` side by side with rclip 2.1.6: the same photos, ViT-B-32, random weights.

    python benchmarks/bench_vs_rclip.py                         # 400 photos, 3 rounds
    python benchmarks/bench_vs_rclip.py --baseline-xmr /tmp/xmr-base/.venv/bin/xmr

Each round runs, interleaved (the order alternates between rounds):
  index     a fresh index of the folder: `xmr index FOLDER --model ViT-B-32:none`, and
            rclip (fresh RCLIP_DATADIR, run in FOLDER: rclip indexes the current folder,
            then answers one query)
  reindex   the same command again on the unchanged folder
  query     a cold text query (a new process, no server): `xmr search --no-server` and
            `rclip --no-indexing`
and, with `--baseline-xmr`, the same `xmr index` through another installation (the code
before a change) in the same round. Reported: whole-process wall time, images/s (photos /
wall time), and xmr's in-process images/s (`encoded / seconds` of its JSON report: scan,
hash, decode and encode, not the start-up), as medians over rounds, with the ratios.

rclip 2.1.6 is installed into its own virtual environment (`--rclip-venv`) when absent:
`pip install --no-deps rclip==2.1.6 pillow-heif rawpy`, its other dependencies (torch,
open_clip, numpy, Pillow, tqdm, requests) taken from this interpreter's site-packages
through a .pth file, so both tools run on the same torch build. rclip loads the
pretrained `ViT-B-32-quickgelu:openai` weights, which cannot be downloaded here; the
venv's `sitecustomize.py` wraps `open_clip.create_model_and_transforms` (when open_clip is
imported, through an import hook) so that it ignores `pretrained`: the model is built with
random weights, nothing else changes. rclip's ViT-B-32-quickgelu and xmr's ViT-B-32 have
the same shapes and cost; QuickGELU only swaps the activation.

Photos: `--photos` JPEGs (made once, kept in `--photo-dir`) at camera sizes from
1024x768 to 4000x3000 (landscape and portrait), each a different scene of gradients,
shapes, texture and grain, JPEG quality 85-95.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, log, median, publish, user_env, write_results

RCLIP_VERSION = "2.1.6"
MODEL = "ViT-B-32:none"
QUERY = "a dog on a beach"
SIZES = [
    (4000, 3000), (3000, 4000), (4032, 3024), (3024, 4032), (3000, 2000), (2048, 1536),
    (1920, 1080), (1600, 1200), (1280, 960), (1024, 768), (768, 1024), (2592, 1944),
]  # fmt: skip

SITECUSTOMIZE = '''"""bench_vs_rclip: rclip builds its model with random weights (no download here).

When open_clip is imported, wrap create_model_and_transforms so it ignores `pretrained`.
"""
import importlib.abc
import sys


class _OpenClipHook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "open_clip":
            return None
        sys.meta_path.remove(self)
        try:
            import importlib.util

            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None:
            return None
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module):
            run(module)
            original = module.create_model_and_transforms

            def random_weights(model_name, pretrained=None, *args, **kwargs):
                kwargs.pop("require_pretrained", None)
                return original(model_name, None, *args, **kwargs)

            module.create_model_and_transforms = random_weights
            sys.meta_path.remove(self)

        loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _OpenClipHook())
'''


def ensure_rclip(venv: Path) -> Path:
    """rclip's executable in `venv`, installing it there first if needed."""
    exe = venv / "bin" / "rclip"
    if exe.exists():
        return exe
    log(f"installing rclip {RCLIP_VERSION} into {venv}")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.check_output(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            text=True,
        ).strip()
    )
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "xmr_bench_deps.pth").write_text("\n".join(ours) + "\n")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         f"rclip=={RCLIP_VERSION}", "pillow-heif>=1.1.1,<2", "rawpy>=0.26.1,<0.27"],
        check=True,
    )  # fmt: skip
    bin_rclip = site / "bin" / "rclip"
    exe.write_text(
        f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom rclip.main import main\nsys.exit(main())\n"
    )
    exe.chmod(0o755)
    if bin_rclip.exists():
        bin_rclip.unlink()
    return exe


def make_photos(folder: Path, n: int) -> list[Path]:
    """`n` photo-like JPEGs at camera sizes (kept: made once per folder and count)."""
    from PIL import Image, ImageDraw, ImageFilter

    done = folder / f".made-{n}"
    if done.exists():
        return sorted(folder.glob("*.jpg"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log(f"making {n} photos in {folder}")
    for i in range(n):
        rng = np.random.default_rng(1000 + i)
        w, h = SIZES[int(rng.integers(len(SIZES)))]
        sw, sh = w // 8, h // 8  # the scene is drawn small, then scaled up like a lens blur
        y = np.linspace(0, 1, sh, dtype=np.float32)[:, None, None]
        x = np.linspace(0, 1, sw, dtype=np.float32)[None, :, None]
        top, bottom, side = (rng.uniform(0, 255, 3).astype(np.float32) for _ in range(3))
        sky = top * (1 - y) + bottom * y + (side - bottom) * x * rng.uniform(0, 0.5)
        scene = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8).repeat(1, axis=1))
        draw = ImageDraw.Draw(scene)
        for _ in range(int(rng.integers(4, 14))):
            cx, cy = int(rng.integers(0, sw)), int(rng.integers(0, sh))
            r = int(rng.integers(sw // 20, sw // 3))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            kind = rng.integers(3)
            if kind == 0:
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
            elif kind == 1:
                draw.rectangle((cx - r, cy - r // 2, cx + r, cy + r), fill=colour)
            else:
                pts = [
                    (cx + int(rng.integers(-r, r)), cy + int(rng.integers(-r, r))) for _ in range(5)
                ]
                draw.polygon(pts, fill=colour)
        scene = scene.filter(ImageFilter.GaussianBlur(1)).resize((w, h), Image.BILINEAR)
        # grain at half resolution, scaled up: texture a JPEG must spend bits on
        grain = Image.effect_noise((w // 2, h // 2), float(rng.uniform(20, 60)))
        grain = grain.resize((w, h), Image.NEAREST).convert("RGB")
        photo = Image.blend(scene, grain, float(rng.uniform(0.05, 0.15)))
        photo.save(folder / f"IMG_{i:04d}.jpg", quality=int(rng.integers(85, 96)))
    done.touch()
    return sorted(folder.glob("*.jpg"))


def run(cmd: list[str], env: dict, cwd: Path | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def xmr_index(xmr: str, folder: Path, index: Path, env: dict) -> dict:
    seconds, out = run(
        [xmr, "index", str(folder), "--index", str(index), "--model", MODEL, "--json", "--quiet"],
        env,
    )
    summary = json.loads(out)
    summary = summary.get("summary", summary)
    encoded = summary.get("encoded", 0)
    inside = summary.get("seconds", 0.0)
    return {
        "wall_s": seconds,
        "encoded": encoded,
        "in_process_s": inside,
        "in_process_images_per_s": encoded / inside if inside else 0.0,
    }


def rclip_index(rclip: Path, folder: Path, datadir: Path, env: dict) -> dict:
    seconds, _ = run(
        [str(rclip), "-f", "-t", "5", QUERY], {**env, "RCLIP_DATADIR": str(datadir)}, folder
    )
    return {"wall_s": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--photo-dir", type=Path, default=Path(tempfile.gettempdir()) / "xmr-bench-photos"
    )
    parser.add_argument(
        "--rclip-venv",
        type=Path,
        default=Path.home() / ".cache" / "xmr-bench" / f"rclip-{RCLIP_VERSION}",
    )
    parser.add_argument("--xmr", default=str(Path(sys.executable).parent / "xmr"))
    parser.add_argument("--baseline-xmr", default=None, help="xmr of the code before a change")
    parser.add_argument("--name", default="bench_vs_rclip")
    args = parser.parse_args()  # fmt: skip

    rclip = ensure_rclip(args.rclip_venv)
    photos = make_photos(args.photo_dir / str(args.photos), args.photos)
    folder = photos[0].parent
    env = user_env(XMR_OFFLINE="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    tools = {"xmr": args.xmr, "rclip": str(rclip)}
    if args.baseline_xmr:
        tools["xmr_before"] = args.baseline_xmr
    rows: dict[str, dict[str, list]] = {t: {} for t in tools}
    load = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(tools) if r % 2 == 0 else list(reversed(tools))
            for tool in order:
                place = Path(tmp) / f"{tool}-{r}"
                log(f"round {r + 1}: {tool} index")
                if tool == "rclip":
                    first = rclip_index(rclip, folder, place, env)
                    again = rclip_index(rclip, folder, place, env)
                    query, _ = run([str(rclip), "--no-indexing", "-f", "-t", "5", QUERY],
                                   {**env, "RCLIP_DATADIR": str(place)}, folder)  # fmt: skip
                else:
                    first = xmr_index(tools[tool], folder, place, env)
                    again = xmr_index(tools[tool], folder, place, env)
                    query, _ = run([tools[tool], "search", QUERY, "--index", str(place),
                                    "--no-server", "-k", "5"], env)  # fmt: skip
                for key, value in {
                    **{f"index_{k}": v for k, v in first.items()},
                    "reindex_wall_s": again["wall_s"],
                    "query_wall_s": query,
                }.items():
                    rows[tool].setdefault(key, []).append(value)
            result = summarise(args, photos, rows, load, r + 1)
            write_results(args.name, result, "\n".join(markdown(result)))  # after every round
    return publish(args.name, result, markdown(result))


def summarise(args, photos, rows: dict, load: list, rounds: int) -> dict:
    """The medians and ratios of the rounds run so far."""
    n = len(photos)
    result: dict = {
        "command": "python " + " ".join(sys.argv),
        "photos": n,
        "photo_megapixels_median": median([_megapixels(p) for p in photos]),
        "rounds": rounds,
        "load_avg_start": load,
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],
        "rclip": RCLIP_VERSION,
        "model": MODEL,
        "tools": {},
    }
    for tool, values in rows.items():
        med = {k: median(v) for k, v in values.items()}
        med["index_images_per_s"] = n / med["index_wall_s"]
        result["tools"][tool] = {"median": med, "runs": values}
    x, rc = result["tools"]["xmr"]["median"], result["tools"]["rclip"]["median"]
    result["index_rate_vs_rclip"] = x["index_images_per_s"] / rc["index_images_per_s"]
    result["reindex_speedup_vs_rclip"] = rc["reindex_wall_s"] / x["reindex_wall_s"]
    result["query_speedup_vs_rclip"] = rc["query_wall_s"] / x["query_wall_s"]
    if "xmr_before" in result["tools"]:
        b = result["tools"]["xmr_before"]["median"]
        result["in_process_vs_before"] = (
            x["index_in_process_images_per_s"] / b["index_in_process_images_per_s"]
        )
        result["index_rate_vs_before"] = x["index_images_per_s"] / b["index_images_per_s"]
    return result


def rewrite_markdown(name: str = "bench_vs_rclip") -> None:
    """Render NAME.md again from NAME.json (after a change to `markdown`)."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    (RESULTS / f"{name}.md").write_text("\n".join(markdown(data)))


def _megapixels(path: Path) -> float:
    from PIL import Image

    with Image.open(path) as image:
        return image.width * image.height / 1e6


def markdown(r: dict) -> list[str]:
    lines = [
        f"# xmr vs rclip {r['rclip']}: indexing {r['photos']} photos "
        "(benchmarks/bench_vs_rclip.py)",
        "",
        f"`{r['command']}`; {r['model']} (random weights) for both, {r['rounds']} interleaved "
        f"rounds, medians; photos of median {r['photo_megapixels_median']:.1f} MP; load average "
        f"{r['load_avg_start']} at the start, {r['load_avg_end']} at the end.",
        "",
        "| tool | index s | images/s (whole process) | in-process images/s | start-up s "
        "| re-index s | cold query s |",
        "|---|---|---|---|---|---|---|",
    ]
    for tool, t in r["tools"].items():
        m = t["median"]
        inside = m.get("index_in_process_images_per_s")
        runs = t["runs"]
        start = (
            median(
                [
                    w - i
                    for w, i in zip(runs["index_wall_s"], runs["index_in_process_s"], strict=True)
                ]
            )
            if "index_in_process_s" in runs
            else None
        )
        lines.append(
            f"| {tool} | {m['index_wall_s']:.1f} | {m['index_images_per_s']:.1f} | "
            f"{'' if inside is None else f'{inside:.1f}'} | "
            f"{'' if start is None else f'{start:.1f}'} | {m['reindex_wall_s']:.2f} | "
            f"{m['query_wall_s']:.2f} |"
        )
    lines += [
        "",
        "start-up: whole-process time minus the indexing time xmr reports (imports, model "
        "build, opening the index: what runs before the first batch, and the exit).",
        "",
        f"xmr's indexing rate is {r['index_rate_vs_rclip']:.2f}x rclip's (whole process); "
        f"re-index {r['reindex_speedup_vs_rclip']:.1f}x faster; cold query "
        f"{r['query_speedup_vs_rclip']:.2f}x rclip's speed.",
    ]
    if "in_process_vs_before" in r:
        lines.append(
            f"Against xmr before the change: in-process images/s {r['in_process_vs_before']:.2f}x, "
            f"whole process {r['index_rate_vs_before']:.2f}x."
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
