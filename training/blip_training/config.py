"""What a BLIP ITM training run is asked to do (BlipTrainConfig) and what it has done
(BlipTrainState); `check_config` refuses impossible settings before any work."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_INIT = "blip-itm-base-coco"


@dataclass
class BlipTrainConfig:
    data: str  # Karpathy / LAVIS captions file with a train (and val) split
    out: str  # the Hugging Face folder written (and the checkpoint resumed from)
    model: str = "xmr-tiny"  # stage 1: the dual encoder whose similarities mine negatives
    init_from: str | None = None  # checkpoint name, HF id, folder or config:JSON (start.py)
    images_root: str | None = None
    steps: int = 1500
    max_minutes: float | None = None  # stop (validate, save) after this much training time
    batch_size: int = 32  # images per step; each brings its pairs (itm.py)
    # None: 1e-3 from a config (random weights; of 3e-4, 1e-3 and 3e-3 the one that learned
    # fastest here), 2e-5 from pretrained weights (BLIP fine-tunes at 1e-5 to 2e-5; larger
    # rates wreck what pretraining learned).
    lr: float | None = None
    weight_decay: float = 0.05
    warmup_steps: int = 50
    hard_pool: int = 16  # M: stage-1 top-M each hard negative is drawn from
    gallery: int = 1000  # images per mining gallery: about what stage 2 re-ranks from
    hard_negatives: int = 1  # H hard images per caption and hard captions per image
    random_negatives: int = 1  # R other batch images per caption (easy negatives)
    edit_negatives: bool = True  # each image's caption edited (colours, relation, object)
    tau: float = 0.05  # hard negatives drawn in proportion to softmax(stage-1 sim / tau)
    # The scorer ranks by logit[:, 1] alone, which the two-way ITM cross-entropy leaves
    # free up to a per-pair shift: this listwise term on it ranks each query's candidates.
    rank_weight: float = 0.5
    # BLIP's retrieval objective is ITC + ITM: the contrastive term (vision_proj, text_proj,
    # in-batch) aligns the towers quickly, and the ITM cross-attention learns on top of
    # features that already mean something; 0 trains ITM alone.
    itc_weight: float = 1.0
    itc_temperature: float = 0.07
    max_text_tokens: int = 40
    max_train_images: int | None = None
    # Validation scores (captions + images) x candidates pairs with cross-attention: on a
    # CPU ~100 pairs/s for blip-tiny, so a small split by default.
    val_images: int = 100
    val_every: int = 0  # validate every this many steps; 0: only at the end
    candidates: int = 16  # K: stage-1 depth re-ranked in validation
    calibrate_fusion: bool = True  # pick the stage-1 weight on validation
    seed: int = 0
    threads: int | None = None
    device: str | None = None  # None: cuda when present, else cpu


@dataclass
class BlipTrainState:
    step: int = 0
    history: list[dict] = field(default_factory=list)  # validation rows
    losses: list[float] = field(default_factory=list)  # every step's loss
    pretrained: bool = False  # started from pretrained weights (sets the default lr)
    source: str = ""  # what --init-from loaded
    fusion: dict | None = None  # the validation-chosen stage-1 weight and its R@1s


def check_config(config: BlipTrainConfig) -> None:
    """Refuse settings that cannot work, naming the option, before minutes of embedding."""
    from xmr.retrieval.errors import InputError

    if config.hard_negatives < 1:
        raise InputError("--hard-negatives must be at least 1")
    if config.hard_negatives > config.hard_pool:
        raise InputError(
            f"--hard-negatives {config.hard_negatives} is more than the stage-1 pool "
            f"({config.hard_pool}) they are drawn from"
        )
    if config.random_negatives >= config.batch_size:
        raise InputError("random negatives come from the batch: use fewer than --batch-size")
    if config.candidates < 1 or config.max_text_tokens < 4:
        raise InputError("candidates must be >= 1 and max_text_tokens >= 4")
