"""pipe study: the study files (shipped and broken ones), plan, run, change detection, and submit/status
against sbatch/squeue/sacct shims. The miniatures themselves run in tests/test_study_minis.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from lrpipe.errors import InputError
from lrpipe.study import expand, list_studies, load_study

from .conftest import PIPE


def run(args: list[str], env: dict[str, str], ok: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(PIPE + args, capture_output=True, text=True, env=env, timeout=900, **kw)
    if ok:
        assert r.returncode == 0, f"pipe {' '.join(args)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r


def test_every_shipped_study_expands_and_names_real_options():
    from lrpipe.study.commands import check_step

    assert {"latxa-instruct", "basque-mllm", "mini-eu", "mini-mm-eu", "mini-gl"} <= set(list_studies())
    for name in list_studies():
        study, path = load_study(name)
        steps = expand(study, path)
        for s in steps:
            check_step(s, f"{path}: steps.{s.name}")  # every option is one the command has
        names = [s.name for s in steps]
        assert len(names) == len(set(names))
        pos = {n: i for i, n in enumerate(names)}
        assert all(pos[d] < pos[s.name] for s in steps for d in s.deps), "dependency order"


def test_plan_of_the_instruction_study_lists_every_training_cell(env):
    out = run(["study", "plan", "latxa-instruct"], env).stdout
    cells = [ln.split()[0] for ln in out.split("training cells:")[1].splitlines()[2:] if ln.startswith("  ")]
    # Table 3: 3 backbones x 7 data combinations minus its 4 gray cells = 17, and the 70B model
    assert len(cells) == 18 and "INS_EN_70B_C_EU_I_EN/train" in cells
    assert "INS_EN_C_EU_I_EN+EU/train" in cells and "BAS_EN_I_EN/train" not in cells and "INS_EN_I_EN/train" not in cells
    for ln in out.split("training cells:")[1].splitlines()[2:20]:
        assert "backbone=" in ln or "70B" in ln
        hours = float(ln.split()[-2].replace(",", ""))
        assert hours > 0, ln
    # the corpus-only cell costs what the study's Table 4 reports (1,730 GPU hours on A100s)
    row = next(ln for ln in out.splitlines() if ln.startswith("  INS_EN_C_EU/train"))
    assert 1600 < float(row.split()[-2].replace(",", "")) < 1900
    assert "GPU hours in all" in out


def test_plan_of_the_multimodal_study_lists_both_stages_of_every_cell(env):
    out = run(["study", "plan", "basque-mllm"], env).stdout
    cells = [ln.split()[0] for ln in out.split("training cells:")[1].splitlines()[2:] if ln.strip().startswith(("stage1",
                                                                                                                "latxa",
                                                                                                                "llama"))]
    assert {"stage1_latxa", "stage1_llama"} <= set(cells)
    stage2 = [c for c in cells if c.endswith("/train")]
    assert len(stage2) == 16  # 2 backbones x 4 ratios x with and without text rows
    assert "latxa_80_mm+text/train" in stage2 and "llama_0_mm/train" in stage2


# ------------------------------------------------------------------------------------------ errors
def _study(tmp_path: Path, doc: dict) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


BASE = {"name": "t", "target_lang": "eu", "sources": {"rows": "rows.jsonl"}}


@pytest.mark.parametrize("steps,message", [
    ([{"name": "a", "run": "filter", "options": {"input": "@rows", "nosuch": 1}}],
     r"steps\.a: options\.nosuch: pipe filter has no option --nosuch"),
    ([{"name": "a", "run": "filter", "options": {"input": "@missing"}}], r"steps\.a.*@missing names no step or source"),
    ([{"name": "a", "run": "filtr"}], r"steps\.a.*'pipe filtr' is not a pipe command"),
    ([{"name": "a", "run": "filter", "options": {"input": "@b"}}, {"name": "b", "run": "filter",
                                                                    "options": {"input": "@a"}}], r"cycle: a -> b -> a"),
    ([{"name": "a", "run": "filter", "options": {"input": "{nope}"}}], r"unknown variable \{nope\}"),
    ([{"name": "a", "run": "filter", "options": {"out": "x"}}], r"the study chooses every step's output folder"),
])
def test_a_bad_study_file_is_one_line_naming_file_and_key(tmp_path, env, steps, message):
    import re

    p = _study(tmp_path, {**BASE, "steps": steps})
    r = run(["study", "plan", str(p)], env, ok=False)
    assert r.returncode != 0
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and str(p) in err and re.search(message, err), err


def test_a_study_file_of_the_wrong_shape_lists_every_problem(tmp_path, env):
    p = _study(tmp_path, {"name": "t", "steps": [{"name": "a", "run": "filter", "launcher": "mpirun"}], "extra": 1})
    r = run(["study", "plan", str(p)], env, ok=False)
    lines = r.stderr.strip().splitlines()
    assert all(str(p) in ln for ln in lines) and len(lines) == 3  # target_lang, launcher, extra
    assert any("launcher" in ln for ln in lines) and any("extra" in ln for ln in lines)


# ------------------------------------------------------------------------------------------ run, changes
def _small_study(tmp_path: Path, n: int = 40) -> Path:
    rows = [{"id": f"r{i:03d}", "instruction": f"Question number {i}?" + (":" if i % 5 == 0 else ""),
             "response": f"Answer {i}."} for i in range(n)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return _study(tmp_path, {**BASE, "steps": [
        {"name": "clean", "run": "filter", "options": {"input": "@rows", "filters": "unfinished", "progress": False}},
        {"name": "dedup", "run": "filter", "options": {"input": "@clean", "filters": "dedup", "progress": False}},
        {"name": "pack", "run": "pack", "options": {"input": "@dedup", "tokenizer": "embedded", "seq-len": 256,
                                                    "progress": False}},
        {"name": "side", "run": "filter", "options": {"input": "@rows", "filters": "empty", "progress": False}}]})


def test_run_twice_then_a_changed_step_is_refused_or_rerun_with_its_dependents(tmp_path, env):
    from lrpipe.shards import ShardDir

    p = _small_study(tmp_path)
    out = tmp_path / "out"
    first = run(["study", "run", str(p), "--out", str(out)], env).stdout
    assert "4 of 4 steps to run" in first and first.count("done  ") == 4
    assert ShardDir.open(out / "clean").manifest()["totals"]["rows_out"] == 32  # 8 end with ':'
    assert ShardDir.open(out / "pack").manifest()["complete"]
    again = run(["study", "run", str(p), "--out", str(out)], env).stdout
    assert "all 4 steps complete" in again and "nothing to do" in again and "done  " not in again
    # the first step's filter changes: it and the two steps below it are refused, with what changed
    doc = yaml.safe_load(p.read_text())
    doc["steps"][0]["options"]["filters"] = "unfinished,empty"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = run(["study", "run", str(p), "--out", str(out)], env, ok=False)
    assert r.returncode != 0
    assert "3 step(s) changed" in r.stderr and "clean: --filters: unfinished -> unfinished,empty" in r.stderr
    assert "dedup: upstream clean changed" in r.stderr and "side" not in r.stderr
    plan = run(["study", "plan", str(p), "--out", str(out)], env).stdout
    assert "changed: --filters: unfinished -> unfinished,empty" in plan
    r = run(["study", "run", str(p), "--out", str(out), "--rerun-changed"], env).stdout
    assert r.count("rerun ") == 3 and "done  side" not in r
    assert ShardDir.open(out / "clean").header()["config"]["filters"][1]["name"] == "empty"
    assert "nothing to do" in run(["study", "run", str(p), "--out", str(out)], env).stdout


def test_only_and_until(tmp_path, env):
    p = _small_study(tmp_path)
    out = tmp_path / "out"
    r = run(["study", "run", str(p), "--out", str(out), "--only", "dedup"], env, ok=False)
    assert r.returncode != 0 and "--only dedup: it reads step clean, which is not complete" in r.stderr
    r = run(["study", "run", str(p), "--out", str(out), "--until", "dedup"], env).stdout
    assert "2 of 2 steps to run" in r and not (out / "pack").exists() and not (out / "side").exists()
    r = run(["study", "run", str(p), "--out", str(out), "--only", "side"], env).stdout
    assert "1 of 1 steps to run" in r and (out / "side").exists() and not (out / "pack").exists()


# ------------------------------------------------------------------------------------------ Slurm
SBATCH_SHIM = r"""#!/usr/bin/env python3
# sbatch as Slurm answers it: records the call, prints a job id (--parsable)
import json, os, sys
ledger = os.environ["SHIM_JOBS"]
jobs = json.load(open(ledger)) if os.path.exists(ledger) else []
job = {"id": str(1000 + len(jobs)), "argv": sys.argv[1:], "state": "PENDING"}
for a in sys.argv[1:]:
    if a.startswith("--dependency=afterok:"):
        job["after"] = a.split(":", 1)[1].split(":")
    if a == "--kill-on-invalid-dep=yes":
        job["kill_on_invalid_dep"] = True
    if a.startswith("--export="):
        job["export"] = a
jobs.append(job)
json.dump(jobs, open(ledger, "w"))
print(job["id"])
"""
SQUEUE_SHIM = r"""#!/usr/bin/env python3
import json, os, sys
jobs = json.load(open(os.environ["SHIM_JOBS"]))
want = sys.argv[sys.argv.index("-j") + 1].split(",")
for j in jobs:
    if j["id"] in want and j["state"] in ("PENDING", "RUNNING"):
        print(j["id"], j["state"])
"""
SACCT_SHIM = r"""#!/usr/bin/env python3
import json, os, sys
jobs = json.load(open(os.environ["SHIM_JOBS"]))
want = sys.argv[sys.argv.index("-j") + 1].split(",")
for j in jobs:
    if j["id"] in want and j["state"] not in ("PENDING", "RUNNING"):
        print(f"{j['id']}|{j['state']}")
"""


def schedule(ledger: Path, fail: set[str], name_of: dict[str, str]) -> dict[str, str]:
    """Slurm's part, as its documentation has it: a job starts once every afterok dependency completed;
    with --kill-on-invalid-dep a job whose dependency failed or was cancelled is cancelled, never started.
    Jobs of the steps in ``fail`` fail when they run."""
    jobs = json.loads(ledger.read_text())
    by_id = {j["id"]: j for j in jobs}
    changed = True
    while changed:
        changed = False
        for j in jobs:
            if j["state"] != "PENDING":
                continue
            deps = [by_id[d]["state"] for d in j.get("after", [])]
            if any(s in ("FAILED", "CANCELLED") for s in deps):
                assert j.get("kill_on_invalid_dep"), "a dependent of a failed job would wait forever"
                j["state"], changed = "CANCELLED", True
            elif all(s == "COMPLETED" for s in deps):
                j["state"], changed = ("FAILED" if name_of[j["id"]] in fail else "COMPLETED"), True
    ledger.write_text(json.dumps(jobs))
    return {name_of[j["id"]]: j["state"] for j in jobs}


def test_submit_orders_jobs_as_the_studys_graph_and_a_failure_stops_its_dependents(tmp_path, env):
    from lrpipe.study.run import prepare

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", SBATCH_SHIM), ("squeue", SQUEUE_SHIM), ("sacct", SACCT_SHIM)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    ledger = tmp_path / "jobs.json"
    e = dict(env, PATH=f"{bin_dir}:{env['PATH']}", SHIM_JOBS=str(ledger))
    out = tmp_path / "study"
    # one step complete before submission: it is not submitted, and nothing waits on it
    run(["study", "run", "mini-eu", "--out", str(out), "--only", "tiny_base"], e)
    dry = run(["study", "submit", "mini-eu", "--out", str(out), "--dry-run"], env).stdout
    assert "# magpie: after nothing" in dry and "generate.sbatch" in dry and "train-8b.sbatch" in dry
    assert "# tiny_base:" not in dry and "26 job(s) to submit, 1 step(s) complete" in dry
    assert not ledger.exists(), "a dry run submits nothing"

    r = run(["study", "submit", "mini-eu", "--out", str(out)], e).stdout
    assert "26 job(s) submitted, 1 step(s) complete" in r
    jobs = json.loads(ledger.read_text())
    book = json.loads((out / ".study" / "slurm.json").read_text())
    name_of = {v["job"]: k for k, v in book.items()}
    study, path = load_study("mini-eu")
    steps, _ = prepare(study, path, out)
    dag = {s.name: set(s.deps) - {"tiny_base"} for s in steps if s.name != "tiny_base"}
    graph = {name_of[j["id"]]: {name_of[d] for d in j.get("after", [])} for j in jobs}
    assert graph == dag, "the jobs' afterok graph is the study's graph, without the complete step"
    assert all(j.get("kill_on_invalid_dep") for j in jobs if j.get("after"))
    train = next(j for j in jobs if name_of[j["id"]] == "INS_EN_I_EU/train")
    assert "MODE=text" in train["export"] and "DATA=" in train["export"] and train["argv"][-1] != "--out"

    # submitting again while they are queued submits nothing twice
    again = run(["study", "submit", "mini-eu", "--out", str(out)], e).stdout
    assert "0 job(s) submitted" in again and len(json.loads(ledger.read_text())) == 26

    # Slurm runs them; the translation fails: nothing below it starts, the rest completes
    states = schedule(ledger, {"translate"}, name_of)
    below = {"mixes"} | {n for n in dag if "/" in n and n.split("/")[0] not in ("INS_EN", "BAS_EN")} | {
        "judge", "arena", "report"}
    assert {n for n, s in states.items() if s == "CANCELLED"} == below
    assert states["translate"] == "FAILED" and states["magpie"] == "COMPLETED"
    assert states["INS_EN/eval"] == "COMPLETED" and states["BAS_EN/eval"] == "COMPLETED"
    status = run(["study", "status", "mini-eu", "--out", str(out)], e).stdout
    lines = {ln.split()[0]: " ".join(ln.split()[1:]) for ln in status.splitlines()}
    assert lines["tiny_base"] == "complete" and lines["translate"].endswith("failed")
    assert lines["judge"].endswith("cancelled") and lines["magpie"].endswith("completed")


def test_submit_refuses_without_slurm_and_the_sbatch_scripts_dry_run_anywhere(tmp_path, env):
    e = dict(env, PATH="/usr/bin:/bin:" + str(Path(PIPE[0]).parent))
    r = run(["study", "submit", "mini-eu", "--out", str(tmp_path / "s")], e, ok=False)
    assert r.returncode != 0 and "sbatch not found" in r.stderr and "--dry-run" in r.stderr
    # the scripts a study submits print their commands outside an allocation
    root = Path(__file__).resolve().parents[1]
    for script, extra in ((root / "pipelines/slurm/generate.sbatch", {"OUT": str(tmp_path / "o")}),
                          (root / "pipelines/slurm/job.sbatch", {}),
                          (root / "training/slurm/train-8b.sbatch", {"DATA": "d", "RUN": "r"})):
        r = subprocess.run(["bash", str(script), "eval", "text"], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, DRY_RUN="1", **extra), cwd=tmp_path)
        assert r.returncode == 0 and "pipe" in r.stdout, (script, r.stderr)


def test_the_study_adds_no_state_that_can_go_stale(tmp_path, env):
    """Completeness is read from the outputs: a step whose output is removed is run again, whatever
    the records say; a complete output without a record is taken as it is."""
    import shutil

    p = _small_study(tmp_path, n=12)
    out = tmp_path / "out"
    run(["study", "run", str(p), "--out", str(out)], env)
    shutil.rmtree(out / "side")
    r = run(["study", "run", str(p), "--out", str(out)], env).stdout
    assert "1 of 4 steps to run" in r and "done  side" in r
    shutil.rmtree(out / ".study")
    assert "nothing to do" in run(["study", "run", str(p), "--out", str(out)], env).stdout


def test_inline_files_and_group_references(tmp_path):
    """A mapping given as an argument is written as a YAML file with its references resolved; a group
    name (bench) is the folder of its steps and depends on all of them."""
    from lrpipe.study.commands import StudyPaths, argv

    study, path = load_study("mini-mm-eu")
    steps = expand(study, path)
    ctx = StudyPaths(tmp_path, path, study.sources, steps)
    by = {s.name: s for s in steps}
    words = argv(by["latxa_80/mix"], ctx)
    recipe = yaml.safe_load(Path(words[1]).read_text())
    assert recipe["sources"][0]["parallel"] == {"en": str(Path(path).parent.resolve() / "data/pixmo-ama.parquet"),
                                                "eu": str(tmp_path / "pixmo_eu")}
    assert recipe["sources"][0]["target_share"] == "0.8" and recipe["sources"][1]["target_share"] == 0.8
    ev = by["latxa_80/eval"]
    assert {"bench/a-okvqa", "bench/vqav2", "latxa_80/train"} <= set(ev.deps)
    assert argv(ev, ctx)[argv(ev, ctx).index("--data") + 1] == str(tmp_path / "bench")
    with pytest.raises(InputError, match="two steps are named"):
        doc = yaml.safe_load(path.read_text())
        doc["steps"].append(dict(doc["steps"][0]))
        p = tmp_path / "dup.yaml"
        p.write_text(yaml.safe_dump(doc))
        s2, p2 = load_study(p)
        expand(s2, p2)


def test_the_readmes_own_study_example_is_a_valid_study(tmp_path, env):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("Your own study is a YAML file")[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    p = tmp_path / "my-study.yaml"
    p.write_text(block)
    out = run(["study", "plan", str(p)], env).stdout
    assert "I_GL/train" in out and "C_GL_I_EN+GL/pack" in out and "report" in out
