"""Commands that make data and models: make-corpus, train-encoder, train-reranker."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from xmr.cli.errors import handle_errors
from xmr.cli.options import Device, Quiet, Threads


def _encoder_row(row: dict) -> str:
    """One epoch of train-encoder: loss and, with a val split, recall both ways."""
    recall = ""
    if row.get("val"):
        val = row["val"]
        recall = (
            "  t2i R@1/5/10 "
            + "/".join(f"{v:.1f}" for v in val["t2i"].values())
            + "  i2t "
            + "/".join(f"{v:.1f}" for v in val["i2t"].values())
        )
    loss = row["loss"] or float("nan")
    return f"epoch {row['epoch']:>3}  step {row['step']:>5}  loss {loss:.4f}{recall}"


def _reranker_row(row: dict) -> str:
    """One validation of train-reranker: step, loss, R@1s and hard-negative accuracies."""
    return "  ".join(f"{k} {v}" for k, v in row.items())


def _bar(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
        dynamic_ncols=True,
        leave=False,
    )


def _config(cls, options: dict):
    """A trainer's config from a command's parameters (`locals()` at its start): each one
    named like a field of the dataclass `cls`, paths as strings; the rest (quiet) are the
    command's own. A command parameter is named after the field it sets for this; one left
    at None takes the field's own default."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(
        **{
            k: str(v) if isinstance(v, Path) else v
            for k, v in options.items()
            if k in names and v is not None
        }
    )


def _count_option(flag: str, help: str):
    """A training option that counts something per step or run (0: off)."""
    return typer.Option(flag, metavar="N", min=0, help=help)


def _rate_option(flag: str, help: str):
    """A learning-rate option (None: the default its help names)."""
    return typer.Option(flag, metavar="RATE", help=help)


# Titles of the stages before training that are not embedding, by the name a trainer
# reports them under.
_PREPARING = {"pixel stem": "teaching the pixel stem each patch's shape (epochs)"}


class _TrainingReport:
    """A training command's progress on stderr, for the trainers' callbacks: a bar per
    stage where stderr is a terminal, else a line per stage and every 50 steps (a log file,
    CI); each validation row as soon as it is measured, above any open bar."""

    def __init__(self, quiet: bool, title: str, unit: str, rate_key: str, row_text):
        self.quiet, self.title, self.unit, self.row_text = quiet, title, unit, row_text
        self.rate_key = rate_key  # the rate's name on the bar
        self.bars: dict = {}  # title -> bar, opened when its stage starts

    def _bar(self, title: str, total: int):
        if title not in self.bars:
            self.bars[title] = _bar(total, title, self.quiet)
        return self.bars[title]

    def preparing(self, what: str, done: int, total: int) -> None:
        # stages before the steps: the frozen encoder's embedding, then any other work
        title = _PREPARING.get(what, f"embedding {what}")
        opening = title not in self.bars
        bar = self._bar(title, total)
        if opening and bar.disable and not self.quiet:
            typer.echo(f"{title}: {total}", err=True)  # a log still says what takes time
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def progress(self, step: int, total: int, loss: float, rate: float) -> None:
        bar = self._bar(self.title, total)
        bar.update(step - bar.n)
        bar.set_postfix({"loss": f"{loss:.3f}", self.rate_key: f"{rate:.0f}"})
        if bar.disable and not self.quiet and (step % 50 == 0 or step == total):
            typer.echo(f"step {step}/{total}  loss {loss:.4f}  {rate:.0f} {self.unit}/s", err=True)

    def validated(self, row: dict) -> None:
        if not self.quiet:
            from tqdm import tqdm

            tqdm.write(self.row_text(row), file=sys.stderr)  # an open bar is drawn again below

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


@handle_errors
def make_corpus(
    out: Annotated[
        Path,
        typer.Argument(metavar="FOLDER", help="Folder to write images/ and captions.json into."),
    ],
    images: Annotated[
        int, typer.Option("--images", "-n", metavar="N", min=10, help="How many scenes.")
    ] = 10000,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Same seed, same corpus.")] = 0,
    quiet: Quiet = False,
):
    """Generate a compositional shapes corpus (Karpathy format, with ARO-style negatives)."""
    from xmr.training.corpus import make_corpus as run_make_corpus

    with _bar(images, "rendering", quiet) as bar:

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        workers = min(4, os.cpu_count() or 1)
        info = run_make_corpus(out, images, seed, progress=progress, workers=workers)
    if not quiet:
        typer.echo(f"wrote {info}", err=True)
    typer.echo(str(Path(out) / "captions.json"))


@handle_errors
def train_encoder(
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA", help="Karpathy-format JSON (xmr make-corpus, COCO, Flickr30k)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", metavar="FOLDER", help="Output folder (open_clip artefact)."),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", metavar="MODEL", help="NAME[:PRETRAINED] to train or fine-tune."
        ),
    ],
    images_root: Annotated[
        Path | None,
        typer.Option("--images-root", metavar="FOLDER", help="Folder the image paths are under."),
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", metavar="N", min=1)] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", min=2)] = 256,
    lr: Annotated[float, typer.Option("--lr", metavar="RATE")] = 1e-3,
    warmup_steps: Annotated[int, typer.Option("--warmup", metavar="STEPS")] = 50,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", metavar="N", help="Stop after this many steps.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N")] = 0,
    name: Annotated[
        str, typer.Option("--name", metavar="NAME", help="Name of the config in the artefact.")
    ] = "xmr-encoder",
    phrases: Annotated[
        bool,
        typer.Option(
            "--phrases/--no-phrases",
            help="Train on an xmr corpus's short phrases too ('a red circle', 'two squares').",
        ),
    ] = False,
    mask_true_phrases: Annotated[
        bool,
        typer.Option(
            "--mask-true-phrases",
            help="With --phrases: a phrase true of another image of the batch ('circles') "
            "is not a negative for it (read from the corpus's scenes).",
        ),
    ] = False,
    threads: Threads = None,
    quiet: Quiet = False,
):
    """Contrastive training (open_clip ClipLoss); resumes from OUT/checkpoints/last.pt."""
    from xmr.training.encoder_training import EncoderTrainConfig
    from xmr.training.encoder_training import train_encoder as run_train

    config = _config(EncoderTrainConfig, locals())
    report = _TrainingReport(quiet, "training", "images", "img_s", _encoder_row)
    run_train(config, report.progress, report.validated)
    report.close()
    typer.echo(str(out))


@handle_errors
def train_reranker(
    data: Annotated[
        Path,
        typer.Argument(metavar="DATA", help="Karpathy-format JSON with a train (and val) split."),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="FOLDER", help="Output folder for the re-ranker.")
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", metavar="MODEL", help="The frozen encoder it reads.")
    ] = "xmr-tiny",
    images_root: Annotated[Path | None, typer.Option("--images-root", metavar="FOLDER")] = None,
    steps: Annotated[int, typer.Option("--steps", metavar="N", min=1)] = 1500,
    max_minutes: Annotated[
        float | None,
        typer.Option(
            "--max-minutes",
            metavar="MINUTES",
            min=0.1,
            help="Stop after this much training (a time budget).",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", metavar="N", min=2, help="Queries per step.")
    ] = 32,
    width: Annotated[int, typer.Option("--width", metavar="N")] = 64,
    layers: Annotated[int, typer.Option("--layers", metavar="N")] = 2,
    heads: Annotated[
        int, typer.Option("--heads", metavar="N", min=1, help="Attention heads (divide --width).")
    ] = 4,
    image_layers: Annotated[
        int, typer.Option("--image-layers", metavar="N", min=0, help="Patch self-attention.")
    ] = 0,
    image_pool: Annotated[
        int, typer.Option("--image-pool", metavar="N", min=1, help="k x k patch pooling.")
    ] = 2,
    image_token_layer: Annotated[
        int | None,
        typer.Option(
            "--image-token-layer",
            metavar="N",
            min=0,
            help="Vision block (0-based) whose output the image tokens are; default the last.",
        ),
    ] = None,
    image_stem: Annotated[
        str,
        typer.Option(
            "--image-stem", metavar="STEM", help="Image blocks: attention | conv (3x3, local)."
        ),
    ] = "attention",
    token_alignment: Annotated[
        bool,
        typer.Option("--token-alignment/--no-token-alignment", help="Add each word's best patch."),
    ] = False,
    patch_position: Annotated[
        str,
        typer.Option(
            "--patch-position",
            metavar="KIND",
            help="Row/column signal on the patches: none | sincos (starts neutral).",
        ),
    ] = "none",
    relation_readout: Annotated[
        bool,
        typer.Option(
            "--relation-readout/--no-relation-readout",
            help="Compare where word pairs look (relations; starts neutral).",
        ),
    ] = False,
    pixel_stem: Annotated[
        bool,
        typer.Option(
            "--pixel-stem/--no-pixel-stem",
            help="Also read the input pixels with convolutions (shape; starts neutral).",
        ),
    ] = False,
    grounding: Annotated[
        int,
        _count_option(
            "--grounding", "Captions per step taught where object words look (corpus scenes)."
        ),
    ] = 0,
    relation_pairs: Annotated[
        int,
        _count_option(
            "--relation-pairs",
            "Captions per step taught which words a relation joins (corpus grammar).",
        ),
    ] = 0,
    relation_lr: Annotated[
        float | None,
        _rate_option(
            "--relation-lr", "Learning rate of the relation term's weights (default: --lr)."
        ),
    ] = None,
    pixel_stem_epochs: Annotated[
        int,
        _count_option(
            "--pixel-stem-epochs",
            "Epochs teaching a new pixel stem each patch's shape (corpus scenes).",
        ),
    ] = 0,
    pixel_lr: Annotated[
        float | None,
        _rate_option("--pixel-lr", "Learning rate of the pixel stem's weights (default: --lr)."),
    ] = None,
    edit_pairs: Annotated[
        int,
        _count_option("--edit-pairs", "Caption-vs-edit pairs per step (direct binding signal)."),
    ] = 0,
    edit_kinds: Annotated[
        str,
        typer.Option(
            "--edit-kinds",
            metavar="KINDS",
            help="Edits those pairs use: attribute,relation,operands,object.",
        ),
    ] = "attribute",
    edit_mining: Annotated[
        int,
        typer.Option(
            "--edit-mining",
            metavar="K",
            min=1,
            help="Draw K x --edit-pairs pairs and train on the hardest --edit-pairs.",
        ),
    ] = 1,
    phrase_queries: Annotated[
        int,
        _count_option(
            "--phrase-queries",
            "Short phrases per step, ranked against their look-alikes (corpus scenes).",
        ),
    ] = 0,
    hard_negatives: Annotated[
        int,
        typer.Option(
            "--hard-negatives", metavar="N", min=1, help="Stage-1 look-alikes per query and step."
        ),
    ] = 2,
    gallery: Annotated[
        int,
        typer.Option(
            "--gallery",
            metavar="N",
            min=2,
            help="Images per hard-negative gallery (~ what stage 2 sees).",
        ),
    ] = 1000,
    max_train_images: Annotated[int | None, typer.Option("--max-train-images", metavar="N")] = None,
    val_every: Annotated[int, typer.Option("--val-every", metavar="N")] = 500,
    calibrate_fusion: Annotated[
        bool,
        typer.Option("--calibrate/--no-calibrate", help="Pick the stage-1 weight on validation."),
    ] = True,
    seed: Annotated[int, typer.Option("--seed", metavar="N")] = 0,
    family: Annotated[
        str,
        typer.Option(
            "--family",
            metavar="FAMILY",
            help="native: xmr's re-ranker over the encoder's tokens; blip-itm: BLIP ITM "
            "(transformers), written as a Hugging Face folder for --reranker FOLDER.",
        ),
    ] = "native",
    init_from: Annotated[
        str | None,
        typer.Option(
            "--init-from",
            metavar="SOURCE",
            help="native: a saved re-ranker (same options). blip-itm: blip-itm-base-coco (the "
            "default), another checkpoint name, an HF id, a Hugging Face folder, or "
            "config:blip-tiny / config:FILE.json for random weights.",
        ),
    ] = None,
    lr: Annotated[
        float | None,
        _rate_option(
            "--lr", "Default: native 5e-4; blip-itm 2e-5 from weights, 1e-3 from a config."
        ),
    ] = None,
    device: Device = None,
    threads: Threads = None,
    quiet: Quiet = False,
):
    """Train the cross-attention re-ranker (ITM with hard negatives); resumes from OUT."""
    if family == "blip-itm":
        _refuse_native_options(locals())
        return _train_blip(locals())
    if family != "native":
        from xmr.retrieval.errors import InputError

        raise InputError(f"--family {family}: use native or blip-itm")
    from xmr.training.reranker_training import RerankerTrainConfig
    from xmr.training.reranker_training import train_reranker as run_train

    config = _config(RerankerTrainConfig, locals())
    report = _TrainingReport(quiet, "training re-ranker", "pairs", "pairs_s", _reranker_row)
    state = run_train(config, report.progress, report.preparing, report.validated)
    report.close()
    if state.fusion and not quiet:
        f = state.fusion
        typer.echo(
            f"final score = logit + {f['stage1_weight']:g} x stage 1 "
            f"({f['multiplier']:g} x the encoder's logit scale, chosen on validation: "
            f"t2i R@1 {f['t2i_R@1']:.2f}, i2t R@1 {f['i2t_R@1']:.2f})",
            err=True,
        )
    typer.echo(str(out))


# Options of the native re-ranker's architecture and loss, which a BLIP run has no use for.
_NATIVE_ONLY = (
    "width", "layers", "heads", "image_layers", "image_pool", "image_token_layer",
    "image_stem", "token_alignment", "patch_position", "relation_readout", "grounding",
    "pixel_stem", "pixel_stem_epochs", "pixel_lr", "relation_pairs", "relation_lr",
    "edit_pairs", "edit_kinds", "edit_mining", "phrase_queries",
)  # fmt: skip


def _refuse_native_options(options: dict) -> None:
    """An option of the native architecture given with --family blip-itm is a mistake to
    name, not to ignore."""
    import inspect

    from xmr.retrieval.errors import InputError

    params = inspect.signature(train_reranker).parameters
    given = [n for n in _NATIVE_ONLY if options[n] != params[n].default]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise InputError(f"{flags}: native re-ranker options; --family blip-itm has its own model")


def _train_blip(options: dict) -> None:
    from xmr.training.blip_training import BlipTrainConfig, train_blip_reranker

    config = _config(BlipTrainConfig, options)
    quiet = options["quiet"]
    report = _TrainingReport(quiet, "training BLIP ITM", "pairs", "pairs_s", _reranker_row)
    state = train_blip_reranker(config, report.progress, report.preparing, report.validated)
    report.close()
    if state.fusion and not quiet:
        f = state.fusion
        typer.echo(
            f"final score = ITM logit[:, 1] + {f['stage1_weight']:g} x stage-1 cosine (chosen "
            f"on validation, top {f['candidates']}: t2i R@1 {f['t2i_R@1']:.2f} vs stage 1 "
            f"{f['stage1_t2i_R@1']:.2f}, i2t R@1 {f['i2t_R@1']:.2f} vs {f['stage1_i2t_R@1']:.2f})",
            err=True,
        )
    typer.echo(str(options["out"]))
