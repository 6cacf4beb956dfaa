"""CLIP's byte-pair tokenizer in plain Python and NumPy: the token ids open_clip's
`SimpleTokenizer` gives, without importing open_clip or torch.

It reads open_clip's own vocabulary file (`bpe_simple_vocab_16e6.txt.gz`, MIT licence)
from the installed package's folder, found with `importlib.util.find_spec`, which locates
a package without running its `__init__`. Cleaning follows open_clip's `clean='lower'`:
ftfy's `fix_text`, HTML unescaping (twice), whitespace folding, lower case. Text made
only of printable ASCII without `&` is left unchanged by ftfy and `html.unescape`, so for
such text neither runs (ftfy's import alone costs about 0.1 s).

Models whose tokenizer is anything else (Hugging Face tokenizers, SigLIP's) are not
handled here; an export is only made for a model whose open_clip tokenizer gives the same
ids as this one on a set of test strings (export.py checks that).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
from pathlib import Path

import numpy as np

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # the merges CLIP's vocabulary uses (open_clip reads the same)
SPECIAL = ("<start_of_text>", "<end_of_text>")
PATTERN = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|""" + (
    r"""[^\s\p{L}\p{N}]+"""
)


class TokenizerUnavailable(Exception):
    """The vocabulary file cannot be found (open_clip is not installed)."""


def vocab_path() -> Path:
    """open_clip's vocabulary file, located without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise TokenizerUnavailable(f"cannot find open_clip's {VOCAB_FILE}")


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of bytes to printable characters (as open_clip's)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _plain(text: str) -> bool:
    """Text that ftfy and html.unescape leave as it is: printable ASCII, no entities."""
    printable = all(c.isprintable() or c in "\t\n\r" for c in text)
    return text.isascii() and "&" not in text and printable


def clean_lower(text: str) -> str:
    """open_clip's `clean='lower'`: fix_text, unescape twice, fold whitespace, lower case."""
    if not _plain(text):
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.strip().split()).lower()


def _build_tables(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(piece -> id, "a b" merge -> rank) from the vocabulary file."""
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = lines[1 : MERGES + 1]  # "a b": piece a merges with piece b, in rank order
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges]
    vocab += SPECIAL
    # ranks keyed by the "a b" line itself: no tuple per merge to build
    return {token: i for i, token in enumerate(vocab)}, {pair: i for i, pair in enumerate(merges)}


def _tables(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The tables, kept in the cache as a marshal file named by the vocabulary file's stat
    and this Python's marshal format: reading it back is a quarter of building them,
    which a cold query would pay. Built afresh whenever the file cannot be used."""
    import marshal
    import sys

    from xmr.retrieval.onnx.store import cache_root, write_atomic

    st = path.stat()
    tag = f"{st.st_size}-{st.st_mtime_ns}-{sys.version_info[0]}{sys.version_info[1]}"
    kept = cache_root() / f"bpe-{tag}-{marshal.version}.marshal"
    try:
        encoder, ranks = marshal.loads(kept.read_bytes())
        if isinstance(encoder, dict) and isinstance(ranks, dict) and len(ranks) == MERGES:
            return encoder, ranks
    except (OSError, ValueError, EOFError, TypeError):
        pass
    encoder, ranks = _build_tables(path)
    try:
        write_atomic(kept, marshal.dumps((encoder, ranks)))
    except OSError:  # a read-only cache: built again next time
        pass
    return encoder, ranks


class ClipTokenizer:
    """texts -> (B, context_length) int64 ids: start, BPE tokens, end, zero padding; a text
    longer than the context is cut and ends with the end token (as open_clip does)."""

    def __init__(self, context_length: int = 77, path: Path | None = None):
        import regex

        self.context_length = int(context_length)
        self.encoder, self.ranks = _tables(Path(path or vocab_path()))
        self.sot, self.eot = self.encoder[SPECIAL[0]], self.encoder[SPECIAL[1]]
        self.byte_encoder = _bytes_to_unicode()
        self.cache: dict[str, list[str]] = {s: [s] for s in SPECIAL}
        self.pattern = regex.compile(PATTERN, regex.IGNORECASE)

    def bpe(self, token: str) -> list[str]:
        """One pre-token (bytes as characters) -> its BPE pieces, lowest-rank merge first."""
        if token in self.cache:
            return self.cache[token]
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {f"{a} {b}" for a, b in zip(word, word[1:], strict=False)}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, MERGES + 1))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and f"{word[i]} {word[i + 1]}" == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self.cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in self.pattern.findall(clean_lower(text)):
            chars = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(chars))
        return ids

    def __call__(self, texts: list[str] | str) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)  # (B, ctx)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot
            out[row, : len(ids)] = ids
        return out
