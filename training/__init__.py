"""Training-side tools of xmr: synthetic corpora to fine-tune and evaluate encoders on."""
