"""Image tower throughput on the CPU: eager PyTorch, tuned PyTorch, ONNX Runtime.

    python benchmarks/bench_image_runtime.py                      # ViT-B-32 (random) + xmr-tiny
    python benchmarks/bench_image_runtime.py --models xmr-tiny --repeats 5

For each model, one batch of real decoded pictures (benchmarks/common.make_photos, through
the model's own preprocessing) runs through
  eager          Encoder.encode_images exactly as `xmr index` calls it (vectors + the
                 image tokens it keeps), torch's default threads
  tuned          the same forward with torch.set_num_threads(cores), channels_last input
  bf16           tuned + torch.autocast("cpu", bfloat16)          (--runtimes ...,bf16)
  compile        torch.compile of the same forward, compile time apart (...,compile)
  onnxruntime    a benchmark-only torch.onnx.export (dynamo) of the same forward (vectors
                 + tokens), ORT_ENABLE_ALL, intra-op threads = cores, one inter-op thread
  onnxruntime-nospin   the same session with idle threads sleeping instead of spinning
Every runtime is prepared and warmed up first, then timed interleaved (one batch each per
round, the order rotating), so other work on a shared machine loads them alike. Reported:
images/s (median over `--repeats` rounds), the ratio to eager, and the cosine of each
runtime's vectors to eager fp32's (min over the batch).
An index may only take a runtime whose min cosine is >= 0.9999.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import host, log, make_photos, median, publish

MODELS = {"ViT-B-32": "ViT-B-32:none", "xmr-tiny": "xmr-tiny"}
RUNTIMES = ("eager", "tuned", "onnxruntime", "onnxruntime-nospin")


def _pixels(encoder, n: int, folder: Path):
    import torch

    from xmr.retrieval.imageio import decode_image

    paths = make_photos(folder, n, size=(1024, 768))
    return torch.stack([decode_image(str(p), encoder.preprocess)[0] for p in paths])


def _time(fn, pixels, repeats: int) -> tuple[list[float], np.ndarray]:
    out = fn(pixels)  # warm-up (first-call allocation, ORT arena, oneDNN primitives)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn(pixels)
        times.append(time.perf_counter() - started)
    return times, out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


class _Tower:
    """encode_images' forward as one module (vectors, tokens), for compile and export."""

    @staticmethod
    def build(encoder, token_layer):
        import torch

        visual = encoder.model.visual
        block = encoder._block_index(token_layer)  # noqa: SLF001 - the indexer's block

        class Tower(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.visual = visual

            def forward(self, x):
                out = self.visual.forward_intermediates(
                    x, indices=[block], normalize_intermediates=True, output_fmt="NLC"
                )
                tokens = out["image_intermediates"][0]
                if getattr(self.visual, "proj", None) is not None:
                    tokens = tokens @ self.visual.proj
                vectors = torch.nn.functional.normalize(out["image_features"].float(), dim=-1)
                return vectors, tokens

        return Tower().eval()


def bench_model(name: str, spec: str, batch: int, repeats: int, runtimes, work: Path) -> dict:
    """Every runtime prepared first, then timed interleaved (one batch each per round, the
    order rotating), so a machine shared with other work loads them alike."""
    import torch

    from xmr.retrieval.encoder import load_encoder

    cores = os.cpu_count() or 2
    started = time.perf_counter()
    encoder = load_encoder(spec, "cpu")
    load_s = time.perf_counter() - started
    token_layer = None
    pixels = _pixels(encoder, batch, work / name)
    default_threads = torch.get_num_threads()
    tower = _Tower.build(encoder, token_layer)
    fns: dict = {"eager": lambda x: encoder.encode_images(x, token_layer).vectors}
    notes: dict[str, dict] = {r: {} for r in runtimes}

    def tuned(x):
        torch.set_num_threads(cores)
        with torch.inference_mode():
            out = tower(x.contiguous(memory_format=torch.channels_last))[0].numpy()
        torch.set_num_threads(default_threads)
        return out

    def bf16(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return tower(x.contiguous(memory_format=torch.channels_last))[0].float().numpy()

    if "tuned" in runtimes:
        fns["tuned"] = tuned
    if "bf16" in runtimes:
        fns["bf16"] = bf16
    if "compile" in runtimes:
        compiled = torch.compile(tower)

        def comp(x):
            with torch.inference_mode():
                return compiled(x)[0].numpy()

        log(f"{name}: torch.compile")
        started = time.perf_counter()
        comp(pixels)
        notes["compile"]["compile_s"] = time.perf_counter() - started
        fns["compile"] = comp
    for runtime in [r for r in runtimes if r.startswith("onnxruntime")]:
        import onnxruntime as ort

        path = work / f"{name}-b{batch}.onnx"
        if not path.exists():
            log(f"{name}: onnx export")
            started = time.perf_counter()
            with torch.no_grad():
                torch.onnx.export(
                    tower,
                    (pixels[:2],),
                    str(path),
                    input_names=["pixels"],
                    output_names=["vectors", "tokens"],
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                    dynamo=True,
                    optimize=True,
                    verbose=False,
                )
            notes[runtime]["export_s"] = time.perf_counter() - started
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = cores
        options.inter_op_num_threads = 1
        if runtime == "onnxruntime-nospin":  # idle threads sleep instead of spinning
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        started = time.perf_counter()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        notes[runtime]["session_s"] = time.perf_counter() - started
        notes[runtime]["onnx_mb"] = sum(f.stat().st_size for f in work.glob(f"{path.name}*")) / 1e6
        fns[runtime] = lambda x, s=session: s.run(["vectors", "tokens"], {"pixels": x.numpy()})[0]

    outputs = {r: fn(pixels) for r, fn in fns.items()}  # warm-up, and the vectors compared
    times: dict[str, list[float]] = {r: [] for r in fns}
    order = list(fns)
    for i in range(repeats):
        log(f"{name}: round {i + 1}/{repeats}")
        for runtime in order[i % len(order) :] + order[: i % len(order)]:
            started = time.perf_counter()
            fns[runtime](pixels)
            times[runtime].append(time.perf_counter() - started)

    reference = outputs["eager"]
    result = {"spec": spec, "batch": batch, "load_s": load_s, "runtimes": {}}
    eager_rate = batch / median(times["eager"])
    for runtime in fns:
        rate = batch / median(times[runtime])
        cos = _cosines(outputs[runtime], reference)
        result["runtimes"][runtime] = {
            **notes.get(runtime, {}),
            "times_s": times[runtime],
            "images_per_s": rate,
            "vs_eager": rate / eager_rate,
            "min_cosine": float(cos.min()),
            "same_vectors": bool(cos.min() >= 0.9999),
        }
    return result


def markdown(data: dict) -> list[str]:
    lines = [
        "# Image tower runtimes on the CPU (benchmarks/bench_image_runtime.py)",
        "",
        f"`{data['command']}`; {data['host']['cpus']} cores, load average "
        f"{data['host']['load_avg']} at the start, {data['uptime_end']} at the end.",
        "Images/s: median of timed batches after a warm-up, on real decoded pictures "
        "(1024x768 JPEG/PNG through the model's preprocessing). Cosine: min over the batch "
        "of each runtime's vectors against eager fp32. `eager` is Encoder.encode_images as "
        "`xmr index` calls it (vectors + kept tokens).",
        "",
        "| model | batch | runtime | images/s | vs eager | min cosine | >= 0.9999 | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, model in data["models"].items():
        for runtime, row in model["runtimes"].items():
            notes = []
            if "compile_s" in row:
                notes.append(f"compile {row['compile_s']:.1f} s")
            if "export_s" in row:
                notes.append(f"export {row['export_s']:.1f} s")
            if "session_s" in row:
                notes.append(f"session {row['session_s']:.2f} s, {row['onnx_mb']:.1f} MB")
            lines.append(
                f"| {name} | {model['batch']} | {runtime} | {row['images_per_s']:.1f} | "
                f"{row['vs_eager']:.2f}x | {row['min_cosine']:.6f} | "
                f"{'yes' if row['same_vectors'] else 'no'} | {'; '.join(notes)} |"
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ViT-B-32,xmr-tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--name", default="image_runtime_cpu")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "xmr-bench-runtime",
        help="photos and ONNX exports, kept between runs",
    )
    args = parser.parse_args()
    runtimes = args.runtimes.split(",")
    data: dict = {"command": "python " + " ".join(sys.argv), "host": host(), "models": {}}
    args.work.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        data["models"][name] = bench_model(
            name, MODELS.get(name, name), args.batch, args.repeats, runtimes, args.work
        )
    data["uptime_end"] = [round(v, 2) for v in os.getloadavg()]
    return publish(args.name, data, markdown(data))


if __name__ == "__main__":
    raise SystemExit(main())
