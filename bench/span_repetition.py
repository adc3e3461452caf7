"""span-repetition on translation pairs: the vectorized batch filter against the per-row Python a user
would write (a 3-gram ``Counter`` and a back-to-back span scan per text, for target and source).

Pairs are Magpie-sized (source 100-400 words, target the same length from another vocabulary); 1% of
targets end in a loop. Both sides must reject exactly the same rows (checked).

    .venv/bin/python bench/span_repetition.py [--rows 20000]

Last line: ``RESULT span_repetition ratio=<ours/baseline rows/s> target=3 ...``.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    en = np.array([f"e{i}" for i in range(20000)] + ["the", "of", "and", ",", "."])
    eu = np.array([f"b{i}" for i in range(20000)] + ["eta", "da", "bat", ",", "."])
    p = 1.0 / np.arange(1, len(en) + 1)
    p /= p.sum()
    out = []
    for _ in range(n):
        k = int(rng.integers(100, 400))
        src = " ".join(en[rng.choice(len(en), k, p=p)])
        tgt = " ".join(eu[rng.choice(len(eu), k, p=p)])
        if rng.random() < 0.01:
            tgt += " " + " ".join(["bi hitz"] * int(rng.integers(30, 80)))
        out.append((src, tgt))
    return out


def baseline(pairs: list[tuple[str, str]], ratio: float = 2.0, min_excess: int = 10, max_inc: float = 0.2) -> list[bool]:
    tok = re.compile(r"[\w]+|[^\w\s]")

    def measures(text: str) -> tuple[int, float]:
        t = tok.findall(text)
        grams = Counter(zip(t, t[1:], t[2:]))
        gram = max(grams.values()) if grams else 0
        best = 0
        for span in range(1, 33):
            run = 0
            for i in range(span, len(t)):
                run = run + 1 if t[i] == t[i - span] else 0
                reps = run // span + 1
                if reps >= 3:
                    best = max(best, reps * span)
        return gram, (best / len(t) if t else 0.0)

    keep = []
    for src, tgt in pairs:
        gs, fs = measures(src)
        gt, ft = measures(tgt)
        keep.append(not (gt > max(ratio * gs, gs + min_excess) or ft - fs > max_inc))
    return keep


def main() -> None:
    import pyarrow as pa

    from lrpipe.filters.base import build_filter

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--baseline-rows", type=int, default=2000)
    args = ap.parse_args()
    pairs = make_pairs(args.rows)
    f = build_filter({"name": "span-repetition", "field": "translation", "source_field": "instruction"})
    t0 = time.perf_counter()
    ours = []
    for s in range(0, len(pairs), 5000):  # Arrow batches as the filter stage passes them
        chunk = pairs[s:s + 5000]
        t = pa.table({"instruction": [a for a, _ in chunk], "translation": [b for _, b in chunk]})
        ours += [ok for ok, _ in f.keep_batch(t)]
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = baseline(pairs[:args.baseline_rows])
    t_base = time.perf_counter() - t0
    same = ours[:args.baseline_rows] == base
    o_rs, b_rs = args.rows / t_ours, args.baseline_rows / t_base
    print(f"ours:     {args.rows} pairs in {t_ours:.1f}s = {o_rs:,.0f} pairs/s, rejected {ours.count(False)}")
    print(f"baseline: {args.baseline_rows} pairs in {t_base:.1f}s = {b_rs:,.0f} pairs/s, "
          f"rejected {base.count(False)}; same verdicts on those rows: {same}")
    print(f"RESULT span_repetition ratio={o_rs / b_rs:.2f} target=3 rows={args.rows} ours_rows_s={o_rs:.0f} "
          f"baseline_rows_s={b_rs:.0f} same_verdicts={same}")


if __name__ == "__main__":
    main()
