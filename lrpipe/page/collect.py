"""What ``pipe report`` finds under a path, read from what the stages already wrote.

Shard directories contribute their manifests and per-unit profiles (``lrpipe.profile``), never their
data, unless a unit predates profiles; training runs their ``log.jsonl``; evaluations their
``results.json``; an arena its ``ratings.json``; ``pipe eval report`` its figures; a study its
``.study`` records and its DAG. Each reader returns plain dicts the charts and the template use.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrpipe.errors import InputError
from lrpipe.profile import unit_profile
from lrpipe.shards import ShardDir, read_arrow

PRUNE = {"checkpoints", "tensorboard", "final", "wandb", "__pycache__", ".work", "data", "rejected", "units",
         "profile", "recipes"}
SAMPLES_SHOWN = 6


@dataclass
class Found:
    """Everything ``pipe report`` will show, by kind."""

    root: Path
    shard_dirs: list[Path] = field(default_factory=list)
    train_runs: list[Path] = field(default_factory=list)
    evals: list[Path] = field(default_factory=list)
    arenas: list[Path] = field(default_factory=list)
    analyses: list[Path] = field(default_factory=list)
    study: Path | None = None

    def empty(self) -> bool:
        return not (self.shard_dirs or self.train_runs or self.evals or self.arenas or self.analyses)


def discover(path: Path, max_depth: int = 5) -> Found:
    """Walk ``path`` once: a shard directory, a training run, an evaluation, an arena, an analysis, or
    a folder holding any of them (a chain's ``--out``, a study's ``--out``)."""
    if not path.exists():
        raise InputError("no such file or folder", path=str(path))
    found = Found(root=path)
    if (path / ".study").is_dir():
        found.study = path
    for dirpath, dirnames, filenames in os.walk(path):
        d = Path(dirpath)
        depth = len(d.relative_to(path).parts)
        names = set(filenames)
        if ShardDir.is_shard_dir(d):
            found.shard_dirs.append(d)
            dirnames[:] = []
            continue
        if "log.jsonl" in names and "config.json" in names:
            found.train_runs.append(d)
        if "results.json" in names and _json_has(d / "results.json", ("rows", "results")):
            found.evals.append(d)
        if "ratings.json" in names and _json_has(d / "ratings.json", ("groups",)):
            found.arenas.append(d)
        if "report.json" in names and "report.md" in names:
            found.analyses.append(d)
        dirnames[:] = sorted(n for n in dirnames if n not in PRUNE and not n.startswith(".")
                             and depth < max_depth)
    found.shard_dirs.sort(key=_created)
    return found


def _json_has(p: Path, keys: tuple[str, ...]) -> bool:
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(obj, dict) and any(k in obj for k in keys)


def _created(d: Path) -> tuple[float, str]:
    try:
        return float(ShardDir.open(d).header().get("created_at") or 0.0), str(d)
    except InputError:
        return 0.0, str(d)


# ---------------------------------------------------------------------------------- shard dirs
def _add(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Sum nested counts: dicts of ints, lists of ints (histograms on the same bins)."""
    for k, v in other.items():
        if isinstance(v, dict):
            _add(into.setdefault(k, {}), v)
        elif isinstance(v, list) and v and all(isinstance(x, int) for x in v):
            cur = into.get(k)
            into[k] = v[:] if cur is None else [a + b for a, b in zip(cur, v)]
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            into[k] = into.get(k, 0) + v


def shard_summary(d: Path, root: Path) -> dict[str, Any]:
    """One stage: manifest totals, summed profiles, samples spread over its units."""
    sd = ShardDir.open(d)
    m = sd.manifest()
    kept: dict[str, Any] = {}
    rejected: dict[str, Any] = {}
    samples_kept: list[list[dict[str, Any]]] = []
    samples_rej: dict[str, list[list[dict[str, Any]]]] = {}
    from_data = errors = 0
    for u in m["units"]:
        if u.get("status") != "done":
            continue
        prof = sd.profile(u["index"])
        if prof is None:  # written before profiles existed: profile the unit's files now
            from_data += 1
            kept_t = read_arrow(sd.data_dir / u["file"])
            rej_t = read_arrow(sd.rejected_dir / u["rejected_file"]) if u.get("rejected_file") else None
            prof = unit_profile(kept_t, rej_t)
        if "error" in prof:
            errors += 1
            continue
        _add(kept, prof.get("kept", {}))
        _add(rejected, {k: v for k, v in prof.get("rejected", {}).items()})
        samples_kept.append(prof["samples"]["kept"])
        for reason, rows in prof["samples"].get("rejected", {}).items():
            samples_rej.setdefault(reason, []).append(rows)
    t = m["totals"]
    name = str(d.relative_to(root)) if d != root and root in d.parents else d.name
    return {
        "name": name or d.name, "path": str(d), "stage": m.get("stage"), "complete": bool(m.get("complete")),
        "totals": t, "stats": m.get("stats") or {}, "config": m.get("config") or {},
        "provenance": m.get("provenance") or {}, "inputs": m.get("inputs") or [], "mix": m.get("mix"),
        "created_at": m.get("created_at"), "version": m.get("version"),
        "kept": kept, "rejected": rejected,
        "samples_kept": _interleave(samples_kept, SAMPLES_SHOWN),
        "samples_rejected": {r: _interleave(v, SAMPLES_SHOWN) for r, v in sorted(samples_rej.items())},
        "all_kept_samples": [r for rows in samples_kept for r in rows],
        "units_profiled_from_data": from_data, "units_without_profile": errors,
    }


def _interleave(per_unit: list[list[dict[str, Any]]], k: int) -> list[dict[str, Any]]:
    """``k`` rows taken round-robin over units, so the rows shown come from across the run."""
    out: list[dict[str, Any]] = []
    per_unit = [u for u in per_unit if u]  # units that kept nothing (or rejected nothing for a reason)
    if not per_unit:
        return out
    step = max(1, len(per_unit) // k)
    chosen = per_unit[::step]
    depth = 0
    while len(out) < k and any(depth < len(u) for u in chosen):
        for u in chosen:
            if depth < len(u) and len(out) < k:
                out.append(u[depth])
        depth += 1
    return out


def heat_map(stages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Kept share per (category, temperature) over the chain: rows the first stage planned in each
    cell (kept + rejected there) against the rows the last stage kept in it."""
    with_cells = [s for s in stages if "category|temperature" in s["kept"].get("facets", {})]
    if not with_cells:
        return None
    first, last = with_cells[0], with_cells[-1]
    planned: dict[str, int] = {}
    _add(planned, first["kept"]["facets"]["category|temperature"])
    _add(planned, first["rejected"].get("facets", {}).get("category|temperature", {}))
    kept = last["kept"]["facets"]["category|temperature"]
    cats = sorted({k.split("|")[0] for k in planned})
    temps = sorted({k.split("|")[1] for k in planned}, key=num_key)
    cells = {k: (kept.get(k, 0), n) for k, n in planned.items()}
    return {"categories": cats, "temperatures": temps, "cells": cells, "first": first["name"], "last": last["name"]}


def num_key(s: str) -> tuple[int, float | str]:
    """Facet values in reading order: numbers by value (0.8 before 1.2), then the rest by name."""
    try:
        return 0, float(s)
    except ValueError:
        return 1, s


def languages_of_samples(stage: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Detected language of each text column over the stage's sampled kept rows (fastText lid.176),
    ``{column: {language: rows}}``; columns of short values (ids, labels) are left out."""
    rows = stage["all_kept_samples"]
    if not rows:
        return {}
    cols = [c for c, v in rows[0].items() if isinstance(v, str) and c not in ("id", "model", "system_prompt")]
    out: dict[str, dict[str, int]] = {}
    det = _detector()
    if det is None:
        return {}
    for c in cols:
        texts = [r[c] for r in rows if isinstance(r.get(c), str)]
        if not texts or sum(len(t) for t in texts) / len(texts) < 20:
            continue
        counts: dict[str, int] = {}
        for lang in det.detect(texts):
            counts[lang or "unknown"] = counts.get(lang or "unknown", 0) + 1
        out[c] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    return out


@functools.lru_cache(maxsize=1)
def _detector() -> Any:
    try:
        from lrpipe.langid import FastTextLID176

        return FastTextLID176()
    except Exception:  # noqa: BLE001 - the page then shows no language chart
        return None


# ---------------------------------------------------------------------------------- training
def training_run(d: Path, root: Path) -> dict[str, Any]:
    """The curve of one run and its events (start, resume, preempted, done) from ``log.jsonl``."""
    steps, events, bad = [], [], 0
    with open(d / "log.jsonl", encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1  # a line cut by a kill: the run resumed after it
                continue
            (events if "event" in rec else steps).append(rec)
    # A resumed run logs the steps after its checkpoint again: keep each step's last record.
    by_step = {r["step"]: r for r in steps if "step" in r}
    steps = [by_step[k] for k in sorted(by_step)]
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        config = {}
    start = next((e for e in events if e.get("event") == "start"), {})
    name = str(d.relative_to(root)) if root in d.parents else d.name

    def mean(k: str) -> float:
        vals = [r[k] for r in steps if k in r]
        return sum(vals) / max(1, len(vals))

    return {"name": name, "path": str(d), "steps": steps, "events": events, "bad_lines": bad, "config": config,
            "total_steps": start.get("total_steps"), "world": start.get("world"), "device": start.get("device"),
            "done": any(e.get("event") == "done" for e in events),
            "resumes": sum(1 for e in events if e.get("event") == "resume"),
            "preemptions": sum(1 for e in events if e.get("event") == "preempted"),
            "last_loss": steps[-1].get("loss") if steps else None,
            "tokens_per_s_per_gpu": mean("tokens_per_s_per_gpu") if steps else None,
            "mfu": mean("mfu") if any("mfu" in r for r in steps) else None}


# ---------------------------------------------------------------------------------- evaluations
def evaluation(d: Path, root: Path) -> dict[str, Any]:
    """An ``eval text`` or ``eval mm`` result as rows of (model, language, task, metric, score,
    paper figure)."""
    res = json.loads((d / "results.json").read_text(encoding="utf-8"))
    model = _model_name(res.get("model") or str(d), d, root)
    rows = []
    if "rows" in res:  # eval text
        for r in res["rows"]:
            rows.append({"model": model, "language": r.get("language"), "task": r.get("task"),
                         "metric": r.get("metric"), "score": _pct(r.get("score")), "paper": r.get("study"),
                         "n": r.get("n"), "bias": r.get("bias")})
        averages = {lang: _pct(v.get("score")) for lang, v in (res.get("averages") or {}).items()}
    else:  # eval mm
        for r in res.get("results", []):
            for lang, met in (r.get("metrics") or {}).items():
                key = next((k for k in ("acc", "vqa_acc", "score") if k in met), None)
                if key is None:
                    continue
                rows.append({"model": model, "language": lang, "task": r.get("task"), "metric": key,
                             "score": _pct(met[key]), "paper": None, "n": met.get("n"), "bias": False})
        averages = {}
        for lang in {r["language"] for r in rows}:
            vals = [r["score"] for r in rows if r["language"] == lang and r["score"] is not None]
            averages[lang] = sum(vals) / len(vals) if vals else None
    return {"name": str(d.relative_to(root)) if root in d.parents else d.name, "model": model,
            "suite": res.get("suite"), "limit": res.get("limit"), "rows": rows, "averages": averages}


def _pct(v: Any) -> float | None:
    return None if v is None else 100.0 * float(v)


def _model_name(model: str, d: Path, root: Path) -> str:
    """A short name: the cell a study trained (``<cell>/train/final``), else the path's last parts."""
    p = Path(model)
    parts = p.parts
    if len(parts) >= 3 and parts[-1] == "final" and parts[-2] == "train":
        return parts[-3]
    if d != root and root in d.parents and d.name == "eval":
        return d.parent.name
    return p.name or model


def arena(d: Path, root: Path) -> dict[str, Any]:
    res = json.loads((d / "ratings.json").read_text(encoding="utf-8"))
    return {"name": str(d.relative_to(root)) if root in d.parents else d.name, "settings": res.get("settings", {}),
            "groups": res.get("groups", {}), "agreement": res.get("agreement")}


def analysis(d: Path, root: Path) -> dict[str, Any]:
    """``pipe eval report``'s tables (markdown) and figures (PNG files, embedded as they are)."""
    import base64

    figs = []
    for png in sorted(d.glob("*.png")):
        figs.append({"name": png.stem, "src": "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()})
    return {"name": str(d.relative_to(root)) if root in d.parents else d.name,
            "markdown": (d / "report.md").read_text(encoding="utf-8"), "figures": figs}


# ---------------------------------------------------------------------------------- study
def study_steps(root: Path) -> list[dict[str, Any]]:
    """Each step's record under ``.study/steps`` (status, finish time) and, when the study file it
    names can still be read, its upstream steps."""
    recs = []
    for f in sorted((root / ".study" / "steps").glob("*.json")):
        try:
            r = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        cfg = r.get("config") or {}
        argv = cfg.get("argv") or []
        recs.append({"step": r.get("step"), "status": r.get("status"), "time": r.get("time"),
                     "upstream": sorted((cfg.get("upstream") or {}).keys()),
                     "command": "pipe " + " ".join(argv[:2]) if argv else ""})
    recs.sort(key=lambda r: (r["time"] or 0, r["step"] or ""))
    return recs
