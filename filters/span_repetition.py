"""``span-repetition``: a translation whose repetition is much higher than its source's — the loops a
base LLM falls into while translating (about 1% of outputs in the study). Comparing with the source
keeps legitimately repetitive texts (a list of similar items, a song's chorus) that were repetitive
in English too.

Two measures on fast tokens (:mod:`lrpipe.filters.text`), computed for whole Arrow batches at once:

* **n-gram count**: the largest count of any token 3-gram. Rejected when the translation's exceeds
  ``max(ratio × source, source + min_excess)``.
* **loop fraction**: the share of the text's tokens covered by its longest back-to-back repetition
  of one span (up to ``max_span`` tokens, at least ``min_repeats`` times). Rejected when the
  translation's exceeds the source's by more than ``max_fraction_increase``.

Both are exact and vectorized: 3-grams are counted by sorting (row, 3-gram code) pairs, loops by
comparing the token codes with themselves shifted by each span length, over the flat token array of
the batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lrpipe.filters.base import Filter, Verdict, register, text_column
from lrpipe.filters.text import fast_tokens_array


def _flat_codes(texts: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Token codes of a batch (flat), row of each token, row offsets, and the code → token map."""
    toks = fast_tokens_array(texts)
    offsets = toks.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    enc = pc.dictionary_encode(toks.flatten())
    codes = enc.indices.to_numpy().astype(np.int64)
    rows = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
    # "" tokens come from empty texts (a whitespace split of "" gives [""]): drop them
    vocab = enc.dictionary.to_pylist()
    if "" in vocab:
        keep = codes != vocab.index("")
        codes, rows = codes[keep], rows[keep]
        offsets = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=len(texts)))))
    return codes, rows, offsets, vocab


def batch_max_ngram(codes: np.ndarray, rows: np.ndarray, n_rows: int, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the largest count of any token n-gram, and the flat position of one occurrence (-1 if none).

    Exact: the n-gram is folded into one integer key a code at a time (renumbering the prefix after
    each step keeps the key inside int64), prefixed by the row, and counted with one sort."""
    count = np.zeros(n_rows, dtype=np.int64)
    where = np.full(n_rows, -1, dtype=np.int64)
    if len(codes) < n:
        return count, where
    pos = np.flatnonzero(rows[n - 1:] == rows[:len(rows) - n + 1])
    if not len(pos):
        return count, where
    width = int(codes.max()) + 1
    key = rows[pos]
    for j in range(n):
        _, key = np.unique(key * width + codes[pos + j], return_inverse=True)
    key = key.astype(np.int64)
    order = np.argsort(key, kind="stable")
    k = key[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    sizes = np.diff(np.append(starts, len(k)))
    first_pos = pos[order[starts]]
    grp_rows = rows[first_pos]
    best = np.lexsort((-sizes, grp_rows))
    firsts = best[np.r_[True, grp_rows[best][1:] != grp_rows[best][:-1]]]
    count[grp_rows[firsts]] = sizes[firsts]
    where[grp_rows[firsts]] = first_pos[firsts]
    return count, where


def batch_longest_loop(codes: np.ndarray, rows: np.ndarray, n_rows: int, max_span: int = 32,
                       min_repeats: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row: tokens covered by the longest back-to-back repetition of one span (at least
    ``min_repeats`` times), its repeat count, span length and flat start position."""
    covered = np.zeros(n_rows, dtype=np.int64)
    reps_out = np.zeros(n_rows, dtype=np.int64)
    span_out = np.zeros(n_rows, dtype=np.int64)
    start_out = np.full(n_rows, -1, dtype=np.int64)
    for span in range(1, max_span + 1):
        if len(codes) <= span:
            break
        eq = (codes[span:] == codes[:-span]) & (rows[span:] == rows[:-span])
        if not eq.any():
            continue
        d = np.diff(np.concatenate(([0], eq.view(np.int8), [0])))
        starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        reps = (ends - starts) // span + 1
        ok = reps >= min_repeats
        if not ok.any():
            continue
        starts, reps = starts[ok], reps[ok]
        cov = reps * span
        r = rows[starts]
        better = cov > covered[r]
        # several runs of one row may be better: the largest wins (sort so it is written last)
        idx = np.flatnonzero(better)
        idx = idx[np.argsort(cov[idx], kind="stable")]
        covered[r[idx]] = cov[idx]
        reps_out[r[idx]], span_out[r[idx]], start_out[r[idx]] = reps[idx], span, starts[idx]
    return covered, reps_out, span_out, start_out


@register
class SpanRepetition(Filter):
    name = "span-repetition"

    def __init__(self, field: str | list[str] = "translation", source_field: str | list[str] = "instruction",
                 ratio: float = 2.0, min_excess: int = 10, max_fraction_increase: float = 0.2,
                 max_span: int = 32, min_repeats: int = 3, **params: Any) -> None:
        fields = [field] if isinstance(field, str) else list(field)
        sources = [source_field] if isinstance(source_field, str) else list(source_field)
        if len(fields) != len(sources):
            raise ValueError(f"span-repetition: {len(fields)} fields but {len(sources)} source fields")
        super().__init__(field=",".join(fields), source_field=",".join(sources), ratio=ratio, min_excess=min_excess,
                         max_fraction_increase=max_fraction_increase, max_span=max_span, min_repeats=min_repeats,
                         **params)
        self.fields, self.sources = fields, sources
        self.ratio, self.min_excess, self.max_inc = ratio, min_excess, max_fraction_increase
        self.max_span, self.min_repeats = max_span, min_repeats

    def reads(self) -> list[str]:
        return [*self.fields, *self.sources]

    def measure(self, texts: pa.Array) -> dict[str, Any]:
        codes, rows, offsets, vocab = _flat_codes(texts)
        n = len(texts)
        gram, gram_at = batch_max_ngram(codes, rows, n)
        cov, reps, span, loop_at = batch_longest_loop(codes, rows, n, self.max_span, self.min_repeats)
        lengths = np.diff(offsets)
        frac = np.where(lengths > 0, cov / np.maximum(lengths, 1), 0.0)
        return {"gram": gram, "gram_at": gram_at, "frac": frac, "reps": reps, "span": span, "loop_at": loop_at,
                "codes": codes, "vocab": vocab}

    @staticmethod
    def _piece(m: dict[str, Any], at: int, length: int) -> str:
        return " ".join(m["vocab"][c] for c in m["codes"][at:at + length])[:60]

    def keep_batch(self, table: pa.Table) -> list[tuple[bool, str]]:
        out = [(True, "")] * table.num_rows
        for f, s in zip(self.fields, self.sources):
            tgt = self.measure(text_column(table, f))
            # the source's measures are never negative, so only these rows can fail: measure their sources
            need = np.flatnonzero((tgt["gram"] > self.min_excess) | (tgt["frac"] > self.max_inc))
            src = {"gram": np.zeros(table.num_rows, np.int64), "frac": np.zeros(table.num_rows)}
            if len(need):
                m = self.measure(text_column(table.take(pa.array(need)), s))
                src["gram"][need], src["frac"][need] = m["gram"], m["frac"]
            gram_limit = np.maximum(self.ratio * src["gram"], src["gram"] + self.min_excess)
            bad_gram = tgt["gram"] > gram_limit
            bad_loop = tgt["frac"] - src["frac"] > self.max_inc
            for i in np.flatnonzero(bad_gram | bad_loop).tolist():
                if not out[i][0]:
                    continue
                if bad_loop[i]:
                    piece = self._piece(tgt, int(tgt["loop_at"][i]), int(tgt["span"][i]))
                    detail = (f"{f}: span {piece!r} repeated {tgt['reps'][i]} times back to back covers "
                              f"{tgt['frac'][i]:.0%} of the text ({s}: {src['frac'][i]:.0%})")
                else:
                    piece = self._piece(tgt, int(tgt["gram_at"][i]), 3)
                    detail = f"{f}: 3-gram {piece!r} occurs {tgt['gram'][i]} times ({s}: max 3-gram count {src['gram'][i]})"
                out[i] = (False, detail)
        return out

    def keep(self, row: dict[str, Any]) -> Verdict:
        ok, detail = self.keep_batch(pa.Table.from_pylist([row]))[0]
        return ok if ok else (False, detail)
