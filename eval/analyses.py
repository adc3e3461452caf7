"""The instruction study's analyses, from the files the project writes (README: "Evaluation").

* **Lineage** (:func:`lineage`): what a model was trained from, read back along the chain of files:
  the training run's ``config.json`` (backbone, data), the packed data's header (the mixture it packed),
  the mixture's header (its sources and their languages). A model that is not a training run's export
  is a backbone.
* **Figure 3** (:func:`grouping`): each backbone × data combination (corpus or not, instructions in
  which languages) with its average benchmark score per language and its arena scores.
* **Figure 4** (:func:`correlations`): Spearman's ρ between every benchmark (and each language's
  average) and every arena dimension, over the models that have both.
* **Figure 5** (:func:`relative_changes`): per language, the change of each variant's average over the
  multilingual benchmarks relative to its own backbone.
* **Table 4** (:func:`compute_table`): GPU hours and tokens of every training run, from its
  ``log.jsonl`` (the time between each start or resume and the run's last record there, times the
  ranks; a step logged twice across a restart counted once).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lrpipe.errors import InputError


# ------------------------------------------------------------------------------------------ lineage
def model_label(path: str | Path) -> str:
    """The name a model goes by in reports: a training run's name for its export (``--run-name``, else
    the run's folder: ``runs/X/final`` is X), else the last part of its path or Hub id (``embedded`` is
    the embedded model's own name)."""
    p = Path(str(path).rstrip("/"))
    if p.name in ("final", "export", "hf") and (p.parent / "config.json").exists():
        try:
            name = json.loads((p.parent / "config.json").read_text()).get("run_name")
        except (OSError, json.JSONDecodeError):
            name = None
        return str(name or p.parent.name)
    if str(path) == "embedded":
        from lrpipe.models import DEFAULT_MODEL

        return Path(DEFAULT_MODEL).name
    return p.name or str(path)


def _header(path: str | Path) -> dict[str, Any]:
    from lrpipe.shards import ShardDir

    return ShardDir.open(path).header() if ShardDir.is_shard_dir(path) else {}


def lineage(model: str | Path) -> dict[str, Any]:
    """``{model, backbone, data, corpus, instructions, run}`` for a model path (see the module docstring);
    ``data`` is ``None`` for a backbone."""
    p = Path(str(model).rstrip("/"))
    run = p.parent if p.name in ("final", "export", "hf") else p
    cfg_path = run / "config.json"
    out: dict[str, Any] = {"model": model_label(model), "backbone": model_label(model), "data": None,
                           "corpus": False, "instructions": [], "run": None}
    if not cfg_path.exists():
        return out
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"not JSON ({e})", path=str(cfg_path)) from e
    if "data" not in cfg or "model" not in cfg:
        return out  # a Hugging Face model folder, not a training run
    out.update(run=str(run), backbone=model_label(cfg["model"]))
    pack = _header(cfg["data"])
    mix_path = ((pack.get("config") or {}).get("input") or {}).get("path") if pack.get("stage") == "pack" else None
    mix = _header(mix_path) if mix_path else (pack if pack.get("stage") == "mix" else {})
    recipe = (mix.get("config") or {}).get("recipe") or {}
    sources = recipe.get("sources") or []
    out["data"] = recipe.get("name") or Path(str(cfg["data"])).name
    out["corpus"] = any(str(s.get("name", "")).startswith("corpus") for s in sources)
    langs = []
    for s in sources:
        if str(s.get("name", "")).startswith("instructions"):
            langs += list(s.get("parallel") or {}) or [s.get("language")]
    out["instructions"] = sorted({x for x in langs if x}, key=lambda x: (x != "en", x))
    return out


def data_label(info: dict[str, Any], target: str | None = None) -> str:
    """Table 3's shorthand of what a variant added to its backbone: ``C_EU I_EN+EU``, ``I_EU``, ``-``."""
    if info["data"] is None:
        return "-"
    parts = []
    if info["corpus"]:
        parts.append(f"C_{(target or 'tgt').upper()}")
    if info["instructions"]:
        parts.append("I_" + "+".join(x.upper() for x in info["instructions"]))
    return " ".join(parts) or str(info["data"])


# ------------------------------------------------------------------------------------------ Figure 3
def grouping(text: list[dict[str, Any]], arena: dict[str, dict[str, float]], infos: dict[str, dict[str, Any]],
             target: str | None = None) -> dict[str, Any]:
    """Per backbone and data combination: each language's benchmark average and each arena dimension's
    score (``None`` where the model has none)."""
    rows = []
    for r in text:
        info = infos.get(r["model"]) or {"backbone": r["model"], "data": None, "corpus": False, "instructions": []}
        avgs = {lang: (v.get("score") if isinstance(v, dict) else v) for lang, v in r["averages"].items()}
        rows.append({"model": r["model"], "backbone": info["backbone"], "data": data_label(info, target),
                     "averages": avgs, "arena": {g: s.get(r["model"]) for g, s in arena.items()}})
    for scores in arena.values():  # arena-only models (proprietary ones)
        for m in scores:
            if not any(x["model"] == m for x in rows):
                info = infos.get(m) or {"backbone": m, "data": None, "corpus": False, "instructions": []}
                rows.append({"model": m, "backbone": info["backbone"], "data": data_label(info, target),
                             "averages": {}, "arena": {gg: ss.get(m) for gg, ss in arena.items()}})
    return {"rows": sorted(rows, key=lambda x: (x["backbone"], x["data"] != "-", x["data"]))}


# ------------------------------------------------------------------------------------------ Figure 4
def correlations(text: list[dict[str, Any]], arena: dict[str, dict[str, float]], *,
                 min_models: int = 3) -> list[dict[str, Any]]:
    """Spearman's ρ (and p) of every benchmark and every language's average against every arena
    dimension, over the models with both (at least ``min_models``; fewer give no row)."""
    from scipy.stats import spearmanr

    series: dict[tuple[str, str], dict[str, float]] = {}
    for r in text:
        for lang, v in r["averages"].items():
            score = v.get("score") if isinstance(v, dict) else v
            if score is not None:
                series.setdefault((lang, "average"), {})[r["model"]] = score
        for (lang, name), score in r["tasks"].items():
            if score is not None:
                series.setdefault((lang, name), {})[r["model"]] = score
    out = []
    for (lang, bench), scores in sorted(series.items()):
        for dim, rating in arena.items():
            shared = sorted(scores.keys() & rating.keys())
            if len(shared) < min_models:
                continue
            res = spearmanr([scores[m] for m in shared], [rating[m] for m in shared])
            rho, p = float(res.statistic), float(res.pvalue)
            if rho != rho:  # a constant series (every model the same score): no rank correlation
                rho = p = None
            out.append({"language": lang, "benchmark": bench, "dimension": dim, "rho": rho, "p": p,
                        "models": len(shared)})
    return out


# ------------------------------------------------------------------------------------------ Figure 5
def relative_changes(text: list[dict[str, Any]], infos: dict[str, dict[str, Any]], benchmarks: list[str],
                     target: str | None = None) -> list[dict[str, Any]]:
    """Per variant and language: its mean over ``benchmarks`` (the suite's names: Belebele, MGSM, MMLU,
    XStoryCloze) minus its backbone's, for the variants whose backbone was evaluated too."""
    means: dict[str, dict[str, float]] = {}
    for r in text:
        for lang in {lang for lang, _ in r["tasks"]}:
            vals = [s for (lg, name), s in r["tasks"].items() if lg == lang and name in benchmarks and s is not None]
            if vals:
                means.setdefault(r["model"], {})[lang] = sum(vals) / len(vals)
    out = []
    for model, langs in sorted(means.items()):
        info = infos.get(model)
        if not info or info["data"] is None or info["backbone"] not in means:
            continue
        base = means[info["backbone"]]
        for lang, v in sorted(langs.items()):
            if lang in base:
                out.append({"model": model, "backbone": info["backbone"], "data": data_label(info, target),
                            "language": lang, "score": v, "backbone_score": base[lang], "change": v - base[lang]})
    return out


# ------------------------------------------------------------------------------------------ Table 4
def compute_of_run(run: str | Path) -> dict[str, Any]:
    """GPU hours, steps and tokens of one training run from its ``log.jsonl`` (module docstring)."""
    run = Path(run)
    recs = []
    for line in (run / "log.jsonl").read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    seconds, segment, world, steps, restarts, device = 0.0, None, 1, {}, 0, None
    for rec in recs:
        if rec.get("event") in ("start", "resume"):
            if segment is not None:
                seconds += (segment[1] - segment[0]) * segment[2]
            segment = [rec["time"], rec["time"], int(rec.get("world") or 1)]
            world, device = segment[2], rec.get("device")
            restarts += rec["event"] == "resume"
        elif segment is not None:
            segment[1] = rec.get("time", segment[1])
        if "step" in rec and "event" not in rec:
            steps[rec["step"]] = rec  # a step redone after a restart: the last record counts
    if segment is not None:
        seconds += (segment[1] - segment[0]) * segment[2]
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    tokens = sum(int(r.get("tokens") or 0) for r in steps.values())
    log_every = int(cfg.get("log_every") or 1)
    return {"run": cfg.get("run_name") or run.name, "gpus": world, "device": device, "steps": max(steps, default=0),
            "tokens": tokens * log_every, "gpu_hours": seconds / 3600.0, "restarts": restarts,
            "data": lineage(run / "final")["data"] if (run / "config.json").exists() else None,
            "backbone": model_label(cfg["model"]) if "model" in cfg else None}


def compute_table(runs: list[str | Path]) -> dict[str, Any]:
    """Every run's compute, grouped by its data (Table 4: the GPU hours of a data combination on any
    backbone, × the number of runs), and the total."""
    rows = [compute_of_run(r) for r in runs]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["data"] or "-", []).append(r)
    by_data = [{"data": d, "runs": len(rs), "gpu_hours_each": sum(r["gpu_hours"] for r in rs) / len(rs),
                "gpu_hours": sum(r["gpu_hours"] for r in rs), "tokens": sum(r["tokens"] for r in rs)}
               for d, rs in sorted(groups.items())]
    return {"runs": rows, "by_data": by_data, "total_gpu_hours": sum(r["gpu_hours"] for r in rows),
            "total_tokens": sum(r["tokens"] for r in rows)}
