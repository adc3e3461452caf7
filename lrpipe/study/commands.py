"""What ``pipe study`` knows of each ``pipe`` command: its options (read from the command itself, so a
study file is checked against the CLI it runs), how a step becomes a command line, and when a step's
output is whole.

A step is **complete** when its output says so: every shard directory it wrote is complete (stages), the
exported model folder exists (training writes ``final/`` only at the end of a whole run), or the
command's result file exists (``results.json``, ``ratings.json``, ``report.md``). Nothing else is kept
that could go stale: a step killed at any point is run again with the same command line, and the stage,
training or evaluation resumes by itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lrpipe.errors import InputError
from lrpipe.study.spec import Step

#: commands whose result is one file in their output folder
RESULT_FILES = {"eval text": "results.json", "eval mm": "results.json", "arena": "ratings.json",
                "eval report": "report.md", "models init": "config.json"}
#: what a step's GPU time is spent on (``pipe study plan``): generation, training, evaluation, or none
KIND = {"run magpie": "generate", "translate": "generate", "answer": "generate", "judge": "generate",
        "filter": "generate", "mt": "generate", "train text": "train", "train mllm": "train",
        "eval text": "eval", "eval mm": "eval"}


def click_command(words: list[str]) -> Any:
    """The click command ``pipe <words>`` runs, or None."""
    import typer.main

    from lrpipe.cli import app

    cmd = typer.main.get_command(app)
    for w in words:
        sub = (getattr(cmd, "commands", None) or {}).get(w)
        if sub is None:
            return None
        cmd = sub
    default = getattr(cmd, "default_command", None)  # a group that runs one of its commands by default
    if getattr(cmd, "commands", None) and default:
        cmd = cmd.commands[default]
    return None if getattr(cmd, "commands", None) else cmd


def check_step(step: Step, where: str) -> None:
    """The step's command exists and takes every option the step gives (``--out`` is the study's)."""
    cmd = click_command(step.words)
    if cmd is None:
        raise InputError(f"run: 'pipe {step.run}' is not a pipe command", path=where)
    opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for key, value in step.options.items():
        flag = f"--{key.replace('_', '-')}"
        if key in ("out",):
            raise InputError("options.out: the study chooses every step's output folder", path=where)
        if value is False and f"--no-{key.replace('_', '-')}" in opts:
            continue
        if flag not in opts:
            close = sorted(o for o in opts if o.startswith("--") and key.replace("_", "-")[:4] in o)[:4]
            raise InputError(f"options.{key}: pipe {step.run} has no option {flag}"
                             + (f" (did you mean {', '.join(close)}?)" if close else ""), path=where)
    n_args = sum(1 for p in cmd.params if p.param_type_name == "argument")
    if step.args and n_args == 0:
        raise InputError(f"args: pipe {step.run} takes no positional arguments", path=where)


def output_dir(out: Path, step: Step) -> Path:
    return out / step.name


def result_path(out: Path, step: Step, rest: str = "") -> Path:
    """What ``@step[/rest]`` names: the step's output (its ``output`` sub-folder when it declares one)."""
    base = output_dir(out, step)
    if rest:
        return base / rest
    return base / step.output if step.output else base


def _value(value: Any, ctx: StudyPaths, step: Step, key: str) -> list[str]:
    """A study value as command-line words (a reference becomes a path; a list repeats)."""
    if value is None:
        return []
    if isinstance(value, list):
        return [w for v in value for w in _value(v, ctx, step, key)]
    if isinstance(value, dict):
        return [str(ctx.write_file(step, key, value))]
    if isinstance(value, str) and value.startswith("@"):
        return [str(p) for p in ctx.resolve(value[1:], step)]
    if isinstance(value, float) and value.is_integer():
        return [str(value)]
    return [str(value)]


class StudyPaths:
    """Turns references into paths for one study run: ``out`` (the study's output folder) and the
    study file's folder (its sources)."""

    def __init__(self, out: Path, study_file: Path, sources: dict[str, str], steps: list[Step]) -> None:
        self.out, self.study_file, self.sources = out, study_file, sources
        self.by_name = {s.name: s for s in steps}
        self.grid_steps: dict[str, list[str]] = {}
        for s in steps:
            if s.cell:
                self.grid_steps.setdefault(s.name.split("/", 1)[1], []).append(s.name)

    def source(self, name: str) -> str:
        v = self.sources[name]
        if "://" in v:
            return v
        p = Path(v)
        if not p.is_absolute() and (self.study_file.parent / p).exists():
            return str((self.study_file.parent / p).resolve())
        return v  # a Hub id (org/name) or a path that exists elsewhere

    def resolve(self, ref: str, step: Step) -> list[str]:
        if ref.startswith("*/"):
            head, _, rest = ref[2:].partition("/")
            return [str(result_path(self.out, self.by_name[n], rest)) for n in self.grid_steps[head]]
        parts = ref.split("/")
        for k in range(len(parts), 0, -1):
            head, rest = "/".join(parts[:k]), "/".join(parts[k:])
            name = f"{step.cell}/{head}" if step.cell and f"{step.cell}/{head}" in self.by_name else head
            if name in self.by_name:
                return [str(result_path(self.out, self.by_name[name], rest))]
        if parts[0] in self.sources:
            src = self.source(parts[0])
            return [src + ("/" + "/".join(parts[1:]) if len(parts) > 1 else "")]
        return [str(self.out / ref.rstrip("/"))]  # a group of steps: their common folder

    def write_file(self, step: Step, key: str, value: dict[str, Any]) -> Path:
        """An inline mapping (a mixture recipe) as a YAML file, its references resolved."""
        def walk(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: walk(x) for k, x in v.items()}
            if isinstance(v, list):
                return [walk(x) for x in v]
            if isinstance(v, str) and v.startswith("@"):
                got = self.resolve(v[1:], step)
                return got[0] if len(got) == 1 else got
            return v

        path = self.out / ".study" / "files" / f"{step.name.replace('/', '__')}.{key}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(walk(value), sort_keys=False, allow_unicode=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        return path


def argv(step: Step, ctx: StudyPaths, *, out_option: bool = True) -> list[str]:
    """``pipe`` arguments of the step: command words, positional arguments, options, ``--out``."""
    words = [*step.words]
    for a in step.args:
        words += _value(a, ctx, step, "arg")
    for key, value in step.options.items():
        flag = f"--{key.replace('_', '-')}"
        if value is True:
            words.append(flag)
        elif value is False:
            words.append(f"--no-{key.replace('_', '-')}")
        else:
            for x in _value(value, ctx, step, key):
                words += [flag, x]
    if out_option:
        words += ["--out", str(output_dir(ctx.out, step))]
    return words


# ------------------------------------------------------------------------------------------ completeness
def _shard_dirs(path: Path, depth: int = 2) -> list[Path]:
    from lrpipe.shards import ShardDir

    if ShardDir.is_shard_dir(path):
        return [path]
    if depth == 0 or not path.is_dir():
        return []
    return [d for sub in sorted(path.iterdir()) if sub.is_dir() and not sub.name.startswith(".")
            for d in _shard_dirs(sub, depth - 1)]


def complete(step: Step, out: Path) -> bool:
    """Whether the step's output is whole (see the module docstring)."""
    from lrpipe.shards import ShardDir

    d = output_dir(out, step)
    if not d.exists():
        return False
    if step.run in ("train text", "train mllm"):
        return (d / "final" / "config.json").exists()
    if step.run in RESULT_FILES:
        if not (d / RESULT_FILES[step.run]).exists():
            return False
        return True
    dirs = _shard_dirs(d)
    return bool(dirs) and all(ShardDir.open(x).manifest()["complete"] for x in dirs)


def rows_of(step: Step, out: Path) -> int | None:
    """Rows the step's result holds, where it is shard directories."""
    from lrpipe.shards import ShardDir

    dirs = _shard_dirs(result_path(out, step))
    if not dirs:
        return None
    return sum(ShardDir.open(x).manifest()["totals"]["rows_out"] for x in dirs)


def measured_train_throughput(out: Path, steps: list[Step]) -> float | None:
    """Mean tokens per second per GPU of the study's finished training steps (their ``log.jsonl``)."""
    vals = []
    for s in steps:
        log = output_dir(out, s) / "log.jsonl"
        if s.run.startswith("train") and log.exists():
            for line in log.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("tokens_per_s_per_gpu"):
                    vals.append(float(rec["tokens_per_s_per_gpu"]))
    return sum(vals) / len(vals) if vals else None
