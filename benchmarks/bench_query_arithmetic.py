"""What query arithmetic does to results, with the shipped xmr-tiny on unseen scenes.

    python benchmarks/bench_query_arithmetic.py --scenes 600 --captions 20

Generates --scenes scenes of a seed xmr-tiny never saw and indexes them. For --captions
captions that mention a red circle (of scenes without a blue circle), it searches the
caption alone and "CAPTION - W:red + W:blue" for W = 0.5, 1, 2, and reports the share of
the top 20 whose scene holds a blue circle (and a red one), averaged over the captions.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VARIANTS = {
    "caption alone": "{c}",
    "- 0.5:red + 0.5:blue": "{c} - 0.5:red + 0.5:blue",
    "- red + blue": "{c} - red + blue",
    "- 2:red + 2:blue": "{c} - 2:red + 2:blue",
}


def _has(image: dict, colour: str, shape: str) -> bool:
    return any(o["colour"] == colour and o["shape"] == shape for o in image["scene"]["objects"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=600)
    parser.add_argument("--captions", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()
    from xmr.engine.engine import Engine
    from xmr.training.corpus import make_corpus

    with tempfile.TemporaryDirectory() as work:
        corpus = make_corpus(Path(work) / "corpus", args.scenes, seed=args.seed)
        engine = Engine(Path(work) / "index")
        engine.index([corpus.images_dir], model="xmr-tiny")
        data = json.loads(corpus.captions_path.read_text())
        images = {str((corpus.images_dir / i["filename"]).resolve()): i for i in data["images"]}
        captions = [
            s["raw"]
            for im in images.values()
            for s in im["sentences"]
            if "red circle" in s["raw"] and not _has(im, "blue", "circle")
        ][: args.captions]
        rows = []
        for name, template in VARIANTS.items():
            blue, red = [], []
            for caption in captions:
                hits = engine.search(template.format(c=caption), k=20).hits
                blue.append(np.mean([_has(images[h.path], "blue", "circle") for h in hits]))
                red.append(np.mean([_has(images[h.path], "red", "circle") for h in hits]))
            rows.append(
                {
                    "query": name,
                    "blue_circle": round(float(np.mean(blue)), 3),
                    "red_circle": round(float(np.mean(red)), 3),
                }  # fmt: skip
            )
            common.log(f"{name:>22}: blue {rows[-1]['blue_circle']}, red {rows[-1]['red_circle']}")
    result = {
        "host": common.host(),
        "scenes": args.scenes,
        "seed": args.seed,
        "captions": len(captions),
        "rows": rows,
    }
    common.write_results("bench_query_arithmetic", result, markdown(result), args.out)
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [
        "### Query arithmetic with xmr-tiny (benchmarks/bench_query_arithmetic.py)",
        "",
        f"{result['scenes']} unseen scenes (seed {result['seed']}); {result['captions']} "
        "captions that mention a red circle, of scenes without a blue circle; share of the "
        "top 20 whose scene holds a blue (red) circle, averaged over the captions.",
        "",
        "| query | blue circle in top 20 | red circle in top 20 |",
        "|---|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['query']} | {row['blue_circle']:.2f} | {row['red_circle']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
