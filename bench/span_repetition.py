"""span-repetition on translation pairs: the vectorized batch filter against the per-row Python a user
would write (a 3-gram ``Counter`` and a back-to-back span scan per text, for target and source).

Pairs are Magpie-sized (source 100-400 words, target the same length from another vocabulary); 1% of
targets end in a loop. On the same rows:

* ours: ``pipe filter`` with ``span-repetition`` through the runner (``--workers`` processes, Arrow
  shards written);
* ``datasets`` (the strongest baseline): that per-row Python under ``Dataset.filter(batched=True,
  num_proc=--workers)`` (loading the parquet file is not timed);
* naive (the first baseline): the same Python, one process, on the first ``--baseline-rows``.

Every side must reject exactly the same rows (checked).

    .venv/bin/python bench/span_repetition.py [--rows 20000] [--workers 2]

Last line: ``RESULT span_repetition ratio=<ours/datasets rows/s> target=1 ...``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path


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


def _batch_keep(batch: dict) -> list[bool]:
    return baseline(list(zip(batch["instruction"], batch["translation"])))


def main() -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lrpipe.pipelines.filter import FilterStage
    from lrpipe.runner import run_stage
    from lrpipe.shards import ShardDir
    from lrpipe.sources import FileSource

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--baseline-rows", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    pairs = make_pairs(args.rows)
    work = Path(tempfile.mkdtemp(prefix="bench-span-"))
    src = work / "pairs.parquet"
    pq.write_table(pa.table({"id": [f"r{i:07d}" for i in range(len(pairs))], "instruction": [a for a, _ in pairs],
                             "translation": [b for _, b in pairs]}), src, row_group_size=5000)
    try:
        t0 = time.perf_counter()
        run_stage(FilterStage(FileSource([str(src)], rows_per_unit=5000),
                              [{"name": "span-repetition", "field": "translation", "source_field": "instruction"}]),
                  work / "out", progress=False, workers=args.workers)
        t_ours = time.perf_counter() - t0
        kept = set(ShardDir.open(work / "out").read_all().column("id").to_pylist())
        ours = [f"r{i:07d}" in kept for i in range(len(pairs))]

        datasets.disable_progress_bars()
        ds = datasets.load_dataset("parquet", data_files=str(src), split="train", cache_dir=str(work / "hf"))
        t0 = time.perf_counter()
        flt = ds.filter(_batch_keep, batched=True, num_proc=args.workers)
        t_ds = time.perf_counter() - t0
        kept_ds = set(flt["id"])
        dsets = [f"r{i:07d}" in kept_ds for i in range(len(pairs))]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    base = baseline(pairs[:args.baseline_rows])
    t_base = time.perf_counter() - t0
    same = ours == dsets and ours[:args.baseline_rows] == base
    o_rs, d_rs, b_rs = args.rows / t_ours, args.rows / t_ds, args.baseline_rows / t_base
    print(f"ours:     {args.rows} pairs in {t_ours:.1f}s = {o_rs:,.0f} pairs/s, rejected {ours.count(False)} "
          f"({args.workers} workers)")
    print(f"datasets: {args.rows} pairs in {t_ds:.1f}s = {d_rs:,.0f} pairs/s, rejected {dsets.count(False)} "
          f"(batched, num_proc={args.workers})")
    print(f"naive:    {args.baseline_rows} pairs in {t_base:.1f}s = {b_rs:,.0f} pairs/s, "
          f"rejected {base.count(False)}; same verdicts everywhere: {same}")
    print(f"RESULT span_repetition ratio={o_rs / d_rs:.2f} target=1 strongest=datasets rows={args.rows} "
          f"ours_rows_s={o_rs:.0f} datasets_rows_s={d_rs:.0f} naive_rows_s={b_rs:.0f} "
          f"naive_ratio={o_rs / b_rs:.2f} workers={args.workers} same_verdicts={same}")


if __name__ == "__main__":
    main()
