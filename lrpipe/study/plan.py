"""``pipe study plan``: the expanded steps before anything runs — for each its command, the steps it
reads, the rows and tokens it is expected to handle, the GPU hours it should cost, and whether its
output is already complete. The dry-run cost estimate of a whole study.

Rows and tokens come from the step's own options where they say it (``run magpie --n``, a translation
recipe's ``--sample``, ``pipe mix`` rows, a training's epochs or steps), else from the steps it reads,
else from its ``expect``. GPU hours are tokens over the study's throughput table (tokens per second per
GPU for generation, training and evaluation), or over what the study's own finished training runs
measured (``--measured``); a step's ``expect.gpu_hours`` wins over both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lrpipe.study.commands import KIND, StudyPaths, measured_train_throughput, rows_of
from lrpipe.study.spec import Step, Study
from lrpipe.study.state import StepState


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _opt(step: Step, *names: str) -> Any:
    for n in names:
        for k in (n, n.replace("-", "_")):
            if k in step.options:
                return step.options[k]
    return None


def estimate(steps: list[Step], study: Study, states: dict[str, StepState], ctx: StudyPaths,
             measured: Path | None = None) -> list[dict[str, Any]]:
    """One row per step: rows, tokens, GPU hours (None: unknown), status."""
    tp = study.throughput.model_copy()
    if measured is not None:
        got = measured_train_throughput(measured, steps)
        if got:
            tp.train = got
    est: dict[str, dict[str, Any]] = {}
    for s in steps:
        # what the step reads as data: its input option's steps, else every step it reads
        data_refs = _refs_of(s, ("input", "data", "answers", "instructions-tgt"))
        data_refs = s.deps if data_refs is None else data_refs
        up = [est[d] for d in s.deps if d in est and d in data_refs]
        up_rows = sum(u["rows"] or 0 for u in up) or None
        up_tokens = sum(u["tokens"] or 0 for u in up) or None
        rows = tokens = None
        run = s.run
        if run == "run magpie":
            rows = _num(_opt(s, "n"))
            caps = (_num(_opt(s, "max-tokens")) or 1024) + (_num(_opt(s, "response-max-tokens")) or 4096)
            tokens = rows * caps / 2 if rows else None  # half the caps: a typical fill
        elif run in ("translate", "mt", "filter", "images"):
            sample = _num(_opt(s, "sample"))
            rows = sample if sample else up_rows
            tokens = (up_tokens * (1.3 if run == "translate" else 1.0)) if up_tokens else None
        elif run == "answer":
            models = _opt(s, "model")
            n_models = len(models) if isinstance(models, list) else 1
            rows = up_rows * n_models if up_rows else None
            tokens = rows * (_num(_opt(s, "max-tokens")) or 2048) / 2 if rows else None
        elif run == "judge":
            n = len(s.deps) or 2
            pairs = n * (n - 1) / 2
            base = (up_rows / n) if up_rows else None
            rows = base * pairs if base else None
            tokens = rows * 2 * 160 if rows else None
        elif run in ("mix", "pack", "mix grid"):
            rows, tokens = up_rows, up_tokens
            seq = _num(_opt(s, "seq-len"))
            if run == "pack" and tokens and seq:
                rows = tokens / seq
        elif run in ("train text", "train mllm"):
            epochs = _num(_opt(s, "epochs")) or _recipe_value(s, ctx, "epochs") or (
                4.0 if run == "train text" else 1.0)  # pipe train's defaults: Table 5, the two MLLM stages
            steps_ = _num(_opt(s, "max-steps"))
            tps = _num(_opt(s, "tokens-per-step"))
            if steps_ and tps:
                tokens = steps_ * tps
            elif up_tokens:
                tokens = up_tokens * epochs
            rows = up_rows
            opt_steps = _optimizer_steps(s, ctx, run, rows, tokens, epochs, steps_)
        if s.spec.expect is not None:
            rows = s.spec.expect.rows if s.spec.expect.rows is not None else rows
            tokens = s.spec.expect.tokens if s.spec.expect.tokens is not None else tokens
            if run == "answer" and rows and s.spec.expect.tokens is None:
                tokens = rows * (_num(_opt(s, "max-tokens")) or 2048) / 2
        kind = KIND.get(run)
        hours = None
        if s.spec.expect is not None and s.spec.expect.gpu_hours is not None:
            hours = s.spec.expect.gpu_hours
        elif kind and tokens:
            hours = tokens / getattr(tp, kind) / 3600
        if run not in ("train text", "train mllm"):
            opt_steps = None
        have = rows_of(s, ctx.out) if states[s.name].status == "complete" else None
        est[s.name] = {"step": s.name, "run": run, "reads": s.deps, "rows": have if have is not None else rows,
                       "tokens": tokens, "gpu_hours": hours, "kind": kind or "cpu", "status": states[s.name].status,
                       "cell": s.cell, "axes": s.axes, "note": s.spec.note, "changes": states[s.name].changes,
                       "optimizer_steps": opt_steps}
    return [est[s.name] for s in steps]


def _refs_of(step: Step, options: tuple[str, ...]) -> list[str] | None:
    """The steps the named options of ``step`` read (their ``@`` references, cell-local first); None when
    the step has none of those options, [] when they read sources only."""
    names, given = set(), False
    for o in options:
        v = _opt(step, o)
        given = given or v is not None
        for x in v if isinstance(v, list) else [v]:
            if isinstance(x, str) and x.startswith("@"):
                ref = x[1:]
                names.add(ref.split("/")[1] if ref.startswith("*/") else ref.split("/")[0])
                if not ref.startswith("*/"):
                    names.add(ref)
    if not given:
        return None
    return [d for d in step.deps if d.split("/")[-1] in names or d in names or d.split("/")[0] in names]


def _optimizer_steps(step: Step, ctx: StudyPaths, run: str, rows: float | None, tokens: float | None,
                     epochs: float, max_steps: float | None) -> float | None:
    """Optimizer steps of a training the way ``pipe train`` counts them: ``--max-steps`` when given, else
    rows x epochs / global batch where the batch is counted in rows (the MLLM stages), else tokens /
    tokens per step (Table 5's 2M)."""
    from lrpipe.training.config import MLLM_STAGES

    if max_steps:
        return max_steps
    stage = _num(_opt(step, "stage"))
    defaults = MLLM_STAGES.get(int(stage), {}) if run == "train mllm" and stage else {}
    batch = _num(_opt(step, "global-batch")) or _recipe_value(step, ctx, "global_batch") or defaults.get("global_batch")
    if batch and rows:
        return rows * epochs / batch
    per_step = (_num(_opt(step, "tokens-per-step")) or _recipe_value(step, ctx, "tokens_per_step")
                or (None if defaults else 2 * 1024 * 1024))
    return tokens / per_step if tokens and per_step else None


def _recipe_value(step: Step, ctx: StudyPaths, key: str) -> float | None:
    """A value of the training recipe a step names (``recipe: @text_8b``), read from the file."""
    ref = _opt(step, "recipe")
    if not isinstance(ref, str):
        return None
    try:
        import yaml

        path = ctx.resolve(ref[1:], step)[0] if ref.startswith("@") else ref
        return _num((yaml.safe_load(Path(path).read_text()) or {}).get(key))
    except (OSError, ValueError, AttributeError):
        return None


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.1f}{suffix}{unit}"
    return f"{v:.0f}{unit}" if v >= 10 or v == int(v) else f"{v:.2f}{unit}"


def plan_text(study: Study, rows: list[dict[str, Any]]) -> str:
    """The plan as text: every step, the training cells, the totals."""
    lines = [f"study {study.name}: {study.description}".rstrip(": "), ""]
    w = max(len(r["step"]) for r in rows) if rows else 10
    lines.append(f"{'step':{w}s}  {'command':12s}  {'rows':>7s}  {'tokens':>7s}  {'GPU h':>8s}  status    reads")
    for r in rows:
        hours = "-" if r["gpu_hours"] is None else f"{r['gpu_hours']:.2f}" if r["gpu_hours"] < 100 else f"{r['gpu_hours']:,.0f}"
        reads = ", ".join(r["reads"][:3]) + (f" +{len(r['reads']) - 3}" if len(r["reads"]) > 3 else "")
        lines.append(f"{r['step']:{w}s}  {r['run']:12s}  {_fmt(r['rows']):>7s}  {_fmt(r['tokens']):>7s}  {hours:>8s}"
                     f"  {r['status']:8s}  {reads}")
        if r["note"]:
            lines.append(f"{'':{w}s}  note: {r['note']}")
        if r["status"] == "changed":
            lines.append(f"{'':{w}s}  changed: {'; '.join(r['changes'][:3])}")
    train = [r for r in rows if r["kind"] == "train"]
    if train:
        datas = [", ".join(f"{k}={v}" for k, v in r["axes"].items()) or "-" for r in train]
        cw, dw = max(len(r["step"]) for r in train), max(len(d) for d in datas)
        lines += ["", "training cells:",
                  f"  {'cell':{cw}s}  {'data':{dw}s}  {'tokens':>8s}  {'steps':>8s}  {'GPU h':>9s}  status"]
        for r, data in zip(train, datas):
            hours = "-" if r["gpu_hours"] is None else f"{r['gpu_hours']:,.1f}"
            steps = "-" if r["optimizer_steps"] is None else f"{r['optimizer_steps']:,.0f}"
            lines.append(f"  {r['step']:{cw}s}  {data:{dw}s}  {_fmt(r['tokens']):>8s}  {steps:>8s}  {hours:>9s}"
                         f"  {r['status']}")
    total = sum(r["gpu_hours"] or 0 for r in rows)
    left = sum(r["gpu_hours"] or 0 for r in rows if r["status"] != "complete")
    done = sum(r["status"] == "complete" for r in rows)
    lines += ["", f"{len(rows)} steps ({len(train)} trainings), {done} complete; estimated {total:,.1f} GPU hours "
              f"in all, {left:,.1f} still to run (throughput: generate {study.throughput.generate:.0f}, train "
              f"{study.throughput.train:.0f}, eval {study.throughput.eval:.0f} tokens/s/GPU)"]
    for n in study.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines) + "\n"
