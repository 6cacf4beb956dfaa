"""Can a native re-ranker read an index's stored image tokens? Decided from the index's
manifest and the re-ranker's config alone (no torch), so a mismatch is refused with the
fix before any model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from xmr.retrieval.matching import Matcher
    from xmr.retrieval.reranker import RerankerRuntime


class TokenLayout(Protocol):
    """What these checks read of an index (a Library): where its image tokens come from."""

    directory: Path
    images: Any  # its image Collection: .tokens is None where no tokens are kept

    @property
    def token_pool(self) -> int: ...

    @property
    def token_layer(self) -> int | None: ...

    @property
    def token_pixels(self) -> int: ...


def token_mismatch(library: TokenLayout, reranker: Matcher | RerankerRuntime | None) -> str | None:
    """Why `reranker` cannot read the index's stored image tokens, with the fix, or None
    when it can (reranker_config_mismatch)."""
    if reranker is None or getattr(reranker, "family", "native") != "native":
        return None  # a matcher with its own vision tower reads no stored tokens
    reranker_config = getattr(reranker, "config")  # noqa: B009 (native: a RerankerRuntime)
    read = ("image_pool", "image_token_layer", "pixel_patch")
    config = {k: getattr(reranker_config, k) for k in read}
    return reranker_config_mismatch(library, config, reranker.name)


def reranker_config_mismatch(library: TokenLayout, config: dict, name: str) -> str | None:
    """The same question from a re-ranker's config alone (no torch): the stored tokens are
    pooled k x k for another grid (its learned positions fit one grid only), come from
    another vision block than the one it was trained on, or lack the patch pixels its
    pixel stem reads. Pixels kept for a re-ranker that does not read them are ignored."""
    if library.images.tokens is None:
        return None
    pool, layer = library.token_pool, library.token_layer
    wanted_pool = int(config.get("image_pool") or 1)
    wanted_layer = config.get("image_token_layer")
    if pool > 1 and wanted_pool != pool:
        return (
            f"index {library.directory} stores image tokens pooled {pool}x{pool}, but "
            f"re-ranker {name} reads them pooled {wanted_pool}x{wanted_pool}; use one trained "
            f"on {pool}x{pool} pooled image tokens, or re-index without a token pool"
        )
    if config.get("pixel_patch") and not library.token_pixels:
        return (
            f"re-ranker {name} also reads each patch's pixels (a pixel stem), which index "
            f"{library.directory} does not keep; re-index into a new index folder with "
            "`--reranker` naming this re-ranker, or search without re-ranking"
        )
    if wanted_layer != layer:
        return (
            f"index {library.directory} stores image tokens of {_block(layer)}, but re-ranker "
            f"{name} reads {_block(wanted_layer)}; re-index into a new index folder with this "
            "re-ranker"
        )
    return None


def _block(layer: int | None) -> str:
    return "the last vision block" if layer is None else f"vision block {layer}"
