"""``pipe report PATH``: one self-contained HTML page for whatever PATH holds.

The page is the product: one file, no script, no request (its Content-Security-Policy forbids any),
charts inlined as SVG (:mod:`lrpipe.page.charts`), images of sampled rows as data URIs. It reads
manifests and unit profiles, not the data (:mod:`lrpipe.page.collect`), so a million-row chain
builds in seconds (``bench/report.py``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from lrpipe import __version__, show
from lrpipe.errors import InputError
from lrpipe.page import charts
from lrpipe.page import collect as c

CONFIG_KEYS = ("model", "recipe", "filters", "field", "fields", "src", "tgt", "source_language", "target_language",
               "temps", "n", "tokenizer", "seq_len", "name", "suite", "translator", "judge")


def _pct(n: float, d: float) -> float:
    return n / d if d else 0.0


def mix_rows(stage: dict[str, Any]) -> list[dict[str, Any]]:
    """A mix stage's table (:func:`lrpipe.show.mix_rows`, the one ``pipe show`` prints)."""
    return show.mix_rows(stage.get("mix") or {}, stage["stats"])


def _pack(stage: dict[str, Any]) -> dict[str, Any] | None:
    st = stage["stats"]
    if stage.get("stage") != "pack" or not st.get("bins"):
        return None
    total = st["tokens_in"] + st["pad_tokens"]
    return {"tokens_in": st["tokens_in"], "loss_tokens": st["loss_tokens"], "pad_tokens": st["pad_tokens"],
            "bins": st["bins"], "documents": st["documents"], "efficiency": _pct(st["tokens_in"], total),
            "loss_share": _pct(st["loss_tokens"], st["tokens_in"]), "docs_per_row": _pct(st["documents"], st["bins"])}


def _config_summary(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for k in CONFIG_KEYS:
        if k in cfg and cfg[k] not in (None, "", [], {}):
            v = cfg[k]
            out.append((k, v if isinstance(v, str) else json.dumps(v, default=str)[:300]))
    return out


def _has_splits(stage: dict[str, Any]) -> bool:
    return any("=" in k for h in stage["kept"].get("lengths", {}).values() for k in h)


def _stage_view(stage: dict[str, Any], detect_languages: bool, facet_lines: bool = True) -> dict[str, Any]:
    t = stage["totals"]
    reasons = [{"reason": r, "count": n, "share": _pct(n, t["rows_in"]),
                "samples": stage["samples_rejected"].get(r, [])} for r, n in t["rejected_by_reason"].items()]
    langs = c.languages_of_samples(stage) if detect_languages else {}
    mix = mix_rows(stage) if stage.get("mix") else []
    numeric = {k: v for k, v in sorted(stage["stats"].items()) if not k.startswith(("rows:", "tokens:"))}
    counts = stage["kept"].get("counts", {})
    return {
        **{k: stage[k] for k in ("name", "path", "stage", "complete", "totals", "version",
                                 "units_profiled_from_data", "units_without_profile")},
        "anchor": "stage-" + stage["name"].replace("/", "-").replace("+", "p"),
        "reasons": reasons, "samples_kept": stage["samples_kept"],
        "config": _config_summary(stage["config"]), "config_json": json.dumps(stage["config"], indent=1, default=str),
        "inputs": [i.get("path") for i in stage["inputs"] if isinstance(i, dict)],
        "stats": numeric, "counts": counts, "mix": mix, "pack": _pack(stage),
        "languages": langs, "languages_on": len(stage["all_kept_samples"]),
        "svg": {
            "facets": charts.render(charts.facets, stage),
            "lengths": charts.render(charts.histograms, stage),
            "ratios": charts.render(charts.histograms, stage, kind="ratio"),
            "by_category": charts.render(charts.by_facet, stage, "category") if facet_lines else None,
            "by_temperature": charts.render(charts.by_facet, stage, "temperature") if facet_lines else None,
            "languages": charts.render(charts.shares, "Detected language of sampled kept rows (fastText lid.176)",
                                       langs) if langs else None,
            "mix": charts.render(charts.mixture, mix) if mix else None,
        },
    }


def _study(found: c.Found, study_file: str | Path | None) -> dict[str, Any] | None:
    """The study's DAG: from its file when it can be read (every step, with its status now), else
    from the step records the runs left."""
    root = found.study
    if root is None:
        return None
    steps = None
    pointer = root / ".study" / "study.json"
    if study_file is None and pointer.exists():
        study_file = json.loads(pointer.read_text()).get("file")
    name = None
    if study_file:
        try:
            from lrpipe.study.run import prepare
            from lrpipe.study.spec import load_study
            from lrpipe.study.state import states

            study, path = load_study(study_file)
            name = study.name
            ss, ctx = prepare(study, path, root)
            st = states(ss, ctx)
            steps = [{"step": s.name, "status": st[s.name].status, "upstream": list(s.deps),
                      "command": f"pipe {s.run}", "time": None} for s in ss]
        except Exception as e:  # noqa: BLE001 - the records still give the DAG of what ran
            name = f"(study file unreadable: {e})"
    if steps is None:
        steps = c.study_steps(root)
    return {"name": name, "file": str(study_file) if study_file else None, "steps": steps,
            "complete": sum(1 for s in steps if s["status"] in ("complete", "done")),
            "svg": charts.render(charts.dag, steps)}


def collect_page(path: str | Path, *, study_file: str | Path | None = None,
                 detect_languages: bool = True) -> dict[str, Any]:
    """Everything the template shows, as plain data (the tests read it too)."""
    root = Path(path).resolve()
    found = c.discover(root)
    if found.empty() and found.study is None:
        raise InputError("nothing to report: no shard directory, training run (log.jsonl), evaluation "
                         "(results.json), arena (ratings.json) or study (.study) here", path=str(path))
    stages = [c.shard_summary(d, root) for d in found.shard_dirs]
    runs = [c.training_run(d, root) for d in found.train_runs]
    evals = [c.evaluation(d, root) for d in found.evals]
    arenas = [c.arena(d, root) for d in found.arenas]
    hm = c.heat_map(stages)
    split = [i for i, s in enumerate(stages) if _has_splits(s)]
    lines = {split[0], split[-1]} if split else set()
    eval_rows = [r for e in evals for r in e["rows"]]
    tasks = sorted({(r["language"] or "", r["task"] or "") for r in eval_rows})
    models = [e["model"] for e in evals]
    score = {(r["model"], r["language"] or "", r["task"] or ""): r for r in eval_rows}
    paper = {(r["language"] or "", r["task"] or ""): r["paper"] for r in eval_rows if r.get("paper") is not None}
    return {
        "title": f"pipe report: {root.name}", "root": str(root), "version": __version__,
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "funnel": charts.render(charts.funnel, stages) if stages else None,
        "heat": charts.render(charts.heat, hm) if hm else None,
        # Lengths per category and temperature where the rows are made and where the chain ends; the
        # stages between repeat them on fewer rows.
        "stages": [_stage_view(s, detect_languages, facet_lines=i in lines) for i, s in enumerate(stages)],
        "runs": [{**r, "svg": charts.render(charts.training, r),
                  "anchor": "run-" + r["name"].replace("/", "-").replace("+", "p")} for r in runs],
        "losses": charts.render(charts.losses, runs),
        "evals": evals, "eval_models": models, "eval_tasks": tasks,
        "eval_cells": {f"{m}|{lang}|{t}": score[(m, lang, t)]["score"] for (m, lang, t) in score},
        "eval_paper": {f"{lang}|{t}": v for (lang, t), v in paper.items()},
        "eval_chart": charts.render(charts.eval_averages, evals) if evals else None,
        "arenas": [{**a, "svgs": [(g, charts.render(charts.arena, g, v["ratings"])) for g, v in a["groups"].items()
                                  if v.get("ratings")]} for a in arenas],
        "analyses": [c.analysis(d, root) for d in found.analyses],
        "study": _study(found, study_file),
    }


def _env() -> jinja2.Environment:
    loader = jinja2.FileSystemLoader(str(resources.files("lrpipe.page") / "templates"))
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v: f"{v:,}" if isinstance(v, int) else (f"{v:,.4g}" if isinstance(v, float) else v)
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    env.filters["score"] = lambda v: "–" if v is None else f"{v:.2f}"
    env.filters["safe_svg"] = lambda v: jinja2.utils.markupsafe.Markup(v) if v else ""
    return env


def render_page(data: dict[str, Any]) -> str:
    return _env().get_template("report.html.j2").render(**data)


def build_report(path: str | Path, out: str | Path | None = None, *, study_file: str | Path | None = None,
                 detect_languages: bool = True) -> Path:
    """Write the page for ``path`` to ``out`` (default ``<path>/report.html``) and return its path."""
    data = collect_page(path, study_file=study_file, detect_languages=detect_languages)
    target = Path(out) if out else Path(path) / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(render_page(data), encoding="utf-8")
    tmp.replace(target)
    return target


def card_figures(path: str | Path) -> dict[str, bytes]:
    """The page's main figures as PNG for a dataset card (``pipe push``): the funnel of the chain that
    made ``path``, and the kept share per cell, facets, lengths and length ratio of its rows."""
    from lrpipe.hub import lineage

    dirs = [Path(x["path"]) for x in lineage(path) if not x.get("missing")]
    root = Path(os.path.commonpath([str(d.resolve()) for d in dirs])) if len(dirs) > 1 else Path(path).resolve().parent
    stages = [c.shard_summary(d.resolve(), root) for d in dirs]
    last = stages[-1]
    hm = c.heat_map(stages)
    figs = {"funnel": charts.render(charts.funnel, stages, fmt="png"),
            "kept_share": charts.render(charts.heat, hm, fmt="png") if hm else None,
            "facets": charts.render(charts.facets, last, fmt="png"),
            "lengths": charts.render(charts.histograms, last, fmt="png"),
            "length_ratio": charts.render(charts.histograms, last, kind="ratio", fmt="png")}
    return {k: v for k, v in figs.items() if isinstance(v, bytes)}
