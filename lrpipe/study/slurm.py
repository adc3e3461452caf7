"""``pipe study submit`` and ``pipe study status``: a study on a Slurm cluster, with Slurm ordering the
steps (``--dependency=afterok``); no scheduler of ours.

Each step that is not complete becomes the job the project already ships: a generation or data stage
the array job ``pipelines/slurm/generate.sbatch`` (one shared ``--out``, ranks over the array's nodes), a
training ``training/slurm/train-8b.sbatch`` (torchrun on ``slurm.nodes`` nodes, preemption-safe), anything
else ``pipelines/slurm/job.sbatch`` (one command on one node). A job depends (``afterok``) on the jobs of
the steps it reads that are not complete, and ``--kill-on-invalid-dep=yes`` cancels it when one of them
fails, so a failed step's dependents never start. Job ids, scripts and dependencies are recorded in
``<out>/.study/slurm.json``; a step whose recorded job is still pending or running is not submitted
again. ``--dry-run`` prints every job's script, environment, arguments and dependencies without Slurm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from lrpipe.errors import PipeError
from lrpipe.study.commands import StudyPaths, output_dir
from lrpipe.study.run import prepare
from lrpipe.study.spec import Study
from lrpipe.study.state import StepState, states

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "pipelines" / "slurm" / "generate.sbatch"
JOB = ROOT / "pipelines" / "slurm" / "job.sbatch"
TRAIN = ROOT / "training" / "slurm" / "train-8b.sbatch"
#: stages that take --rank/--world-size (an array job shares their output); ENGINE=0: no engine options
RANKED = {"run magpie": 1, "translate": 1, "filter": 1, "answer": 1, "judge": 1, "mt": 0, "pack": 0, "images": 0,
          "mix": 0}
#: Slurm states of a job that is still to end
LIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


def _strip(words: list[str], *flags: str) -> tuple[list[str], dict[str, str]]:
    """``words`` without ``flags`` and their values; the values removed."""
    out, got, skip = [], {}, False
    for i, w in enumerate(words):
        if skip:
            skip = False
            continue
        if w in flags and i + 1 < len(words):
            got[w] = words[i + 1]
            skip = True
            continue
        out.append(w)
    return out, got


def job_for(st: StepState, ctx: StudyPaths) -> dict[str, Any]:
    """The sbatch call of one step: script, environment, sbatch options and script arguments."""
    s, sl = st.step, st.step.spec.slurm
    name = f"{ctx.out.name}:{s.name}"
    base = ["--job-name", name[-120:], "--time", sl.time] + (["--partition", sl.partition] if sl.partition else [])
    if s.run in ("train text", "train mllm"):
        words, got = _strip(st.argv[2:], "--data", "--out")
        env = {"MODE": s.run.split()[1], "DATA": got.get("--data", ""), "RUN": str(output_dir(ctx.out, s)),
               "RECIPE": "", "GPUS_PER_NODE": str(sl.gpus_per_node)}
        return {"script": str(TRAIN), "env": env, "args": words,
                "sbatch": base + ["--nodes", str(sl.nodes), f"--gpus-per-node={sl.gpus_per_node}"]}
    if s.run in RANKED:
        words, got = _strip(st.argv, "--out")
        env = {"OUT": got["--out"], "TP": str(sl.tp), "GPUS_PER_NODE": str(sl.gpus_per_node),
               "ENGINE": str(RANKED[s.run])}
        if not RANKED[s.run]:
            env["REPLICAS"] = "1"
        array = [f"--array=0-{sl.array - 1}"] if sl.array > 1 else []
        return {"script": str(GENERATE), "env": env, "args": words, "sbatch": base + array}
    return {"script": str(JOB), "env": {}, "args": st.argv, "sbatch": base + [f"--gpus-per-node={sl.gpus_per_node}"]}


def _ledger(out: Path) -> dict[str, Any]:
    p = out / ".study" / "slurm.json"
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _save_ledger(out: Path, ledger: dict[str, Any]) -> None:
    p = out / ".study" / "slurm.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(ledger, indent=1) + "\n")
    tmp.replace(p)


def job_states(ids: list[str]) -> dict[str, str]:
    """Slurm's state of each job: squeue for jobs still queued or running, sacct for the ended ones;
    ``UNKNOWN`` where neither answers (no Slurm here)."""
    out: dict[str, str] = {}
    if not ids:
        return out
    if shutil.which("squeue"):
        r = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(ids)], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                out[parts[0].split("_")[0]] = parts[1]
    rest = [i for i in ids if i not in out]
    if rest and shutil.which("sacct"):
        r = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(rest)],
                           capture_output=True, text=True)
        for line in r.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 2:
                out.setdefault(parts[0].split("_")[0], parts[1].split()[0] if parts[1] else "UNKNOWN")
    return {i: out.get(i, "UNKNOWN") for i in ids}


def submit(study: Study, path: Path, out: Path, *, dry_run: bool = False, echo: Any = print) -> dict[str, Any]:
    """Submit every step that is not complete (module docstring)."""
    steps, ctx = prepare(study, path, out)
    st = states(steps, ctx)
    changed = [s.name for s in steps if st[s.name].status == "changed"]
    if changed:
        raise PipeError(f"step(s) changed since their output was written: {', '.join(changed[:6])}; run "
                        "pipe study run --rerun-changed on them first, or restore the study file")
    ledger = _ledger(ctx.out)
    live = job_states([str(v["job"]) for v in ledger.values() if v.get("job")]) if not dry_run else {}
    if not dry_run and not shutil.which("sbatch"):
        raise PipeError("sbatch not found: submit from a Slurm login node (pipe study submit --dry-run prints "
                        "the jobs)")
    jobs: dict[str, str] = {}
    submitted, skipped = [], []
    for s in steps:
        state = st[s.name]
        if state.status == "complete":
            skipped.append(s.name)
            continue
        prev = ledger.get(s.name)
        if prev and prev.get("hash") == state.hash and live.get(str(prev.get("job"))) in LIVE:
            jobs[s.name] = str(prev["job"])  # already queued or running: depend on it, do not submit again
            continue
        job = job_for(state, ctx)
        deps = [jobs[d] for d in s.deps if d in jobs]
        sb = ["--parsable", *job["sbatch"]]
        if deps:
            sb += [f"--dependency=afterok:{':'.join(deps)}", "--kill-on-invalid-dep=yes"]
        export = ",".join(["ALL", *(f"{k}={v}" for k, v in job["env"].items())])
        call = ["sbatch", *sb, f"--export={export}", job["script"], *job["args"]]
        if dry_run:
            jobs[s.name] = f"<{s.name}>"
            echo(f"# {s.name}: after {', '.join(d for d in s.deps if d in jobs) or 'nothing'}")
            echo(" ".join(call) + "\n")
            submitted.append(s.name)
            continue
        r = subprocess.run(call, capture_output=True, text=True, env=dict(os.environ))
        if r.returncode != 0:
            _save_ledger(ctx.out, ledger)
            raise PipeError(f"sbatch refused step {s.name}: {r.stderr.strip()[:300]}")
        job_id = r.stdout.strip().split(";")[0]
        jobs[s.name] = job_id
        ledger[s.name] = {"job": job_id, "hash": state.hash, "deps": [d for d in s.deps if d in jobs],
                          "script": job["script"], "env": job["env"], "args": job["args"], "submitted": time.time()}
        _save_ledger(ctx.out, ledger)
        submitted.append(s.name)
        echo(f"submitted {s.name}: job {job_id}" + (f" after {', '.join(deps)}" if deps else ""))
    echo(f"study {study.name}: {len(submitted)} job(s) {'to submit' if dry_run else 'submitted'}, "
         f"{len(skipped)} step(s) complete")
    return {"submitted": submitted, "complete": skipped, "jobs": jobs}


def status(study: Study, path: Path, out: Path) -> list[dict[str, Any]]:
    """Where each step stands: complete, changed, or its job's Slurm state, or not started."""
    steps, ctx = prepare(study, path, out)
    st = states(steps, ctx)
    ledger = _ledger(ctx.out)
    js = job_states([str(v["job"]) for v in ledger.values() if v.get("job")])
    rows = []
    for s in steps:
        rec = ledger.get(s.name) or {}
        state = st[s.name].status
        if state not in ("complete", "changed") and rec.get("job"):
            job_state = js.get(str(rec["job"]), "UNKNOWN")
            state = f"job {rec['job']} {job_state.lower()}"
        elif state == "todo":
            state = "not started"
        rows.append({"step": s.name, "status": state, "reads": s.deps})
    return rows
