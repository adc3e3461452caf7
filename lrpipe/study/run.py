"""``pipe study run``: every step whose output is not complete, one after the other, in dependency order,
on this machine (training through torchrun on the local devices). No scheduler of its own: a step is a
``pipe`` command line run as a child process, and the stages it runs already resume after a crash.

* A finished study runs nothing and says so.
* After a kill -9 anywhere the same command finishes it: the step that was running is started again with
  the same command line and resumes (its committed units, its last checkpoint); nothing else is kept
  that could go stale (:mod:`lrpipe.study.state`). A child dies with the study (``PR_SET_PDEATHSIG``),
  so a second run never races an orphan of the first.
* A step whose configuration changed since its output was written is refused, naming the step and what
  changed, unless ``rerun_changed``: then its output and its dependents' outputs are removed and rerun.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lrpipe.errors import PipeError
from lrpipe.study.commands import StudyPaths, check_step, complete, output_dir
from lrpipe.study.spec import Step, Study, expand
from lrpipe.study.state import StepState, states, write_record


def prepare(study: Study, path: Path, out: Path) -> tuple[list[Step], StudyPaths]:
    """The study's steps, checked against the commands they run, and its paths under ``out``."""
    steps = expand(study, path)
    for s in steps:
        check_step(s, f"{path}: steps.{s.name}")
    out.mkdir(parents=True, exist_ok=True)
    pointer = out / ".study" / "study.json"  # which file made this folder: ``pipe report`` draws its DAG
    pointer.parent.mkdir(exist_ok=True)
    want = json.dumps({"name": study.name, "file": str(Path(path).resolve())}, indent=1) + "\n"
    if not pointer.exists() or pointer.read_text() != want:
        pointer.write_text(want)
    return steps, StudyPaths(out.resolve(), path, study.sources, steps)


def select(steps: list[Step], only: list[str] | None, until: list[str] | None) -> list[Step]:
    """``only``: these steps (a name, or a cell: all its steps); ``until``: these and every step they
    depend on. Both in dependency order."""
    names = [s.name for s in steps]

    def match(pattern: str) -> list[str]:
        got = [n for n in names if n == pattern or n.startswith(pattern.rstrip("/") + "/")]
        if not got:
            raise PipeError(f"no step '{pattern}' in the study (steps: {', '.join(names[:10])}"
                            f"{'...' if len(names) > 10 else ''})")
        return got

    if not only and not until:
        return steps
    chosen: set[str] = set()
    for p in only or []:
        chosen |= set(match(p))
    by_name = {s.name: s for s in steps}

    def closure(n: str) -> None:
        if n not in chosen:
            chosen.add(n)
            for d in by_name[n].deps:
                closure(d)

    for p in until or []:
        for n in match(p):
            chosen.discard(n)
            closure(n)
    return [s for s in steps if s.name in chosen]


def _nproc(step: Step) -> int:
    if step.nproc:
        return step.nproc
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except ImportError:  # pragma: no cover - torch is part of the install
        pass
    return 2  # CPU: two ranks over gloo, as the tests train


def command(step: Step, words: list[str]) -> list[str]:
    """The process a step starts."""
    if step.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                str(_nproc(step)), "-m", "lrpipe.cli", *words]
    return [sys.executable, "-m", "lrpipe.cli", *words]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_step(st: StepState, ctx: StudyPaths, echo: Any) -> None:
    log = ctx.out / ".study" / "logs" / f"{st.step.name.replace('/', '__')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    write_record(ctx.out, st, "started")
    cmd = command(st.step, st.argv)
    t0 = time.time()
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None).returncode
    if rc != 0:
        tail = log.read_text().splitlines()[-15:]
        raise PipeError(f"step {st.step.name} failed (exit {rc}); its log: {log}\n" + "\n".join(tail))
    if not complete(st.step, ctx.out):
        raise PipeError(f"step {st.step.name} exited 0 but its output is not complete ({output_dir(ctx.out, st.step)}"
                        f"; other ranks still running?); its log: {log}")
    write_record(ctx.out, st, "done")
    echo(f"done  {st.step.name}  ({time.time() - t0:.1f} s)")


def run_study(study: Study, path: Path, out: Path, *, only: list[str] | None = None,
              until: list[str] | None = None, rerun_changed: bool = False, echo: Any = print) -> dict[str, Any]:
    """Run what is not complete (module docstring); returns what ran and what was already there."""
    steps, ctx = prepare(study, path, out)
    chosen = select(steps, only, until)
    st = states(steps, ctx)
    changed = [s for s in chosen if st[s.name].status == "changed"]
    if changed and not rerun_changed:
        lines = [f"  {s.name}: " + "; ".join(st[s.name].changes[:4]) for s in changed[:8]]
        raise PipeError(f"{len(changed)} step(s) changed since their output was written (rerun them and their "
                        f"dependents with --rerun-changed, or restore the study file):\n" + "\n".join(lines))
    if only:
        inside = {s.name for s in chosen}
        for s in chosen:
            for d in s.deps:
                if d not in inside and st[d].status != "complete":
                    raise PipeError(f"--only {s.name}: it reads step {d}, which is not complete (run it first, "
                                    f"or --until {s.name})")
    todo = [s for s in chosen if st[s.name].status != "complete"]
    done = [s.name for s in chosen if st[s.name].status == "complete"]
    if not todo:
        echo(f"study {study.name}: all {len(chosen)} steps complete in {ctx.out}; nothing to do")
        return {"ran": [], "complete": done}
    echo(f"study {study.name}: {len(todo)} of {len(chosen)} steps to run ({len(done)} complete) in {ctx.out}")
    ran = []
    for s in todo:
        state = states(steps, ctx)[s.name]  # upstream outputs exist now: hashes of inline files are final
        if state.status == "changed" or (state.status == "todo" and st[s.name].status == "changed"):
            shutil.rmtree(output_dir(ctx.out, s), ignore_errors=True)
            echo(f"rerun {s.name}: " + "; ".join(state.changes[:3]))
        elif state.status == "complete":
            continue
        echo(f"start {s.name}: pipe {s.run}")
        run_step(state, ctx, echo)
        ran.append(s.name)
    return {"ran": ran, "complete": done}
