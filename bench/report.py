"""``pipe report`` on a million-row chain against reading the whole data with ``datasets``.

A 3-stage chain shaped like Magpie's (generate: 5 categories x 10 temperatures with ``max_tokens``
rejects; filter: ``dedup`` and ``colon`` rejects; translate: ``instruction_eu``/``response_eu``) is
written through ``ShardDir.write_unit`` in units of ``--unit`` rows, so each unit's profile is
gathered as the runner gathers it; the time that costs is reported as ``profile_share`` (profiling /
everything ``write_unit`` does).

Ours: ``pipe report`` on the chain's folder (language detection off for both: it runs on samples
only and the baseline has no equivalent). Baseline: what a user writes without profiles, every
stage read whole with ``datasets.Dataset.from_file`` and the same figures computed with pandas (rows
per reason, per (category, temperature) cell, token and word length histograms on the same bins,
translation length ratio, a few rows per reason). Each runs in its own process; peak memory is that
process's maximum RSS.

    python bench/report.py [--rows 1000000] [--unit 10000]

Last line: ``RESULT report ratio=<baseline s / ours s> target=1 ...``; the issue's bar is a page
for 1M rows built in under 60 s and under 5 MB (``page_mb``, ``ours_s``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
CATS = ["general", "math", "arithmetic", "code", "translation"]
TEMPS = [round(0.8 + 0.04 * k, 2) for k in range(10)]
WORDS = np.array("the a of to and in model data language basque text answer question write explain".split())


def texts(rng: np.random.Generator, n: int, lo: int, hi: int) -> list[str]:
    lens = rng.integers(lo, hi, n)
    flat = WORDS[rng.integers(0, len(WORDS), int(lens.sum()))]
    out, i = [], 0
    for k in lens:
        out.append(" ".join(flat[i:i + k]))
        i += k
    return out


def build_chain(root: Path, rows: int, unit: int) -> dict[str, float]:
    from lrpipe import profile as prof
    from lrpipe.shards import ShardDir, UnitSpec

    rng = np.random.default_rng(0)
    spent = {"profile": 0.0, "write": 0.0}
    real = prof.safe_profile

    def timed(*a, **k):  # noqa: ANN002, ANN003
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            spent["profile"] += time.perf_counter() - t

    import lrpipe.shards as shards_mod

    shards_mod.safe_profile = timed
    units = rows // unit
    stages = [("sample", "magpie.sample", {"max_tokens": 10}), ("filtered", "filter", {"dedup": 25, "colon": 40}),
              ("translate", "translate", {"translate_failed": 200})]
    for name, stage, reject in stages:
        plan = [UnitSpec(i, f"{name}-{i}") for i in range(units)]
        sd = ShardDir.create(root / name, stage=stage, config={"stage": stage, "model": "bench"}, plan=plan)
        for u in plan:
            n = unit
            base = {"id": [f"{u.index:05d}-{i:06d}" for i in range(n)],
                    "category": [CATS[i % 5] for i in range(n)],
                    "temperature": [TEMPS[(i // 5) % 10] for i in range(n)],
                    "instruction": texts(rng, n, 5, 60), "instruction_tokens": rng.integers(5, 200, n).tolist(),
                    "response": texts(rng, n, 10, 120), "response_tokens": rng.integers(10, 900, n).tolist()}
            if stage == "translate":
                base["instruction_eu"] = texts(rng, n, 4, 70)
                base["response_eu"] = texts(rng, n, 8, 140)
                base["translate_attempts"] = rng.integers(1, 4, n).tolist()
            t = pa.table(base)
            idx = np.arange(n)
            why = np.array([""] * n, dtype=object)
            for r, every in reject.items():
                why[(idx % every == 0) & (why == "")] = r
            rej_mask = why != ""
            kept = t.filter(pa.array(~rej_mask))
            rejected = t.filter(pa.array(rej_mask)).append_column(
                "reject_reason", pa.array(why[rej_mask].tolist(), pa.string())).append_column(
                "reject_detail", pa.array(["bench"] * int(rej_mask.sum())))
            t0 = time.perf_counter()
            sd.write_unit(u, kept, rejected, rows_in=n)
            spent["write"] += time.perf_counter() - t0
        sd.refresh_manifest()
    shards_mod.safe_profile = real
    return spent


BASELINE = r'''
import sys, json, time
from pathlib import Path
import numpy as np, pandas as pd
from datasets import Dataset, concatenate_datasets
root = Path(sys.argv[1]); edges = np.array([0, 1] + [2 ** k for k in range(1, 18)], dtype=float)
ratio_edges = np.round(np.arange(0, 31) * 0.1, 1)
def hist(v, e):
    i = np.clip(np.searchsorted(e, np.asarray(v, dtype=float), side="right") - 1, 0, len(e) - 1)
    return np.bincount(i, minlength=len(e)).tolist()
out = {}
for stage in ("sample", "filtered", "translate"):
    for part in ("data", "rejected"):
        files = sorted((root / stage / part).glob("part-*.arrow"))
        if not files:
            continue
        df = concatenate_datasets([Dataset.from_file(str(f)) for f in files]).to_pandas()
        fig = {"rows": len(df), "cells": df.groupby(["category", "temperature"]).size().to_dict().__len__()}
        for c in ("instruction_tokens", "response_tokens"):
            fig[c] = hist(df[c], edges)
            fig[c + "_by_cat"] = {k: hist(g, edges) for k, g in df.groupby("category")[c]}
            fig[c + "_by_temp"] = {k: hist(g, edges) for k, g in df.groupby("temperature")[c]}
        for c in [c for c in df.columns if df[c].dtype == object and c not in ("id", "reject_reason", "reject_detail", "category")]:
            fig[c + "_words"] = hist(df[c].str.split().str.len(), edges)
        if "instruction_eu" in df:
            fig["ratio"] = hist(df["instruction_eu"].str.len() / df["instruction"].str.len(), ratio_edges)
            fig["ratio_r"] = hist(df["response_eu"].str.len() / df["response"].str.len(), ratio_edges)
        if "reject_reason" in df:
            fig["reasons"] = df["reject_reason"].value_counts().to_dict()
            fig["samples"] = {r: g.head(6).to_dict("records").__len__() for r, g in df.groupby("reject_reason")}
        else:
            fig["samples"] = len(df.iloc[np.linspace(0, len(df) - 1, 6).astype(int)])
        out[f"{stage}/{part}"] = fig
print(json.dumps({"stages": len(out)}))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--unit", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        root = Path(tmp) / "chain"
        t0 = time.perf_counter()
        spent = build_chain(root, args.rows, args.unit)
        print(f"chain of {args.rows:,} rows written in {time.perf_counter() - t0:.0f} s "
              f"(profiles {spent['profile']:.1f} s of {spent['write']:.1f} s in write_unit)", flush=True)
        # Each side in a fresh interpreter that reports its own time and peak RSS when it exits.
        base_script = Path(tmp) / "baseline.py"
        base_script.write_text(BASELINE)
        measures = {}
        for name, cmd in (("baseline", [str(base_script), str(root)]),
                          ("ours", ["lrpipe", "report", str(root), "--out", str(Path(tmp) / "page.html"),
                                    "--no-languages"])):
            code = ("import resource, runpy, sys, time, json, atexit\n"
                    "t = time.perf_counter()\n"
                    "atexit.register(lambda: sys.stderr.write('MEASURE ' + json.dumps({'s': time.perf_counter() - t, "
                    "'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}) + '\\n'))\n"
                    "target = sys.argv[1]; sys.argv = sys.argv[1:]\n"
                    "if target.endswith('.py'):\n    runpy.run_path(target, run_name='__main__')\n"
                    "else:\n    runpy.run_module(target, run_name='__main__', alter_sys=True)\n")
            res = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, cwd=ROOT)
            line = next((x for x in res.stderr.splitlines() if x.startswith("MEASURE ")), None)
            if line is None:
                sys.exit(f"{name} failed:\n{res.stderr[-3000:]}")
            measures[name] = json.loads(line[len("MEASURE "):])
            print(f"{name}: {measures[name]['s']:.1f} s, peak RSS {measures[name]['rss']:.0f} MB", flush=True)
        page = Path(tmp) / "page.html"
        mb = page.stat().st_size / 1e6
        ratio = measures["baseline"]["s"] / measures["ours"]["s"]
        print(f"RESULT report ratio={ratio:.2f} target=1 rows={args.rows} stages=3 units={args.rows // args.unit * 3} "
              f"ours_s={measures['ours']['s']:.1f} baseline_s={measures['baseline']['s']:.1f} "
              f"ours_rss_mb={measures['ours']['rss']:.0f} baseline_rss_mb={measures['baseline']['rss']:.0f} "
              f"rss_ratio={measures['baseline']['rss'] / measures['ours']['rss']:.1f} page_mb={mb:.2f} "
              f"profile_share={spent['profile'] / max(spent['write'], 1e-9):.2f} "
              f"profile_us_per_row={1e6 * spent['profile'] / (3 * args.rows):.1f}")


if __name__ == "__main__":
    main()
