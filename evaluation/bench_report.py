"""Render a benchmark result (evaluation/bench.py) as a markdown table and a recall@k plot."""

from __future__ import annotations

from pathlib import Path

STAGE_LABELS = {
    "exact": "dual encoder (exact)",
    "index": "dual encoder (index)",
    "rerank": "dual encoder + re-ranker",
    "rerank_itm": "  re-ranker logit only (ITM)",
    "rerank_itm_itc": "  re-ranker logit + stage-1 logit (ITM+ITC)",
}


def markdown_report(result: dict) -> str:
    ks = list(next(iter(result["results"].values()))["t2i"].keys())
    head = " | ".join(f"t2i {k}" for k in ks) + " | " + " | ".join(f"i2t {k}" for k in ks)
    lines = [
        f"### {result['dataset']} ({result['split'] or 'all'}): {result['n_images']} images, "
        f"{result['n_texts']} captions",
        "",
        f"model `{result['model']}`, re-ranker `{result['reranker'] or 'none'}`"
        + (f", {result['candidates']} candidates" if result.get("candidates") else "")
        + f", index `{result['index_type']}`",
        "",
        f"| stage | {head} |",
        "|---" * (1 + 2 * len(ks)) + "|",
    ]
    for stage, label in STAGE_LABELS.items():
        row = result["results"].get(stage)
        if row:
            values = [row["t2i"][k] for k in ks] + [row["i2t"][k] for k in ks]
            lines.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    fusion = result.get("fusion")
    if fusion and "itc_weight" in fusion:
        lines += [
            "",
            f"Re-ranker final score: logit + {fusion['stage1_weight']:.2f} x stage-1 cosine "
            f"(ITM+ITC row: {fusion['itc_weight']:.2f}, the encoder's logit scale).",
        ]
    elif fusion:  # a pretrained matcher: the stage-1 weights tried, and which won
        lines += [
            "",
            f"Final score: ITM logit + w x stage-1 cosine, w = {fusion['stage1_weight']:.2f}. "
            "R@1 by w:",
            "",
            "| w | t2i R@1 | i2t R@1 |",
            "|---|---|---|",
        ]
        lines += [
            f"| {row['stage1_weight']:g} | {row['t2i_R@1']:.1f} | {row['i2t_R@1']:.1f} |"
            for row in fusion["sweep"]
        ]
        lines += [
            "",
            f"Best on this data: w = {fusion['best_stage1_weight']:g} (a matcher folder takes "
            'it as {"stage1_weight": W} in xmr_matcher.json).',
        ]
    if result.get("compositional"):
        kinds = sorted({k for stage in result["compositional"].values() for k in stage})
        lines += [
            "",
            "Hard-negative accuracy (%, true caption scored above its edit):",
            "",
            "| stage | " + " | ".join(kinds) + " |",
            "|---" * (1 + len(kinds)) + "|",
        ]
        for stage, accs in result["compositional"].items():
            lines.append(
                f"| {STAGE_LABELS.get(stage, stage)} | "
                + " | ".join(f"{accs.get(k, float('nan')):.1f}" for k in kinds)
                + " |"
            )
    t = result["timings"]
    timing = (
        f"encoding: {t['images_per_second']:.0f} images/s, {t['texts_per_second']:.0f} "
        f"texts/s{' (cached)' if t.get('embeddings_cached') else ''}; stage 1: "
        f"{t['index_ms_per_query']:.3f} ms/query"
    )
    if "rerank_ms_per_query" in t:
        timing += f"; stage 2: {t['rerank_ms_per_query']:.1f} ms/query"
    lines += ["", timing, ""]
    return "\n".join(lines)


def plot_curves(result: dict, path: Path) -> Path:
    """Recall@k curves, one panel per direction, one line per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    titles = {"t2i": "text → image", "i2t": "image → text"}
    for ax, direction in zip(axes, ("t2i", "i2t"), strict=True):
        for stage, curve in result["curves"].items():
            points = curve[direction]
            ks = [int(k.split("@")[1]) for k in points]
            ax.plot(ks, list(points.values()), marker="o", label=STAGE_LABELS.get(stage, stage))
        ax.set_xscale("log")
        ax.set_xticks([1, 5, 10, 50])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("k")
        ax.set_title(titles[direction])
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("recall@k (%)")
    axes[0].legend(loc="lower right")
    fig.suptitle(f"{result['dataset']} — {result['model']} ({result['n_images']} images)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
