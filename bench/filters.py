"""Filters at scale: dedup + repetition + unfinished on synthetic Magpie-sized rows.

Generates ``--rows`` rows (reproducible seed) as a shard directory: instructions of 10-60 words and
responses of 100-400 words drawn from a Zipf vocabulary, ~12% duplicates up to case and spacing, ~1%
degenerate loops, ~3% instructions ending in ':'. Then, each in its own process (so peak RSS is the
filter's own):

* ours: ``pipe``'s filter stage (``unfinished, dedup, repetition`` on instruction and response);
* baseline: what a user would write — ``datasets.Dataset.filter`` with the same predicates in Python
  (a set of normalized instructions for dedup; regex tokens, a back-to-back span scan and a 3-gram
  Counter for repetition), run on the first ``--baseline-rows`` rows (pure Python is slow; the ratio is
  of rows per second).

    .venv/bin/python bench/filters.py [--rows 1000000] [--baseline-rows 50000] [--workers 0]

Peak RSS of ours is the parent's peak plus ``workers`` times the largest worker's peak (an upper
bound on the process tree at any instant).

Last line: ``RESULT filters ratio=<ours/baseline rows/s> target=3 rows_s=... seconds=... peak_rss_mb=...``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def generate(out: str, rows: int, seed: int = 0, unit: int = 20000) -> None:
    import numpy as np
    import pyarrow as pa

    from lrpipe.runner import MapStage, UnitOutput, run_stage
    from lrpipe.shards import UnitSpec

    vocab = np.array([f"w{i}" for i in range(30000)] + ["the", "of", "and", "to", "a", "in", "is", "code", "="])
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    cdf = np.cumsum(zipf / zipf.sum())
    cdf[-1] = 1.0

    class Gen(MapStage):
        name = "bench.generate"

        def config(self):
            return {"rows": rows, "seed": seed, "unit": unit}

        def plan(self):
            return [UnitSpec(index=i, name=f"gen{i}", params={"start": s, "rows": min(unit, rows - s)})
                    for i, s in enumerate(range(0, rows, unit))]

        def process(self, u):
            r = np.random.default_rng([seed, u.index])
            n = u.params["rows"]
            li, lr = r.integers(10, 60, n), r.integers(100, 400, n)
            words_i = vocab[np.searchsorted(cdf, r.random(int(li.sum())))]
            words_r = vocab[np.searchsorted(cdf, r.random(int(lr.sum())))]
            oi, orr = np.concatenate(([0], np.cumsum(li))), np.concatenate(([0], np.cumsum(lr)))
            kind = r.random(n)
            base = r.integers(0, 20000, n)
            loops = r.random(n) < 0.01
            ins, res, ids = [], [], []
            for k in range(n):
                if kind[k] < 0.12:  # drawn from 20k base prompts: duplicates across the whole set,
                    b = int(base[k])  # with case and spacing variants
                    text = f"Explain topic {b} and its relation to w{b % 977} in detail"
                    instr = text.upper() if k % 3 == 0 else text.replace(" ", "  ") if k % 3 == 1 else text
                else:
                    instr = " ".join(words_i[oi[k]:oi[k + 1]])
                    if kind[k] < 0.15:
                        instr += " as follows:"
                resp = " ".join(words_r[orr[k]:orr[k + 1]])
                if loops[k]:
                    resp += " " + " ".join(["again and"] * 150)
                ins.append(instr)
                res.append(resp)
                ids.append(f"general-{u.params['start'] + k:08d}")
            return UnitOutput(pa.table({"id": ids, "instruction": ins, "response": res}), None, rows_in=n)

    run_stage(Gen(), out, progress=False)


def run_ours(src: str, out: str, workers: int) -> dict:
    from lrpipe.pipelines.filter import FilterStage
    from lrpipe.runner import run_stage
    from lrpipe.sources import ShardSource

    t0 = time.perf_counter()
    stage = FilterStage(ShardSource(src), ["unfinished", "dedup",
                                           {"name": "repetition", "field": ["instruction", "response"]}])
    rep = run_stage(stage, out, progress=False, workers=workers)
    dt = time.perf_counter() - t0
    return {"rows": rep.rows_out + rep.rows_rejected, "seconds": dt, "kept": rep.rows_out}


def run_baseline(src: str, limit: int) -> dict:
    import re
    from collections import Counter

    import datasets

    from lrpipe.filters.text import normalize

    tok = re.compile(r"\w+|[^\w\s]")
    ds = datasets.load_dataset("arrow", data_files=f"{src}/data/*.arrow", split="train")
    ds = ds.select(range(min(limit, ds.num_rows)))
    seen: set[str] = set()

    def repetitive(text: str) -> bool:
        toks = tok.findall(text or "")
        for span in range(1, min(32, len(toks) // 2) + 1):
            run = 0
            for i in range(span, len(toks)):
                run = run + 1 if toks[i] == toks[i - span] else 0
                if run // span + 1 > 100:
                    return True
        grams = Counter(zip(toks, toks[1:], toks[2:]))
        return bool(grams) and grams.most_common(1)[0][1] > 100

    def keep(row: dict) -> bool:
        if row["instruction"].strip().endswith(":"):
            return False
        key = normalize(row["instruction"])
        if key in seen:
            return False
        seen.add(key)
        return not (repetitive(row["instruction"]) or repetitive(row["response"]))

    t0 = time.perf_counter()
    kept = ds.filter(keep)
    dt = time.perf_counter() - t0
    return {"rows": ds.num_rows, "seconds": dt, "kept": kept.num_rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--baseline-rows", type=int, default=50_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--workers", type=int, default=0, help="processes for ours (0: every usable core)")
    ap.add_argument("--child", choices=["ours", "baseline"], default=None)
    ap.add_argument("--src", default=None)
    args = ap.parse_args()
    if args.child:
        from lrpipe.parallel import default_workers

        workers = args.workers or default_workers()
        res = run_ours(args.src, args.src + ".filtered", workers) if args.child == "ours" else run_baseline(
            args.src, args.baseline_rows)
        # worst case of the whole process tree: the parent plus every worker at its own peak
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        res["peak_rss_mb"] = own + (workers * kids if args.child == "ours" and workers > 1 else 0)
        res["workers"] = workers if args.child == "ours" else 1
        print(json.dumps(res))
        return
    work = args.workdir or tempfile.mkdtemp(prefix="bench-filters-")
    src = os.path.join(work, f"rows-{args.rows}")
    t0 = time.perf_counter()
    generate(src, args.rows)
    print(f"generated {args.rows} rows in {time.perf_counter() - t0:.0f}s at {src}", flush=True)

    def child(kind: str) -> dict:
        out = subprocess.run([sys.executable, __file__, "--child", kind, "--src", src, "--baseline-rows",
                              str(args.baseline_rows), "--workers", str(args.workers)], capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    import shutil

    shutil.rmtree(src + ".filtered", ignore_errors=True)
    ours = child("ours")
    base = child("baseline")
    o_rs, b_rs = ours["rows"] / ours["seconds"], base["rows"] / base["seconds"]
    print(f"ours:     {ours['rows']} rows in {ours['seconds']:.1f}s = {o_rs:,.0f} rows/s, kept {ours['kept']}, "
          f"peak RSS {ours['peak_rss_mb']:.0f} MB")
    print(f"baseline: {base['rows']} rows in {base['seconds']:.1f}s = {b_rs:,.0f} rows/s, kept {base['kept']}, "
          f"peak RSS {base['peak_rss_mb']:.0f} MB")
    print(f"RESULT filters ratio={o_rs / b_rs:.2f} target=3 rows={ours['rows']} seconds={ours['seconds']:.1f} "
          f"rows_s={o_rs:.0f} peak_rss_mb={ours['peak_rss_mb']:.0f} workers={ours['workers']} "
          f"baseline_rows_s={b_rs:.0f}")


if __name__ == "__main__":
    main()
