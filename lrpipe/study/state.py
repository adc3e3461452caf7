"""Where each step of a study stands: complete, to run, or changed since its output was written.

A step's **configuration** is its command line (output paths relative to the study folder, inline
files by their content) and its launcher, hashed together with the configurations of the steps it
reads, so a change anywhere upstream reaches every step below it. The hash is kept in
``<out>/.study/steps/<step>.json`` when the step starts and when it ends; completeness itself is read
from the output (:func:`lrpipe.study.commands.complete`), never from this record.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrpipe.study.commands import StudyPaths, argv, complete
from lrpipe.study.spec import Step


@dataclass
class StepState:
    step: Step
    argv: list[str]
    config: dict[str, Any]
    hash: str
    status: str  # complete | todo | changed
    changes: list[str]


def record_path(out: Path, step: Step) -> Path:
    return out / ".study" / "steps" / f"{step.name.replace('/', '__')}.json"


def read_record(out: Path, step: Step) -> dict[str, Any] | None:
    p = record_path(out, step)
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_record(out: Path, state: StepState, status: str) -> None:
    p = record_path(out, state.step)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps({"step": state.step.name, "status": status, "hash": state.hash,
                               "config": state.config, "time": time.time()}, indent=1) + "\n")
    tmp.replace(p)


def _portable(words: list[str], ctx: StudyPaths) -> list[str]:
    """Command-line words with the study's folders as ``$OUT``/``$STUDY`` and inline files as their
    content's hash, so a configuration compares across machines and folder moves."""
    out, home = str(ctx.out), str(ctx.study_file.parent.resolve())
    files = str(ctx.out / ".study" / "files")
    res = []
    for w in words:
        if w.startswith(files):
            w = "file:" + hashlib.sha256(Path(w).read_bytes()).hexdigest()[:16]
        res.append(w.replace(out, "$OUT").replace(home, "$STUDY"))
    return res


def states(steps: list[Step], ctx: StudyPaths) -> dict[str, StepState]:
    """Every step's state, in dependency order (``steps`` is that order)."""
    out: dict[str, StepState] = {}
    for s in steps:
        words = argv(s, ctx)
        config = {"argv": _portable(words, ctx), "launcher": s.launcher, "nproc": s.nproc,
                  "upstream": {d: out[d].hash for d in s.deps}}
        h = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        rec = read_record(ctx.out, s)
        changes: list[str] = []
        if rec is not None and rec.get("hash") != h:
            changes = describe_change(rec.get("config") or {}, config)
        if changes and (ctx.out / s.name).exists():
            status = "changed"
        elif complete(s, ctx.out):  # with no record (an older run, a copy): its own manifest vouches for it
            status = "complete"
        else:
            status = "todo"
        out[s.name] = StepState(s, words, config, h, status, changes)
    return out


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two configurations, as short lines (``--n: 40 -> 60``)."""
    def options(words: list[str]) -> dict[str, list[str]]:
        got: dict[str, list[str]] = {}
        key = "(args)"
        for w in words:
            if w.startswith("--"):
                key = w
                got.setdefault(key, [])
            else:
                got.setdefault(key, []).append(w)
        return got

    a, b = options(old.get("argv") or []), options(new.get("argv") or [])
    lines = [f"{k}: {' '.join(a.get(k, ['(absent)'])) or '(flag)'} -> {' '.join(b.get(k, ['(absent)'])) or '(flag)'}"
             for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    for k in ("launcher", "nproc"):
        if old.get(k) != new.get(k):
            lines.append(f"{k}: {old.get(k)} -> {new.get(k)}")
    up_old, up_new = old.get("upstream") or {}, new.get("upstream") or {}
    lines += [f"upstream {d} changed" for d in sorted(up_old.keys() | up_new.keys()) if up_old.get(d) != up_new.get(d)]
    return lines or ["its configuration record differs"]
