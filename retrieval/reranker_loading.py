"""Find the re-ranker that goes with an encoder: `--reranker auto|none|FOLDER`."""

from __future__ import annotations

from pathlib import Path

from retrieval.errors import InvalidModelSpec

RERANKER_SUBDIR = "reranker"  # a model folder may carry its re-ranker here


def resolve_reranker(choice: str | None, encoder, device: str | None = None):
    """None when there is none to use; raises when an explicit folder is unusable."""
    if choice in (None, "", "none"):
        return None
    if choice == "auto":
        folder = Path(encoder.spec.name) / RERANKER_SUBDIR
        if encoder.spec.kind not in ("shipped", "folder") or not folder.is_dir():
            return None
    else:
        folder = check_reranker_choice(choice)
    from retrieval.reranker import load_reranker

    return load_reranker(folder, encoder, device)


def check_reranker_choice(choice: str) -> Path | None:
    """The folder of an explicit `--reranker FOLDER` (None for auto/none); raises when it
    does not exist, before a command does any work."""
    if choice in (None, "", "none", "auto"):
        return None
    folder = Path(choice).expanduser()
    if not folder.is_dir():
        raise InvalidModelSpec(
            f"re-ranker folder {choice} does not exist; give the --out "
            f"folder of `xmr train-reranker`, 'auto' or 'none'"
        )
    return folder
