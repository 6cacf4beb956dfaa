"""`xmr train-reranker --family blip-itm`: fine-tune (or train from a config) transformers'
`BlipForImageTextRetrieval` as the second stage, with the ITM loss and hard negatives
mined from stage 1 (the xmr dual encoder), writing a folder in Hugging Face layout that
`--reranker FOLDER` loads.

Reading order:
  config.py       the options and the checks that refuse impossible ones
  start.py        --init-from: a checkpoint name, HF id, folder or config:JSON
  vocab.py        the WordPiece vocabulary of a config start, built from the captions
  data.py         a split's pixels, token ids and stage-1 vectors, computed once
  edits.py        caption edits as text negatives
  itm.py          the ITM pass (vision once per image) and the training loss
  evaluate.py     stage 1 + matcher over a split: R@k both ways, the fusion weight sweep
  checkpoints.py  resume, and the Hugging Face folder
  loop.py         train_blip_reranker: start, embed, step, validate, save
"""

from xmr.training.blip_training.config import BlipTrainConfig, BlipTrainState
from xmr.training.blip_training.loop import train_blip_reranker

__all__ = ["BlipTrainConfig", "BlipTrainState", "train_blip_reranker"]
