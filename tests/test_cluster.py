"""Generation at cluster scale: GPUs per local rank, ranks across launchers, ``--dp`` replicas, the
Slurm array template (dry run with ``srun`` shimmed, then a real 3-rank run with a task killed and
rerun), the OpenAI engine against loopback servers (key, concurrency, several servers, JSON formats,
images through the chat API) and progress lines in a batch log."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

import lrpipe.pipelines
from lrpipe.devices import gpus_for_rank
from lrpipe.engines.base import GenRequest, Sampling
from lrpipe.engines.openai_engine import OpenAIEngine
from lrpipe.errors import PipeError
from lrpipe.runner import resolve_rank
from lrpipe.shards import ShardDir

from .conftest import PIPE
from .fakes import MARK, TranslatorServer
from .test_magpie import FAST, _all_ids, _run_cli

SBATCH = Path(lrpipe.pipelines.__file__).parent / "slurm" / "generate.sbatch"
LAUNCH_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "SLURM_LOCALID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID",
               "SLURM_STEPID", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
               "SLURM_JOB_ID", "PIPE_RANK", "PIPE_WORLD_SIZE", "PIPE_REPLICA", "CUDA_VISIBLE_DEVICES")


@pytest.fixture
def clean_env(monkeypatch):
    for v in LAUNCH_VARS:
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def _batch_env(env: dict[str, str]) -> dict[str, str]:
    """The test process's environment without any launcher's variables (pytest may itself run in a job)."""
    return {k: v for k, v in env.items() if k not in LAUNCH_VARS}


# ------------------------------------------------------------------------------------------ devices
def test_each_local_rank_gets_its_own_block_of_gpus(clean_env):
    node = [str(i) for i in range(8)]
    assert [gpus_for_rank(1, r, node) for r in (0, 7)] == [["0"], ["7"]]  # 8B: 8 replicas
    assert [gpus_for_rank(4, r, node) for r in (0, 1)] == [node[:4], node[4:]]  # 70B: tp 4 x 2 replicas
    assert gpus_for_rank(2, 1, ["4", "5", "6", "7"]) == ["6", "7"]  # a node that shows GPUs 4-7 only
    assert gpus_for_rank(4, 3, ["8", "9", "10", "11"]) == ["8", "9", "10", "11"]  # srun --gpus-per-task: as is
    assert gpus_for_rank(1, None, node) is None and gpus_for_rank(1, 0, []) is None  # no launcher, no GPUs
    with pytest.raises(PipeError, match="only 8 are visible"):
        gpus_for_rank(4, 2, node)


@pytest.mark.parametrize("launcher,env,tp,want", [
    ("torchrun --nproc_per_node 8", {"LOCAL_RANK": "3", "RANK": "3", "WORLD_SIZE": "8"}, 1, "3"),
    ("torchrun --nproc_per_node 2, tp 4", {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2"}, 4, "4,5,6,7"),
    ("srun --ntasks-per-node 4, tp 2", {"SLURM_LOCALID": "2", "SLURM_PROCID": "6", "SLURM_NTASKS": "8",
                                        "SLURM_STEP_ID": "0"}, 2, "4,5"),
    ("srun --gpus-per-task 2", {"SLURM_LOCALID": "2", "SLURM_PROCID": "2", "SLURM_NTASKS": "4",
                                "SLURM_STEP_ID": "0", "CUDA_VISIBLE_DEVICES": "4,5"}, 2, "4,5"),
    ("the batch script itself (not a task)", {"SLURM_LOCALID": "0", "SLURM_PROCID": "0"}, 1,
     "0,1,2,3,4,5,6,7"),
])
def test_the_engine_starts_on_the_ranks_gpus(clean_env, launcher, env, tp, want):
    """What the engine sees when ``pipe run magpie`` starts under each launcher on an 8-GPU node."""
    from typer.testing import CliRunner

    import lrpipe.engines
    from lrpipe.cli import app

    clean_env.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    for k, v in env.items():
        clean_env.setenv(k, v)
    seen = {}

    def make_engine(kind, path, **kw):
        seen.update(devices=os.environ.get("CUDA_VISIBLE_DEVICES"), kind=kind, tp=kw["tensor_parallel_size"])
        raise PipeError("engine recorded")

    clean_env.setattr(lrpipe.engines, "make_engine", make_engine)
    r = CliRunner().invoke(app, ["run", "magpie", "--engine", "vllm", "--tp", str(tp), "--n", "4", "--out", "/nonexistent/x"])
    assert "engine recorded" in r.output, (launcher, r.output)
    assert seen == {"devices": want, "kind": "vllm", "tp": tp}, launcher


def test_ranks_compose_across_launchers(clean_env):
    assert resolve_rank(None, None) == (0, 1)
    clean_env.setenv("RANK", "3")
    clean_env.setenv("WORLD_SIZE", "8")
    assert resolve_rank(None, None) == (3, 8)  # torchrun
    clean_env.setenv("SLURM_ARRAY_TASK_ID", "12")
    clean_env.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    clean_env.setenv("SLURM_ARRAY_TASK_MIN", "10")
    assert resolve_rank(None, None) == (2 * 8 + 3, 32)  # torchrun inside array task 2 of 4
    assert resolve_rank(5, 6) == (5, 6)  # explicit flags (the sbatch template passes them) win
    clean_env.setenv("PIPE_RANK", "7")
    clean_env.setenv("PIPE_WORLD_SIZE", "64")
    assert resolve_rank(5, 6) == (7, 64)  # a --dp replica: its parent resolved everything
    for v in ("RANK", "WORLD_SIZE", "PIPE_RANK", "PIPE_WORLD_SIZE"):
        clean_env.delenv(v)
    clean_env.setenv("SLURM_NTASKS", "8")
    clean_env.setenv("SLURM_PROCID", "5")
    clean_env.setenv("SLURM_STEP_ID", "0")
    assert resolve_rank(None, None) == (2 * 8 + 5, 32)  # srun tasks inside array task 2


# ------------------------------------------------------------------------------------------ sbatch
SRUN_SHIM = """#!/bin/bash
# srun as Slurm runs a step: --ntasks copies of the command, each with its task's variables
echo "srun $*" >> "$SRUN_LOG"
n=1
while [ $# -gt 0 ]; do
  case "$1" in
    --ntasks=*) n=${1#--ntasks=} ;;
    --*) ;;
    *) break ;;
  esac
  shift
done
pids=()
for i in $(seq 0 $((n - 1))); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS=$n SLURM_STEP_ID=0 "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


@pytest.fixture
def srun_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(SRUN_SHIM)
    (bin_dir / "srun").chmod(0o755)
    return bin_dir


def _sbatch(srun_path, env, args, **extra):
    e = dict(_batch_env(env), PATH=f"{srun_path}:{env['PATH']}", SRUN_LOG=str(srun_path / "srun.log"), **extra)
    return subprocess.run(["bash", str(SBATCH), *args], capture_output=True, text=True, env=e, timeout=900)


def test_generate_sbatch_dry_run_launches_each_ranks_command(tmp_path, srun_path, env):
    out = str(tmp_path / "shared")
    # task 3 of a 4-task array on 8-GPU nodes, a 70B-style replica of TP 2: ranks 12..15 of 16
    want = [f"pipe run magpie --n 1000 --temps 0.8:1.2 --rank {k} --world-size 16 "
            f"--tensor-parallel-size 2 --pipeline-parallel-size 1 --out {out}" for k in range(12, 16)]
    # through srun (the shim), each rank's command echoed instead of run
    r = _sbatch(srun_path, env, ["run", "magpie", "--n", "1000", "--temps", "0.8:1.2"], OUT=out, TP="2",
                PIPE="echo pipe", SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_COUNT="4", SLURM_ARRAY_TASK_MIN="0")
    assert r.returncode == 0, r.stderr
    assert sorted(" ".join(x.split()) for x in r.stdout.splitlines() if x.startswith("pipe run")) == want
    srun = (srun_path / "srun.log").read_text()
    assert "--ntasks=4" in srun and "--gpus-per-task=2" in srun and "--kill-on-bad-exit=0" in srun
    # DRY_RUN=1 prints the same commands outside an allocation: no srun on the PATH
    e = dict(_batch_env(env), OUT=out, TP="2", DRY_RUN="1", SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_COUNT="4",
             SLURM_ARRAY_TASK_MIN="0")
    r = subprocess.run(["bash", str(SBATCH), "run", "magpie", "--n", "1000", "--temps", "0.8:1.2"],
                       capture_output=True, text=True, env=e, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(" ".join(x.split()) for x in r.stdout.splitlines() if x.startswith("pipe run")) == want
    # a command without an engine gets no parallel sizes
    r = subprocess.run(["bash", str(SBATCH), "pack", "--input", "x"], capture_output=True, text=True, timeout=60,
                       env=dict(e, ENGINE="0"))
    assert r.returncode == 0 and "--tensor-parallel-size" not in r.stdout and "pipe pack --input x --rank 12" in r.stdout
    # the rerun of a dead task: `sbatch --array=5` with the original array's size
    r = _sbatch(srun_path, env, ["translate", "magpie"], OUT=out, TP="4", DRY_RUN="1", ARRAY_SIZE="16",
                ARRAY_MIN="0", SLURM_ARRAY_TASK_ID="5", SLURM_ARRAY_TASK_COUNT="1", SLURM_ARRAY_TASK_MIN="5")
    ranks = sorted(int(x.split("--rank ")[1].split()[0]) for x in r.stdout.splitlines()
                   if x.startswith("pipe translate"))
    assert ranks == [10, 11] and "--world-size 32" in r.stdout
    # a task index outside the array is refused
    r = _sbatch(srun_path, env, ["translate", "magpie"], OUT=out, DRY_RUN="1", ARRAY_SIZE="4",
                SLURM_ARRAY_TASK_ID="5", SLURM_ARRAY_TASK_COUNT="1", SLURM_ARRAY_TASK_MIN="0")
    assert r.returncode == 2 and "outside 0..3" in r.stderr


@pytest.mark.slow
def test_three_array_tasks_one_killed_and_rerun_lose_and_duplicate_nothing(tmp_path, srun_path, env):
    """A Slurm-like run: 3 array tasks of the shipped sbatch (one replica each, CPU) into one --out;
    task 1 is killed after its first unit and rerun as `sbatch --array=1` would; the output equals a
    single-rank run's ids: 0 lost, 0 duplicated."""
    args = ["run", "magpie", "--n", "30", "--temps", "0.8:1.2:2", "--chunk-size", "4"] + FAST
    ref = _run_cli(args + ["--out", str(tmp_path / "ref")], env=env, timeout=900)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "shared"
    common = {"OUT": str(out), "GPUS_PER_NODE": "1", "PIPE": " ".join(PIPE), "SLURM_ARRAY_TASK_COUNT": "3",
              "SLURM_ARRAY_TASK_MIN": "0"}

    def task(a, **extra):
        e = dict(_batch_env(env), PATH=f"{srun_path}:{env['PATH']}", SRUN_LOG=str(srun_path / "srun.log"),
                 SLURM_ARRAY_TASK_ID=str(a), **{**common, **extra})
        with open(tmp_path / f"task{a}.log", "a") as log:
            p = subprocess.Popen(["bash", str(SBATCH), *args], env=e, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        started.append(p)
        return p

    started: list[subprocess.Popen] = []
    try:
        _three_tasks(tmp_path, out, task)
    finally:
        for p in started:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    for step in ("sample", "respond", "filtered"):
        a, b = ShardDir.open(tmp_path / "ref" / step), ShardDir.open(out / step)
        ids_a, ids_b = _all_ids(a), _all_ids(b)
        assert len(ids_b) == len(set(ids_b)), f"duplicated ids in {step}"
        assert sorted(ids_a) == sorted(ids_b), f"lost or extra ids in {step}"
        assert b.manifest()["complete"] and b.manifest()["totals"]["balanced"]
    log1 = (tmp_path / "task1.log").read_text()
    assert log1.count("ranks 1..1 of 3") == 2 and "a rerun of one task of a 3-task array" in log1
    recs = [json.loads(p.read_text()) for p in (out / "sample" / "units").glob("*.json")]
    assert all(r["rank"] == r["index"] % 3 for r in recs)  # each unit written by its own rank


def _three_tasks(tmp_path, out, task):
    procs = {a: task(a) for a in range(3)}
    units = out / "sample" / "units"
    deadline = time.time() + 600
    while time.time() < deadline and not (units / "part-00001.json").exists():
        assert procs[1].poll() is None, (tmp_path / "task1.log").read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(procs[1].pid, signal.SIGKILL)  # node failure: the whole task, srun and pipe
    procs[1].wait()
    done_by_1 = sorted(p.name for p in units.glob("part-*.json") if int(p.stem.split("-")[1]) % 3 == 1)
    assert done_by_1 and len(done_by_1) < 4, "task 1 should die with units left"
    time.sleep(2)
    assert procs[0].poll() is None and procs[2].poll() is None  # the others wait for task 1's share
    # the rerun: `sbatch --array=1 ...`, the same command (a one-task array of its own: the layout of the
    # original array comes from OUT/.pipe-array)
    rerun = task(1, SLURM_ARRAY_TASK_COUNT="1", SLURM_ARRAY_TASK_MIN="1")
    codes = {a: p.wait(timeout=900) for a, p in ((0, procs[0]), (2, procs[2]), (1, rerun))}
    assert codes == {0: 0, 1: 0, 2: 0}, {a: (tmp_path / f"task{a}.log").read_text()[-2000:] for a in codes}


@pytest.mark.slow
def test_dp_replicas_split_the_units_and_log_progress(tmp_path, env):
    """``--dp 2``: two replica processes, ranks 0 and 1 of 2, one output; a batch log (stderr not a
    terminal) gets progress lines from each."""
    out = tmp_path / "dp"
    args = ["run", "magpie", "--n", "12", "--temps", "0.9,1.1", "--chunk-size", "3", "--dp", "2"]
    args += [a for a in FAST if a != "--no-progress"]
    r = _run_cli(args + ["--out", str(out)], env=dict(_batch_env(env), PIPE_LOG_EVERY="0"), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(p.read_text()) for p in (out / "sample" / "units").glob("*.json")]
    assert len(recs) >= 4 and all(rec["rank"] == rec["index"] % 2 for rec in recs)  # 2 replicas, 2 ranks
    sd = ShardDir.open(out / "filtered")
    assert sd.manifest()["complete"] and sd.manifest()["totals"]["balanced"]
    lines = [x for x in r.stderr.splitlines() if "rows/s" in x]
    assert any("ETA" in x for x in lines) and any("done in" in x for x in lines)
    assert any("out tok/s" in x for x in lines)
    # --overwrite would let each replica clear the others' output
    bad = _run_cli(args + ["--out", str(out), "--overwrite"], env=env, timeout=120)
    assert bad.returncode != 0 and "--overwrite with --dp" in bad.stderr


# ------------------------------------------------------------------------------------------ openai
def _req(i: int, schema: dict | None = None) -> GenRequest:
    item = json.dumps({"question": f"What is shown in picture {i}?"})
    return GenRequest(key=i, prompt=f"Translate into Basque.\n{item}",
                      sampling=Sampling(temperature=0.0, max_tokens=32, seed=i, json_schema=schema))


def test_openai_key_concurrency_and_several_servers(tokenizer, model_path):
    with TranslatorServer(tokenizer, api_key="sk-test", delay=0.05) as a, \
            TranslatorServer(tokenizer, api_key="sk-test", delay=0.05) as b:
        eng = OpenAIEngine(model_path, base_url=[a.url, b.url], api_key="sk-test", max_concurrency=3,
                           served_model="judge-70b", json_format="vllm")
        res = list(eng.generate(_req(i) for i in range(40)))
        assert len(res) == 40 and all(r.error is None for r in res), res[0].error
        assert all(json.loads(r.text)["question"] == MARK + f"What is shown in picture {r.key}?" for r in res)
        assert a.requests + b.requests == 40 and min(a.requests, b.requests) >= 10  # both servers used
        assert 1 <= a.max_inflight <= 3 and 1 <= b.max_inflight <= 3  # never more than the limit per server
        assert max(a.max_inflight, b.max_inflight) == 3  # and the limit is used
        assert {body["model"] for body in a.bodies + b.bodies} == {"judge-70b"}
        # without the key the server says 401: the request fails with that message, not silently
        no_key = OpenAIEngine(model_path, base_url=a.url, api_key="", max_concurrency=2, json_format="vllm")
        bad = list(no_key.generate([_req(0)]))
        assert bad[0].finish_reason == "error" and "HTTP 401" in bad[0].error


@pytest.mark.parametrize("owned_by,field", [("vllm", "structured_outputs"), ("sglang", "response_format"),
                                            (None, "structured_outputs")])
def test_openai_json_schema_in_the_servers_own_field(tokenizer, model_path, owned_by, field):
    schema = {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]}
    with TranslatorServer(tokenizer, owned_by=owned_by) as srv:
        eng = OpenAIEngine(model_path, base_url=srv.url, max_concurrency=2)
        assert [r.error for r in eng.generate([_req(1, schema)])] == [None]
        body = srv.bodies[0]
        assert field in body and ({"structured_outputs", "response_format"} - {field}).isdisjoint(body)
        if field == "response_format":
            assert body[field] == {"type": "json_schema",
                                   "json_schema": {"name": "output", "schema": schema, "strict": True}}
        else:
            assert body[field] == {"json": schema}


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 6), rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_pipe_judge_with_images_behind_an_openai_chat_api(tmp_path, tokenizer, env):
    """The multimodal study's GPT judge, as a user runs it: `pipe judge --image-field image --engine
    openai --openai-api chat` against a hosted-style server (key, no vLLM, a model name no tokenizer
    has); each request carries the question's image as a data URL and the verdicts become battles."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = {f"q{i}": _png((40 * i, 100, 200)) for i in range(3)}
    pq.write_table(pa.Table.from_pylist([{"id": k, "question": f"Zer dago {k} irudian?",
                                          "image": {"bytes": v, "path": None}} for k, v in images.items()]),
                   tmp_path / "questions.parquet")
    answers = []
    for m, text in (("good", "Mendi bat eta ibai bat."), ("bad", "A mountain.")):
        p = tmp_path / f"{m}.jsonl"
        p.write_text("".join(json.dumps({"id": k, "answer": text, "model": m}) + "\n" for k in images))
        answers.append(p)

    def verdict(body):
        text = " ".join(c["text"] for m in body["messages"] if isinstance(m["content"], list)
                        for c in m["content"] if c["type"] == "text")
        text += " ".join(m["content"] for m in body["messages"] if isinstance(m["content"], str))
        pick = "A" if text.split("[Answer A]")[1].split("[Answer B]")[0].strip().startswith("Mendi") else "B"
        return json.dumps({"relevance_language": pick, "quality": pick, "language_proficiency": pick,
                           "overall": pick})

    with TranslatorServer(tokenizer, api_key="sk-judge", owned_by="openai", chat_reply=verdict) as srv:
        r = _run_cli(["judge", "--questions", str(tmp_path / "questions.parquet"), "--answers", str(answers[0]),
                      "--answers", str(answers[1]), "--out", str(tmp_path / "battles"), "--language", "eu",
                      "--image-field", "image", "--engine", "openai", "--openai-api", "chat",
                      "--base-url", srv.url, "--model", "gpt-4o-judge", "--max-concurrency", "4",
                      "--no-progress"], env=dict(env, OPENAI_API_KEY="sk-judge"), timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert srv.requests == 3 * 2 and srv.max_inflight <= 4  # questions x both orders
        for body in srv.bodies:
            assert body["model"] == "gpt-4o-judge"
            parts = [c for m in body["messages"] if isinstance(m["content"], list) for c in m["content"]]
            urls = [c["image_url"]["url"] for c in parts if c["type"] == "image_url"]
            assert len(urls) == 1 and urls[0].startswith("data:image/png;base64,")
        sent = {c["image_url"]["url"] for b in srv.bodies for m in b["messages"] if isinstance(m["content"], list)
                for c in m["content"] if c["type"] == "image_url"}
        assert {base64.b64decode(u.split(",", 1)[1]) for u in sent} == set(images.values())  # bytes as stored
    battles = ShardDir.open(tmp_path / "battles").read_all().to_pylist()
    assert len(battles) == 3 * 4  # questions x (criteria + overall), one pair
    assert all(b["winner"] == ("model_a" if b["model_a"] == "good" else "model_b") for b in battles)
    assert ShardDir.open(tmp_path / "battles").manifest()["totals"]["rows_rejected"] == 0


def test_cli_help_names_every_cluster_option(env):
    r = subprocess.run(PIPE + ["run", "magpie", "--help"], capture_output=True, text=True, env=dict(env, COLUMNS="300"),
                       timeout=120)
    for opt in ("--dp", "--pp", "--base-url", "--api-key", "--max-concurrency", "--served-model-name",
                "--openai-api", "--json-format"):
        assert opt in r.stdout, opt
