"""Evaluation: recall@k, datasets, hard-negative probes and the `xmr bench` pipeline.

Used by `xmr bench`, training and the demo; the engine (retrieval/) never imports it.
"""
