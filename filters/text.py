"""Text helpers shared by filters: normalization for dedup and a fast token split.

The fast tokenization keeps runs of letters, digits, marks and underscores as tokens and makes every
other non-space character a token of its own, so "x=x=x=" and "😀😀😀" repeat as clearly as words do.
It is computed by Arrow kernels (a regex replace, then a whitespace split) for whole batches; the
single-text function uses the ``regex`` module with the same classes (an Arrow call per text costs
milliseconds of regex compilation; ``regex`` caches it), and a test holds the two equal on scripts,
symbols, emoji and Unicode spaces, so a vectorized bound and an exact check never disagree about what
a token is. CJK text without spaces yields one token per run of ideographs; pass a
model tokenizer where the study's "tokens" must be the model's.
"""

from __future__ import annotations

import re
import unicodedata

import pyarrow as pa
import pyarrow.compute as pc
import regex

_WS = re.compile(r"\s+")
_SYMBOL = r"([^\pL\pN\pM_\s])"
_TOKEN = regex.compile(r"[\pL\pN\pM_]+|[^\pL\pN\pM_\s]")


def normalize(text: str | None) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed and stripped."""
    if not text:
        return ""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def fast_tokens_array(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """List array of fast tokens, one list per text (nulls count as empty texts)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    spaced = pc.replace_substring_regex(pc.fill_null(texts, ""), pattern=_SYMBOL, replacement=r" \1 ")
    return pc.utf8_split_whitespace(pc.utf8_trim_whitespace(spaced))


def fast_tokens(text: str | None) -> list[str]:
    if not text:
        return []
    return _TOKEN.findall(text)
