"""Queries without torch: ONNX exports of the towers and the native re-ranker (export.py,
made with torch), kept by model content (store.py), run by ONNX Runtime (runtime.py) with
CLIP's tokenizer (tokenizer.py) and open_clip's preprocessing (preprocess.py) in NumPy.
Only export.py imports torch. docs/onnx.md describes the whole path."""
