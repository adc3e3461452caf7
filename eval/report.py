"""``pipe eval report RUN...``: gather ``pipe eval text``, ``pipe eval mm`` and ``pipe arena`` run
folders into one table per kind (one row per model) and a figure of the per-language averages, so a
user reproduces the studies' summary views from their own runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lrpipe.errors import InputError


def _load(run: Path) -> tuple[str, dict[str, Any]]:
    for name, kind in (("results.json", None), ("ratings.json", "arena")):
        p = run / name
        if p.exists():
            data = json.loads(p.read_text())
            if kind is None:
                kind = "text" if "averages" in data else "mm"
            return kind, data
    if any(run.rglob("results_*.json")):  # lm-eval's own layout (lm_eval --output_path, published runs)
        from lrpipe.eval.text import summary_from_lm_eval

        return "text", summary_from_lm_eval(run)
    raise InputError("not a pipe eval/arena run folder (no results.json, ratings.json or lm-eval "
                     "results_*.json)", path=str(run))


def _average(v: Any) -> float | None:
    """A language average: a number (older runs) or ``{"score", "tasks", "of"}``."""
    return v.get("score") if isinstance(v, dict) else v


def _cell(v: Any) -> str:
    """A language average for the table; an average over part of the tasks says so."""
    score = _average(v)
    if score is None:
        return "-"
    if isinstance(v, dict) and v.get("tasks") is not None and v.get("tasks") != v.get("of"):
        return f"{100 * score:.2f} ({v['tasks']}/{v['of']} tasks)"
    return f"{100 * score:.2f}"


def gather(runs: list[str | Path]) -> dict[str, Any]:
    text, mm, arena = [], [], []
    for r in runs:
        kind, data = _load(Path(r))
        name = Path(data.get("model") or r).name if kind != "arena" else Path(r).name
        if kind == "text":
            text.append({"model": name, "averages": data["averages"],
                         "tasks": {(x["language"], x["task"]): x["score"] for x in data["rows"]}})
        elif kind == "mm":
            row = {"model": name, "scores": {}}
            for res in data["results"]:
                for lang, m in res["metrics"].items():
                    for k, v in m.items():
                        if k not in ("n", "skipped_no_gold") and isinstance(v, (int, float)):
                            row["scores"][(res["task"], k, lang)] = v
            mm.append(row)
        else:
            arena.append({"run": name, "groups": {g: {x["model"]: x for x in v["ratings"]}
                                                  for g, v in data["groups"].items()}})
    return {"text": text, "mm": mm, "arena": arena}


def markdown(g: dict[str, Any]) -> str:
    out = ["# Evaluation report", ""]
    if g["text"]:
        langs = sorted({lang for r in g["text"] for lang in r["averages"]})
        out += ["## Text benchmarks (average per language)", "", "| model | " + " | ".join(langs) + " |",
                "|---|" + "---:|" * len(langs)]
        out += [f"| {r['model']} | " + " | ".join(_cell(r["averages"].get(x)) for x in langs) + " |"
                for r in g["text"]]
        out.append("")
    if g["mm"]:
        cols = sorted({k for r in g["mm"] for k in r["scores"]})
        out += ["## Multimodal benchmarks", "", "| model | " + " | ".join(f"{t} {m} ({lang})" for t, m, lang in cols) + " |",
                "|---|" + "---:|" * len(cols)]
        out += [f"| {r['model']} | " + " | ".join(f"{100 * r['scores'][c]:.2f}" if c in r["scores"] else "-"
                                                  for c in cols) + " |" for r in g["mm"]]
        out.append("")
    for a in g["arena"]:
        for grp, models in a["groups"].items():
            out += [f"## Arena {a['run']}: {grp}", "", "| rank | model | score | interval |", "|---:|---|---:|---|"]
            for m in sorted(models.values(), key=lambda x: -x["score"]):
                out.append(f"| {m['rank']} | {m['model']} | {m['score']:.1f} | {m['lower']:.1f} – {m['upper']:.1f} |")
            out.append("")
    return "\n".join(out)


def figure(g: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars: each model's text average per language."""
    if not g["text"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    langs = sorted({lang for r in g["text"] for lang in r["averages"]})
    x = np.arange(len(langs))
    w = 0.8 / max(len(g["text"]), 1)
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(langs) + 2), 4))
    for i, r in enumerate(g["text"]):
        ax.bar(x + i * w, [100 * (_average(r["averages"].get(lang)) or float("nan")) for lang in langs], w,
               label=r["model"])
    ax.set_xticks(x + w * (len(g["text"]) - 1) / 2, langs)
    ax.set_ylabel("average score")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_report(runs: list[str | Path], out: str | Path) -> str:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    g = gather(runs)
    md = markdown(g)
    (out / "report.md").write_text(md)
    figure(g, out / "text_averages.png")
    return md
