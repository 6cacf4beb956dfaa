"""`xmr train-reranker`: image-text matching over frozen encoder tokens.

Every step builds four kinds of (text, image) pairs from a batch of B images:
  positive      an image and one of its captions                          label 1
  hard image    the caption with an image sampled from its stage-1 top-M,
                in proportion to softmax(similarity / tau) (ALBEF)         label 0
  hard caption  the image with a caption sampled likewise                  label 0
  edited        the image with its caption edited: colours swapped, relation
                reversed, object changed (training/text_edits), each kind
                that applies                                               label 0
and minimises a listwise cross-entropy over each query's candidates, plus (--edit-pairs)
a logistic loss on caption-vs-edit pairs. The encoder is frozen and its tokens are
computed once, the edited captions' included.

Reading order:
  config.py       the options and the checks that refuse impossible ones
  mining.py       hard-negative pools and each step's batch
  edits.py        caption edits, encoded once
  losses.py       the listwise and edit-pair losses
  checkpoints.py  resume and --init-from
  loop.py         train_reranker: embed, step, validate, calibrate, save
"""

from xmr.training.reranker_training.config import RerankerTrainConfig, RerankerTrainState
from xmr.training.reranker_training.loop import train_reranker

__all__ = ["RerankerTrainConfig", "RerankerTrainState", "train_reranker"]
