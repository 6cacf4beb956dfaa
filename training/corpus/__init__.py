"""A deterministic, compositional image-caption corpus: coloured shapes and the words for them.

Each image shows 1 to 3 flat shapes on a plain (sometimes lightly shaded) background. Every
image gets five true captions that name the colour and shape of every object and state at
least one spatial relation, three short search phrases ("a red circle", "two squares"), and
ARO-style hard negatives: the same wording with two colours swapped, the relation word
reversed, the relation's objects exchanged, or one shape or colour replaced. Because the
caption grammar is small and regular, `is_caption_true` can check any caption against a
scene (and `is_phrase_true` any phrase), which is how the tests prove the captions and
phrases true and the negatives false.

The corpus is written in the Karpathy JSON layout used for COCO and Flickr30k, so the same
loaders and retrieval metrics apply.

Reading order, one module a step:
  scenes.py    vocabulary, Scene, and when a relation holds
  sampling.py  random scenes with unique descriptions
  render.py    a scene's pixels
  grammar.py   the phrases captions use
  captions.py  true captions and minimal-edit negatives (`describe`)
  phrases.py   short phrases and `is_phrase_true`
  checker.py   `is_caption_true`, the parser the tests use as an oracle
  dataset.py   `make_corpus`, the dataset on disk
"""

from xmr.training.corpus.captions import Description, captions_for, describe, negatives_for
from xmr.training.corpus.checker import is_caption_true
from xmr.training.corpus.dataset import DATASET_NAME, CorpusInfo, make_corpus, split_counts
from xmr.training.corpus.phrases import is_phrase_true, phrases_for
from xmr.training.corpus.render import render_scene
from xmr.training.corpus.sampling import sample_scene, sample_scenes
from xmr.training.corpus.scenes import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    RELATION_MARGIN,
    SHADING_AMPLITUDE,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    canonical_description,
    relation_holds,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "DATASET_NAME",
    "DIRECTIONS",
    "RELATION_MARGIN",
    "SHADING_AMPLITUDE",
    "SHAPES",
    "SIZES",
    "CorpusInfo",
    "Description",
    "Scene",
    "SceneObject",
    "canonical_description",
    "captions_for",
    "describe",
    "is_caption_true",
    "is_phrase_true",
    "make_corpus",
    "negatives_for",
    "phrases_for",
    "relation_holds",
    "render_scene",
    "sample_scene",
    "sample_scenes",
    "split_counts",
]
