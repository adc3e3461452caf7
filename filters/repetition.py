"""``repetition``: "instances with a sequence of tokens repeated over 100 times" (the study, A.1).

The sentence admits two readings, so both are measured (README: "Filters"), each with its own threshold:

* ``max_consecutive``: the largest number of back-to-back repeats of any token span (of length up to
  ``max_span``): "ha ha ha" is 3 repeats of "ha"; a model stuck in a loop produces hundreds.
* ``max_ngram``: the largest total count, anywhere in the text, of any token n-gram with n ≥ 3. The
  count of an n-gram is at most the count of its leading 3-gram, so the maximum over all n ≥ 3 is the
  maximum 3-gram count, which is what we compute.

A row is rejected when either measure exceeds its threshold ("over 100": 101 fails, 100 passes) on
any of the fields (instruction and response by default).

Speed: both measures need a token to occur more than ``threshold`` times, so a row whose most frequent
token occurs at most ``threshold`` times is kept without computing them; the per-row maximum token
count is computed for a whole Arrow batch at once with NumPy, and only the rare remaining rows pay
the exact computation.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lrpipe.filters.base import Filter, Verdict, register
from lrpipe.filters.text import fast_tokens, fast_tokens_array


def max_consecutive_repeats(tokens: list[Any] | np.ndarray, max_span: int = 32) -> tuple[int, int, int]:
    """(repeats, span length, start) of the span repeated most times back to back."""
    t = np.asarray(tokens if not isinstance(tokens, list) else _ids(tokens))
    n = len(t)
    best = (1 if n else 0, 1, 0)
    for span in range(1, min(max_span, n // 2) + 1):
        eq = t[span:] == t[:-span]  # eq[i]: token i+span repeats token i
        if not eq.any():
            continue
        # longest run of True in eq; a run of r means the span repeats floor(r / span) extra times
        padded = np.concatenate(([0], eq.view(np.int8), [0]))
        d = np.diff(padded)
        starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        runs = ends - starts
        k = int(runs.argmax())
        reps = runs[k] // span + 1
        if reps > best[0]:
            best = (int(reps), span, int(starts[k]))
    return best


def max_ngram_count(tokens: list[Any] | np.ndarray, n: int = 3) -> tuple[int, tuple[Any, ...]]:
    """Largest count of any n-gram (n=3 bounds every longer one) and that n-gram."""
    if len(tokens) < n:
        return 0, ()
    grams = Counter(zip(*(tokens[i:] for i in range(n))))
    g, c = grams.most_common(1)[0]
    return c, g


def _ids(tokens: list[str]) -> list[int]:
    vocab: dict[str, int] = {}
    return [vocab.setdefault(x, len(vocab)) for x in tokens]


def batch_max_token_count(tokens: pa.Array, buckets: int = 256) -> np.ndarray:
    """Per row, an upper bound on the count of its most frequent token, for a whole batch of token
    lists at once.

    Tokens are dictionary-encoded over the batch and each row's codes are counted into ``buckets``
    hash buckets with one ``bincount`` (linear time, no sort); a bucket's count is at least the count
    of every token in it, so the bound never misses a row, and collisions only add a few rows to
    the exact check."""
    n = len(tokens)
    out = np.zeros(n, dtype=np.int64)
    if isinstance(tokens, pa.ChunkedArray):
        tokens = tokens.combine_chunks()
    flat = tokens.flatten()
    if n == 0 or len(flat) == 0:
        return out
    offsets = tokens.offsets.to_numpy()
    lengths = np.diff(offsets)
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    codes = pc.dictionary_encode(flat).indices.to_numpy()
    assert buckets & (buckets - 1) == 0, "buckets must be a power of two"
    counts = np.bincount(rows * buckets + (codes & (buckets - 1)), minlength=n * buckets).reshape(n, buckets)
    return counts.max(axis=1)


@register
class Repetition(Filter):
    name = "repetition"

    def __init__(self, field: str | list[str] = ("instruction", "response"), max_consecutive: int = 100,
                 max_ngram: int = 100, max_span: int = 32, tokenizer: str | None = None, **params: Any) -> None:
        fields = [field] if isinstance(field, str) else list(field)
        super().__init__(field=",".join(fields), max_consecutive=max_consecutive, max_ngram=max_ngram,
                         max_span=max_span, tokenizer=tokenizer, **params)
        self.fields = fields
        self.max_consecutive, self.max_ngram, self.max_span = max_consecutive, max_ngram, max_span
        self._tok = None
        if tokenizer:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(tokenizer)

    def tokens(self, text: str) -> list[Any]:
        if self._tok is not None:
            return self._tok(text, add_special_tokens=False)["input_ids"]
        return fast_tokens(text)

    def check(self, text: str | None) -> tuple[bool, str]:
        return self.check_tokens(self.tokens(text or ""))

    def check_tokens(self, toks: list[Any]) -> tuple[bool, str]:
        reps, span, start = max_consecutive_repeats(toks, self.max_span)
        if reps > self.max_consecutive:
            piece = toks[start:start + span]
            shown = self._show(piece)
            return False, f"span {shown!r} repeated {reps} times back to back (max {self.max_consecutive})"
        count, gram = max_ngram_count(toks)
        if count > self.max_ngram:
            return False, f"3-gram {self._show(list(gram))!r} occurs {count} times (max {self.max_ngram})"
        return True, ""

    def _show(self, piece: list[Any]) -> str:
        s = self._tok.decode(piece) if self._tok is not None else " ".join(map(str, piece))
        return s[:60]

    def keep(self, row: dict[str, Any]) -> Verdict:
        for f in self.fields:
            ok, detail = self.check(row.get(f))
            if not ok:
                return False, f"{f}: {detail}"
        return True

    def keep_batch(self, table: pa.Table) -> list[tuple[bool, str]]:
        out = [(True, "")] * table.num_rows
        limit = min(self.max_consecutive, self.max_ngram)
        for f in self.fields:
            if f not in table.column_names:
                continue
            col = table.column(f)
            if self._tok is None:
                # Both measures need one token to occur more than `limit` times: rows whose most
                # frequent token occurs less often are kept without computing them.
                tokens = fast_tokens_array(col)
                candidates = np.flatnonzero(batch_max_token_count(tokens) > limit)
                for i in candidates:
                    if out[i][0]:
                        ok, detail = self.check_tokens(tokens[int(i)].as_py())
                        out[i] = (ok, f"{f}: {detail}" if not ok else "")
            else:
                values = col.to_pylist()
                for i, v in enumerate(values):
                    if out[i][0]:
                        ok, detail = self.check(v)
                        out[i] = (ok, f"{f}: {detail}" if not ok else "")
        return out
