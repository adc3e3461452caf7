"""Every benchmark script still runs end to end, at a toy size, and ends with its RESULT line naming
the strongest baseline. No timing is asserted (benchmarks measure, tests do not): this catches a
script broken by a change in the code it measures, which nothing else would notice until someone
reruns it. The vLLM benchmarks (engine_overhead, magpie_rounds, translate) are left to
``bench/run_all.sh``: each needs its own engine start."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TOY = {
    "filters": (["--rows", "3000", "--baseline-rows", "300"], "filters", ["datasets_rows_s", "datatrove_rows_s"]),
    "neardup": (["--rows", "2000"], "neardup", ["datatrove_rows_s", "precision_ours", "recall_datatrove"]),
    "span_repetition": (["--rows", "600", "--baseline-rows", "100"], "span_repetition", ["datasets_rows_s"]),
    "mt": (["--rows", "60", "--baseline-rows", "5", "--d-model", "64", "--layers", "1", "--num-beams", "2",
            "--max-length", "8"], "mt", ["hf_batched_dedup_sent_s", "ours_nocache_sent_s"]),
    "train_mfu": (["--shape", "tiny", "--seq-len", "128", "--steps", "4", "--warmup", "1"], "train-mfu",
                  ["ratio_trainer", "trl_attn"]),
    "eval_mc": (["--questions", "6", "--lmeval-batch", "8"], "eval-mc", ["lmeval_ratio", "per_option_ratio"]),
    "eval_mc --llava": (["--llava", "--questions", "2"], "eval-mc-llava", ["per_option_ratio", "image_tokens"]),
    "streaming": (["--rows", "4000", "--group", "1000"], "streaming", ["ours_rows_s"]),
    "report": (["--rows", "3000", "--unit", "1000"], "report", ["page_mb", "rss_ratio", "profile_share"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TOY))
def test_benchmark_runs_and_reports(script, tmp_path):
    args, name, keys = TOY[script]
    script = script.split()[0]
    env = dict(os.environ, PYTHONPATH=str(ROOT), LRPIPE_CACHE=os.environ.get("LRPIPE_CACHE", str(tmp_path / "c")),
               PIPE_PROGRESS="0", TMPDIR=str(tmp_path))
    res = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    m = re.match(rf"RESULT {re.escape(name)} ratio=(\S+) target=\S+ (.*)$", last)
    assert m, last
    assert math.isfinite(float(m.group(1))) and float(m.group(1)) > 0, last
    fields = dict(kv.split("=", 1) for kv in m.group(2).split())
    for key in keys:
        assert key in fields, (key, last)
    if "same_verdicts" in fields:
        assert fields["same_verdicts"] == "True", last
