"""Magpie: grid, ids, seeds, and whole runs (transformers engine: deterministic on CPU)."""

import json
import os
import signal
import subprocess
import time

import datasets
import pytest

from lrpipe.errors import InputError
from lrpipe.pipelines.magpie import (
    CATEGORIES,
    MagpieConfig,
    ResponseConfig,
    SampleStage,
    parse_temps,
    run_magpie,
    spread,
)
from lrpipe.shards import ShardDir

from .conftest import PIPE, SAMPLE_SEED
from .resume_checks import assert_resumed, committed

FAST = ["--engine", "transformers", "--batch-size", "8", "--max-tokens", "16", "--response-max-tokens", "16",
        "--no-progress", "--seed", str(SAMPLE_SEED)]


def test_parse_temps():
    t = parse_temps("0.8:1.2")
    assert len(t) == 10 and t[0] == 0.8 and t[-1] == 1.2
    assert abs(t[1] - (0.8 + 0.4 / 9)) < 1e-6
    assert parse_temps("0.8:1.2:5") == [0.8, 0.9, 1.0, 1.1, 1.2]
    assert parse_temps("0.8,1.0") == [0.8, 1.0]
    assert parse_temps("0.7") == [0.7]
    for bad in ("a:b", "1:2:0", "", "1:2:3:4"):
        with pytest.raises(InputError):
            parse_temps(bad)


def test_spread_is_exact_and_fair():
    assert spread(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(spread(1001, [0.3] * 50)) == 1001
    assert spread(7, [2, 1]) == [5, 2]


def test_plan_cells_ids_and_seeds(hf_engine):
    cfg = MagpieConfig(model="m", n=103, chunk_size=4)
    st = SampleStage(cfg, hf_engine, "m")
    plan = st.plan()
    assert {u.params["category"] for u in plan} == set(CATEGORIES)
    assert len({u.params["temperature"] for u in plan}) == 10
    assert sum(u.params["rows"] for u in plan) == 103
    ids = []
    seeds = set()
    for u in plan:
        _, reqs = st.requests(u)
        ids += [r.key for r in reqs]
        seeds |= {r.sampling.seed for r in reqs}
        assert all(r.sampling.temperature == u.params["temperature"] and r.sampling.top_p == 1.0 for r in reqs)
    assert len(ids) == len(set(ids)) == 103 == len(seeds)
    assert "math-000000" in ids and all(i.split("-")[0] in CATEGORIES for i in ids)
    # deterministic
    assert [u.name for u in SampleStage(cfg, hf_engine, "m").plan()] == [u.name for u in plan]


def _cfg(n=20, **kw):
    kw.setdefault("seed", SAMPLE_SEED)
    return MagpieConfig(model="embedded", n=n, temps=[0.8, 1.2], max_tokens=16, chunk_size=4,
                        response=ResponseConfig(max_tokens=16), **kw)


def test_run_is_reproducible_and_accounted(tmp_path, hf_engine):
    r1 = run_magpie(_cfg(), tmp_path / "a", hf_engine, model_id="embedded", progress=False)
    r2 = run_magpie(_cfg(), tmp_path / "b", hf_engine, model_id="embedded", progress=False)
    assert all(r.complete for r in r1.values()) and all(r.complete for r in r2.values())
    for step in ("sample", "respond", "filtered"):
        a, b = ShardDir.open(tmp_path / "a" / step), ShardDir.open(tmp_path / "b" / step)
        assert a.read_all().to_pylist() == b.read_all().to_pylist()
        assert a.read_all(rejected=True).to_pylist() == b.read_all(rejected=True).to_pylist()
        t = a.manifest()["totals"]
        assert t["balanced"] and t["rows_in"] == t["rows_out"] + t["rows_rejected"]
    s = ShardDir.open(tmp_path / "a" / "sample").manifest()["totals"]
    assert s["rows_in"] == 20
    # max_tokens truncation is a rejection with its reason, never a kept row
    rej = ShardDir.open(tmp_path / "a" / "sample").read_all(rejected=True)
    assert set(rej.column("reject_reason").to_pylist()) <= {"max_tokens", "empty", "engine_error"}
    kept = ShardDir.open(tmp_path / "a" / "respond").read_all().to_pylist()
    for row in kept:
        assert row["instruction_finish_reason"] == "stop" and row["response_finish_reason"] == "stop"
        assert row["conversation"][-1] == {"role": "assistant", "content": row["response"]}
        assert row["model"] == "embedded" and row["seed"] > 0


def _all_ids(sd):
    out = []
    for rej in (False, True):
        t = sd.read_all(rejected=rej)
        out += t.column("id").to_pylist() if t.num_rows else []
    return out


def _run_cli(args, env=None, **kw):
    return subprocess.run(PIPE + args, capture_output=True, text=True, env=env, **kw)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path, env):
    """kill -9 in the middle of a step, then the same command: every id exactly once in every step, the
    units committed before the kill untouched and equal to an uninterrupted run's, and for every row
    what does not come from sampling (seed, cell, system prompt) equal (tests/resume_checks.py)."""
    args = ["run", "magpie", "--n", "40", "--temps", "0.8:1.2:2", "--chunk-size", "4"] + FAST
    ref = _run_cli(args + ["--out", str(tmp_path / "ref")], env=env, timeout=900)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(PIPE + args + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    killed_in = None
    while time.time() < deadline and proc.poll() is None:
        done = {s: len(list((out / s / "units").glob("*.json"))) if (out / s / "units").exists() else 0
                for s in ("sample", "respond")}
        if done["respond"] >= 3:
            killed_in = "respond"
        elif done["sample"] >= 4 and done["respond"] == 0:
            killed_in = "sample"
        if killed_in:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert killed_in, "run finished before it could be killed"
    steps = ("sample", "respond", "filtered")
    before = {s: committed(out / s) if (out / s / "stage.json").exists() else {} for s in steps}
    assert before[killed_in], "killed before its first unit"
    m = ShardDir.open(out / "sample").manifest()
    assert killed_in == "respond" or not m["complete"]
    again = _run_cli(args + ["--out", str(out)], env=env, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    for step in steps:
        assert_resumed(tmp_path / "ref" / step, out / step, before[step],
                       stable=("category", "system_prompt", "temperature", "top_p", "seed", "response_seed", "model"))
    # a finished run is a no-op
    noop = _run_cli(args + ["--out", str(out)], env=env, timeout=900)
    assert noop.returncode == 0 and "+0 units" in noop.stdout


def test_cli_outputs_load_with_datasets_and_show_push(tmp_path, env):
    out = tmp_path / "m"
    r = _run_cli(["run", "magpie", "--n", "10", "--temps", "0.8,1.0", "--chunk-size", "5"] + FAST + ["--out", str(out)],
                 env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{out}/filtered/data/*.arrow" in r.stdout
    ds = datasets.load_dataset("arrow", data_files=str(out / "sample" / "data" / "*.arrow"), split="train")
    assert ds.num_rows + ShardDir.open(out / "sample").manifest()["totals"]["rows_rejected"] == 10
    assert {"id", "category", "system_prompt", "instruction", "temperature", "top_p", "seed", "model",
            "instruction_finish_reason", "instruction_tokens"} <= set(ds.column_names)
    show = _run_cli(["show", str(out / "sample")], env=env)
    assert show.returncode == 0 and "rows      in 10 =" in show.stdout and "balanced" in show.stdout
    show_all = _run_cli(["show", str(out)], env=env)
    assert show_all.stdout.count("complete") >= 3
    js = json.loads(_run_cli(["show", str(out / "respond"), "--json"], env=env).stdout)
    assert js["stage"] == "magpie.respond" and js["totals"]["balanced"]
    dry = tmp_path / "upload"
    p = _run_cli(["push", str(out / "sample"), "me/magpie-test", "--dry-run", str(dry), "--include-rejected"], env=env)
    assert p.returncode == 0, p.stderr
    card = (dry / "README.md").read_text()
    assert "me/magpie-test" in card and "magpie.sample" in card and "config_name: default" in card
    # the card tells how the data was made, with the report's figures beside it
    assert "## How this data was made" in card and "| `sample` | `magpie.sample` |" in card
    assert "![funnel](figures/funnel.png)" in card and (dry / "figures" / "funnel.png").stat().st_size > 1000
    assert list((dry / "data" / "train").glob("*.parquet"))
    loaded = datasets.load_dataset("parquet", data_files=str(dry / "data" / "train" / "*.parquet"), split="train")
    assert loaded.num_rows == ds.num_rows
    assert json.loads((dry / "manifest.json").read_text())["totals"]["rows_in"] == 10


def test_cli_errors_have_messages_and_exit_codes(tmp_path, env, tokenizer, model_path):
    # missing input file
    r = _run_cli(["filter", "--input", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")], env=env)
    assert r.returncode == 2 and "nope.jsonl: no such file or directory" in r.stderr
    assert not (tmp_path / "o").exists()
    # wrong column
    f = tmp_path / "in.jsonl"
    f.write_text('{"id": "a", "text": "hi:"}\n')
    r = _run_cli(["filter", "--input", str(f), "--out", str(tmp_path / "o")], env=env)
    assert r.returncode == 2 and "missing column(s) ['instruction']" in r.stderr and "field 'instruction'" in r.stderr
    # a bad row is a rejected row with its reason, not a failed job
    f.write_text('{"id": "a", "instruction": "x"}\n{"id": "b", "instruction": \n')
    r = _run_cli(["filter", "--input", str(f), "--out", str(tmp_path / "o")], env=env)
    assert r.returncode == 0 and "1 kept, 1 rejected" in r.stdout, r.stderr
    rej = ShardDir.open(tmp_path / "o").read_all(rejected=True).to_pylist()
    assert rej[0]["reject_reason"] == "bad_input" and "in.jsonl, row 1: invalid JSON" in rej[0]["reject_detail"]
    # unreadable shard
    sd = tmp_path / "shard"
    (sd / "data").mkdir(parents=True)
    (sd / "stage.json").write_text("{not json")
    r = _run_cli(["show", str(sd)], env=env)
    assert r.returncode == 2 and "corrupt header" in r.stderr
    # non-chat model
    base = tmp_path / "base-model"
    import shutil

    shutil.copytree(model_path, base)
    (base / "chat_template.jinja").unlink()
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    r = _run_cli(["run", "magpie", "--model", str(base), "--n", "5", "--out", str(tmp_path / "mm")] + FAST, env=env)
    assert r.returncode == 4 and "no chat template" in r.stderr and "Traceback" not in r.stderr
    # config mismatch refused, nothing overwritten
    ok = tmp_path / "f"
    f.write_text('{"id": "a", "instruction": "hi:"}\n{"id": "b", "instruction": "hello"}\n')
    assert _run_cli(["filter", "--input", str(f), "--out", str(ok)], env=env).returncode == 0
    r = _run_cli(["filter", "--input", str(f), "--out", str(ok), "--filters", "empty"], env=env)
    assert r.returncode == 3 and "--overwrite" in r.stderr
    m = ShardDir.open(ok).manifest()
    assert m["totals"]["rejected_by_reason"] == {"unfinished": 1}
    # bad --temps
    r = _run_cli(["run", "magpie", "--temps", "x:y", "--out", str(tmp_path / "t")] + FAST, env=env)
    assert r.returncode == 2 and "bad --temps" in r.stderr
