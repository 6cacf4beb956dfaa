"""What a re-ranker training run is asked to do (RerankerTrainConfig), what it has done
(RerankerTrainState), and the checks that refuse impossible settings before any work."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class RerankerTrainConfig:
    data: str
    model: str  # the frozen encoder's spec
    out: str
    images_root: str | None = None
    steps: int = 1500
    max_minutes: float | None = None  # stop (validate, save) after this much training time
    batch_size: int = 32  # queries per step, each direction (about 8 pairs each)
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    width: int = 64
    layers: int = 2
    heads: int = 4
    image_layers: int = 0
    image_pool: int = 2
    image_token_layer: int | None = None  # vision block the image tokens come from (None: last)
    image_stem: str = "attention"  # or "conv" (see RerankerConfig)
    token_alignment: bool = False
    patch_position: str = "none"  # or "sincos": row/column codes on the patches (RerankerConfig)
    relation_readout: bool = False  # a word-pair relation term (RerankerConfig)
    # A convolutional stem over the model's input pixels beside the encoder's tokens
    # (RerankerConfig.pixel_patch): the shape small encoders' patch tokens lack.
    pixel_stem: bool = False
    # Epochs of teaching a new pixel stem's convolutions the shape and colour under each
    # patch (patch_labels.py) before the ranking steps; needs a corpus with scenes.
    pixel_stem_epochs: int = 0
    # Captions per step whose object words are taught where to look (grounding.py); needs
    # relation_readout and a corpus with scenes.
    grounding: int = 0
    # Captions per step whose relation word, and the words of the objects it joins, are
    # taught to the relation term's roles (relation_pairs.py); needs relation_readout and
    # captions of the corpus grammar.
    relation_pairs: int = 0
    # Learning rate of the relation term's weights (None: lr). Started beside a trained
    # re-ranker, they have far to go while the rest is only fine-tuned.
    relation_lr: float | None = None
    # Learning rate of the pixel stem's weights (None: lr): new beside a trained re-ranker.
    pixel_lr: float | None = None
    # Extra (image, true caption, its edit) triples per step, scored by the logit alone:
    # the direct binding signal that the listwise loss, dominated by stage 1, dilutes.
    edit_pairs: int = 0
    edit_kinds: str = "attribute"  # which edits those are: attribute,relation,object
    edit_weight: float = 1.0
    # Draw edit_mining x edit_pairs pairs and train on the edit_pairs the re-ranker scores
    # worst (1: all drawn pairs, uniformly).
    edit_mining: int = 1
    # Phrase queries per step ("a red circle"), each ranked against its stage-1
    # look-alikes with every image it is true of a right answer (phrase_queries.py); needs
    # a corpus with scenes and phrases.
    phrase_queries: int = 0
    hard_pool: int = 16  # M: stage-1 top-M each negative is drawn from
    gallery: int = 1000  # images per mining gallery: about the size stage 2 will re-rank from
    hard_negatives: int = 2  # H per query, drawn from the pool
    random_negatives: int = 1  # R easy negatives per caption (other batch images)
    tau: float = 0.05
    max_train_images: int | None = None
    val_images: int = 500
    val_every: int = 500
    candidates: int = 16  # stage-1 depth used in validation re-ranking
    # After training, pick the final score's stage1_weight on the validation split
    # (rerank_eval.fusion_sweep); off: keep the training-time weight (itc_weight).
    calibrate_fusion: bool = True
    seed: int = 0
    threads: int | None = None
    device: str | None = None  # None: cuda when present, else cpu
    # A saved re-ranker (an --out folder, or a model's own) to start from instead of random
    # weights, with the same architecture options; a fresh optimizer and schedule. A
    # checkpoint in `out` (resume) wins over it.
    init_from: str | None = None


@dataclass
class RerankerTrainState:
    step: int = 0
    history: list[dict] = field(default_factory=list)
    fusion: dict | None = None  # the validation-chosen stage1_weight and its R@1s
    pixel_stem: dict | None = None  # what --pixel-stem-epochs reached (patch_labels.py)


def check_config(config: RerankerTrainConfig) -> None:
    """Refuse settings that cannot work, naming the option, before minutes of embedding."""
    from xmr.retrieval.errors import InputError
    from xmr.retrieval.reranker import IMAGE_STEMS, PATCH_POSITIONS
    from xmr.training.reranker_training.edits import edit_columns

    if config.width % config.heads:
        raise InputError(
            f"--width {config.width} is not a multiple of --heads {config.heads}: "
            "pick --heads that divides it"
        )
    if config.image_stem not in IMAGE_STEMS:
        raise InputError(f"--image-stem {config.image_stem} is not one of {', '.join(IMAGE_STEMS)}")
    if config.patch_position not in PATCH_POSITIONS:
        raise InputError(
            f"--patch-position {config.patch_position} is not one of {', '.join(PATCH_POSITIONS)}"
        )
    if config.relation_readout and not config.token_alignment:
        raise InputError(
            "--relation-readout is added beside --token-alignment: add --token-alignment"
        )
    if config.grounding and not config.relation_readout:
        raise InputError("--grounding teaches the relation term's looks: add --relation-readout")
    if config.relation_lr is not None and not config.relation_readout:
        raise InputError("--relation-lr sets the relation term's rate: add --relation-readout")
    if config.relation_pairs and not config.relation_readout:
        raise InputError(
            "--relation-pairs teaches the relation term's roles: add --relation-readout"
        )
    if config.pixel_lr is not None and not config.pixel_stem:
        raise InputError("--pixel-lr sets the pixel stem's rate: add --pixel-stem")
    if config.pixel_stem_epochs and not config.pixel_stem:
        raise InputError("--pixel-stem-epochs teaches the pixel stem: add --pixel-stem")
    if config.pixel_stem and config.image_pool != 1:
        raise InputError("--pixel-stem reads every patch's pixels: use --image-pool 1")
    edit_columns(config.edit_kinds)
    if config.edit_mining > 1 and not config.edit_pairs:
        raise InputError("--edit-mining picks among edit pairs: add --edit-pairs")
    if config.init_from:
        check_start(Path(config.init_from), asdict(config))


def check_start(folder: Path, ours: dict) -> None:
    """Refuse an --init-from whose saved config differs from `ours` in a key both have
    (the fused stage-1 weight aside, and an ADDABLE option off in the start): a training
    config before embedding, the model's after."""
    from xmr.retrieval.errors import InputError
    from xmr.retrieval.reranker import RerankerConfig
    from xmr.retrieval.reranker_files import ADDABLE, folder_config

    saved = {"image_token_layer": None, **folder_config(folder)}
    fields = RerankerConfig.__dataclass_fields__.keys()
    keys = (ours.keys() & saved.keys() & fields) - {"stage1_weight"}
    differ = sorted(
        k for k in keys if ours[k] != saved[k] and not (k in ADDABLE and saved[k] == ADDABLE[k])
    )
    if differ:
        shown = ", ".join(f"{k} {saved[k]!r} (here {ours[k]!r})" for k in differ)
        raise InputError(f"--init-from {folder} was trained with {shown}: give the same options")
