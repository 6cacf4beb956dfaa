"""A small WordPiece tokenizer built offline from the training captions, for a matcher
trained from a config (`--init-from config:...`), where no pretrained tokenizer exists.

Whole words of the captions become tokens, and single letters and digits (also as "##"
continuations) let WordPiece spell any word it has not seen instead of collapsing it to
[UNK]. The result is an ordinary BERT tokenizer: `save_pretrained` writes it and
`AutoTokenizer.from_pretrained` reads it back, like any Hugging Face checkpoint's.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4, BERT's names
# BERT's basic tokenizer: lower case, words and single punctuation marks.
_PIECE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def caption_words(captions: Iterable[str]) -> list[str]:
    """The distinct words and punctuation marks of `captions`, lower-cased, sorted."""
    words: set[str] = set()
    for caption in captions:
        words.update(_PIECE.findall(caption.lower()))
    return sorted(words)


def vocabulary(captions: Iterable[str]) -> list[str]:
    """[PAD] [UNK] [CLS] [SEP] [MASK], the captions' words, then letters and digits alone
    and as continuations (the spelling fallback)."""
    characters = string.ascii_lowercase + string.digits
    fallback = list(characters) + [f"##{c}" for c in characters]
    seen = set(SPECIALS)
    out = list(SPECIALS)
    for token in caption_words(captions) + fallback:
        if token not in seen:
            seen.add(token)
            out.append(token)
    return out


def build_tokenizer(captions: Iterable[str]):
    """A BERT WordPiece tokenizer (lower-casing, [CLS] text [SEP]) over `vocabulary(captions)`."""
    from transformers import BertTokenizer

    tokens = vocabulary(captions)
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
