"""Near-duplicate removal: ``pipe``'s vectorized MinHash LSH against datasketch and datatrove on the
same rows.

Rows are Magpie-sized instructions (10-60 words, Zipf vocabulary) of which ``--near`` are copies of an
earlier row with one word appended or changed. All sides use word 5-gram shingles of the normalized
text (NFKC, case-folded, whitespace collapsed; split on whitespace) and threshold 0.8:

* ours: the ``near-dup`` filter stage: 128-permutation signatures, 9 bands × 13 rows (the bands our
  ``lsh_params`` picks for 0.8), candidate pairs verified by the signatures' Jaccard estimate,
  connected components, smallest id wins;
* datatrove (what users pick for this job): ``MinhashDedupSignature`` → ``MinhashDedupBuckets`` →
  ``MinhashDedupCluster`` → ``MinhashDedupFilter`` under ``LocalPipelineExecutor`` (2 workers) with the
  same 9 × 13 LSH (117 hash functions: datatrove has no separate verification signature, every
  bucket collision is a duplicate), its text normalization set to ours (its default also strips
  punctuation and maps digits to 0, which would merge our ``w123`` words) and a whitespace word
  tokenizer; it keeps the root of each union-find set, not the smallest id;
* datasketch: ``MinHash.update_batch`` per row, ``MinHashLSH`` insert in id order, each row removed
  when it has an LSH candidate among earlier rows with estimated Jaccard ≥ threshold.

Quality against the truth: every pair of rows sharing a shingle gets its exact Jaccard (an inverted
index over all rows, so the labels cover every pair that can reach 0.8, not a sample); rows joined by
exact Jaccard ≥ 0.8 form components, and a component of k rows should lose k - 1. Since the methods
keep different survivors, a method's removals are scored per component: true positives
``min(removed in C, k - 1)``, false positives the rest; precision = TP / removed, recall =
TP / Σ(k - 1).

    .venv/bin/python bench/neardup.py [--rows 50000] [--workers 1]

Last line: ``RESULT neardup ratio=<ours/strongest baseline rows/s> target=1 ...``.
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


def _whitespace_adapter(self, data: dict, path: str, id_in_file: int | str) -> dict:  # noqa: ANN001
    return {"text": data["instruction"], "id": data["id"], "metadata": {}}


def _xxhash_takes_text() -> None:
    """datatrove 0.10 hashes shingles as ``str``, which xxhash 3.5+ refuses ("Strings must be encoded");
    encode them as UTF-8 (what older xxhash did), so datatrove runs with its default xxhash and not the
    slower SHA-1."""
    import xxhash
    from datatrove.utils.hashes import xxhash as dtx

    def xxhash64(data: str | bytes) -> int:
        return xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)

    dtx.xxhash64 = xxhash64


def run_datatrove(rows: list[dict], work: Path, workers: int = 2) -> tuple[float, set[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.text import TextNormConfig
    from datatrove.utils.word_tokenizers import WordTokenizer
    from loguru import logger

    from lrpipe.filters.neardup import lsh_params

    _xxhash_takes_text()

    class Whitespace(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    data = work / "dt-input"
    data.mkdir(parents=True)
    half = (len(rows) + 1) // 2  # one file per task, in id order (not timed)
    for k in range(2):
        pq.write_table(pa.Table.from_pylist(rows[k * half:(k + 1) * half]), data / f"part-{k}.parquet")
    bands, per_band = lsh_params(0.8, 128)
    norm = TextNormConfig(lowercase=True, norm_whitespace=True, remove_punctuation=False,
                          norm_unicode_diacritics=False, norm_numbers=False)
    cfg = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=per_band, seed=1, norm_config=norm)
    sigs, buckets, remove, removed, logs = (work / x for x in ("dt-sigs", "dt-buckets", "dt-remove", "dt-removed",
                                                                "dt-logs"))

    def reader() -> ParquetReader:
        return ParquetReader(str(data), adapter=_whitespace_adapter)

    logger.remove()  # datatrove's per-step log lines on stderr; its logs stay in logging_dir
    t0 = time.perf_counter()
    LocalPipelineExecutor([reader(), MinhashDedupSignature(str(sigs), config=cfg, language=Whitespace())],
                          tasks=2, workers=workers, logging_dir=str(logs / "1")).run()
    LocalPipelineExecutor([MinhashDedupBuckets(str(sigs), str(buckets), config=cfg)], tasks=bands,
                          workers=workers, logging_dir=str(logs / "2")).run()
    LocalPipelineExecutor([MinhashDedupCluster(str(buckets), str(remove), config=cfg)], tasks=1,
                          logging_dir=str(logs / "3")).run()
    LocalPipelineExecutor([reader(), MinhashDedupFilter(str(remove), exclusion_writer=ParquetWriter(str(removed))),
                           ParquetWriter(str(work / "dt-out"))], tasks=2, workers=workers,
                          logging_dir=str(logs / "4")).run()
    dt = time.perf_counter() - t0
    gone = set()
    for f in removed.rglob("*.parquet"):
        gone.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
    return dt, gone


def truth(rows: list[dict], threshold: float = 0.8) -> list[set[str]]:
    """Components (of 2 or more rows) of the graph joining rows whose exact shingle Jaccard reaches
    ``threshold``, over every pair that shares a shingle."""
    from collections import defaultdict

    sh = [shingles(r["instruction"]) for r in rows]
    index: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sh):
        for g in s:
            index[g].append(i)
    parent = list(range(len(rows)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, s in enumerate(sh):
        seen: set[int] = set()
        for g in s:
            for j in index[g]:
                if j < i and j not in seen:
                    seen.add(j)
                    if len(s & sh[j]) / len(s | sh[j]) >= threshold:
                        parent[find(i)] = find(j)
    comps: dict[int, set[str]] = defaultdict(set)
    for i in range(len(rows)):
        comps[find(i)].add(rows[i]["id"])
    return [c for c in comps.values() if len(c) > 1]


def score(removed: set[str], comps: list[set[str]]) -> tuple[float, float]:
    """(precision, recall) of a removal set against the true components, whichever survivor it keeps."""
    tp = sum(min(len(removed & c), len(c) - 1) for c in comps)
    return tp / max(len(removed), 1), tp / max(sum(len(c) - 1 for c in comps), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50000)
    ap.add_argument("--near", type=float, default=0.1, help="share of rows that are near copies")
    ap.add_argument("--workers", type=int, default=1, help="processes for ours")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-neardup-"))
    rows, _ = make_rows(args.rows, args.near)
    path = work / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    try:
        t_ours, ours = run_ours(path, work / "out", args.workers)
        t_dt, dtrove = run_datatrove(rows, work)
        t_ds, sketch = run_datasketch(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    comps = truth(rows)
    n = args.rows
    res = {"ours": (n / t_ours, ours), "datatrove": (n / t_dt, dtrove), "datasketch": (n / t_ds, sketch)}
    print(f"truth: {len(comps)} components of exact Jaccard >= 0.8, {sum(len(c) - 1 for c in comps)} rows to remove")
    quality = {}
    for name, (rate, gone) in res.items():
        quality[name] = score(gone, comps)
        print(f"{name:10s} {rate:9,.0f} rows/s, removed {len(gone):6,}, precision {quality[name][0]:.3f}, "
              f"recall {quality[name][1]:.3f}")
    strongest = max(("datatrove", "datasketch"), key=lambda k: res[k][0])
    o = res["ours"][0]
    print(f"RESULT neardup ratio={o / res[strongest][0]:.2f} target=1 strongest={strongest} rows={n} "
          f"ours_rows_s={o:.0f} datatrove_rows_s={res['datatrove'][0]:.0f} "
          f"datasketch_rows_s={res['datasketch'][0]:.0f} datasketch_ratio={o / res['datasketch'][0]:.2f} "
          f"datatrove_ratio={o / res['datatrove'][0]:.2f} "
          + " ".join(f"precision_{k}={p:.3f} recall_{k}={r:.3f}" for k, (p, r) in quality.items())
          + f" workers={args.workers}")


if __name__ == "__main__":
    main()
