"""Near-duplicate removal: ``pipe``'s vectorized MinHash LSH against datasketch on the same rows.

The issue asked for datasketch or our own vectorized code, "whichever measures faster"; this script
is that measurement. Rows are Magpie-sized instructions (10-60 words, Zipf vocabulary) of which
``--near`` are copies of an earlier row with one or two words changed. Both sides use word 5-gram
shingles of the normalized text, 128 permutations, threshold 0.8, and "smallest id wins":

* ours: the ``near-dup`` filter stage (signatures, LSH bands, Jaccard-verified pairs, components);
* datasketch: ``MinHash.update_batch`` per row, ``MinHashLSH`` insert in id order, each row rejected
  when it has an LSH candidate among earlier rows with estimated Jaccard ≥ threshold (the usual
  datasketch recipe).

    .venv/bin/python bench/neardup.py [--rows 50000] [--workers 1]

Also reports how much the two agree on which rows to remove, and the recall of each on the clear
near copies (exact Jaccard with their origin ≥ 0.9). The two differ near the threshold (different
hash functions, so different estimates) and in one rule: datasketch removes a row similar to *any*
earlier row, ours keeps the smallest id of each connected component. Last line:
``RESULT neardup ratio=<ours/datasketch rows/s> target=1 ...``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def shingles(text: str) -> set[str]:
    from lrpipe.filters.text import normalize

    w = normalize(text).split()
    return {" ".join(w[i:i + 5]) for i in range(max(len(w) - 4, 1))}


def make_rows(n: int, near: float, seed: int = 0) -> tuple[list[dict], set[str]]:
    """Rows, and the ids of near copies whose exact Jaccard with their origin is ≥ 0.9 (clear cases)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(20000)]
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    rows, clear = [], set()
    for i in range(n):
        if i > 10 and rng.random() < near:
            src = rows[int(rng.integers(0, i))]["instruction"]
            words = src.split()
            op = rng.integers(0, 3)
            if op == 0:  # a word appended
                words.append(vocab[int(rng.integers(0, len(vocab)))])
            elif op == 1:  # the last word changed
                words[-1] = vocab[int(rng.integers(0, len(vocab)))]
            else:  # a random word changed (often below the threshold for short texts)
                words[int(rng.integers(0, len(words)))] = vocab[int(rng.integers(0, len(vocab)))]
            text = " ".join(words)
            a, b = shingles(src), shingles(text)
            if len(a & b) / len(a | b) >= 0.9:
                clear.add(f"r{i:08d}")
        else:
            text = " ".join(vocab[k] for k in rng.choice(len(vocab), int(rng.integers(10, 60)), p=p))
        rows.append({"id": f"r{i:08d}", "instruction": text})
    return rows, clear


def run_ours(path: Path, out: Path, workers: int) -> tuple[float, set[str]]:
    from lrpipe.pipelines.filter import FilterStage
    from lrpipe.runner import run_stage
    from lrpipe.shards import ShardDir
    from lrpipe.sources import FileSource

    t0 = time.perf_counter()
    run_stage(FilterStage(FileSource([str(path)], rows_per_unit=10000), [{"name": "near-dup", "threshold": 0.8}]),
              out, progress=False, workers=workers)
    dt = time.perf_counter() - t0
    return dt, set(ShardDir.open(out).read_all(rejected=True).column("id").to_pylist())


def run_datasketch(rows: list[dict]) -> tuple[float, set[str]]:
    from datasketch import MinHash, MinHashLSH

    from lrpipe.filters.text import normalize

    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    sigs: dict[str, MinHash] = {}
    removed = set()
    for r in rows:
        words = normalize(r["instruction"]).split()
        sh = [" ".join(words[i:i + 5]).encode() for i in range(max(len(words) - 4, 1))]
        m = MinHash(num_perm=128)
        m.update_batch(sh)
        if any(m.jaccard(sigs[c]) >= 0.8 for c in lsh.query(m)):
            removed.add(r["id"])
        sigs[r["id"]] = m
        lsh.insert(r["id"], m)
    return time.perf_counter() - t0, removed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50000)
    ap.add_argument("--near", type=float, default=0.1, help="share of rows that are near copies")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-neardup-"))
    rows, clear = make_rows(args.rows, args.near)
    path = work / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    try:
        t_ours, ours = run_ours(path, work / "out", args.workers)
        t_ds, theirs = run_datasketch(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    agree = len(ours & theirs) / max(len(ours | theirs), 1)
    o_rs, d_rs = args.rows / t_ours, args.rows / t_ds
    print(f"ours:       {t_ours:.1f}s = {o_rs:,.0f} rows/s, removed {len(ours)} (workers={args.workers})")
    print(f"datasketch: {t_ds:.1f}s = {d_rs:,.0f} rows/s, removed {len(theirs)}")
    rec_o, rec_d = len(ours & clear) / max(len(clear), 1), len(theirs & clear) / max(len(clear), 1)
    print(f"agreement (Jaccard of removed sets): {agree:.3f}; recall on {len(clear)} clear near copies "
          f"(exact Jaccard >= 0.9): ours {rec_o:.3f}, datasketch {rec_d:.3f}")
    print(f"RESULT neardup ratio={o_rs / d_rs:.2f} target=1 rows={args.rows} ours_rows_s={o_rs:.0f} "
          f"datasketch_rows_s={d_rs:.0f} removed_ours={len(ours)} removed_datasketch={len(theirs)} "
          f"agreement={agree:.3f} recall_ours={rec_o:.3f} recall_datasketch={rec_d:.3f} workers={args.workers}")


if __name__ == "__main__":
    main()
