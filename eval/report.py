"""``pipe eval report RUN...``: gather ``pipe eval text``, ``pipe eval mm``, ``pipe arena`` and ``pipe
train`` run folders into the studies' summary views: one table per kind (a row per model), the per-language
averages, and the instruction study's analyses (:mod:`lrpipe.eval.analyses`: grouping by backbone and data,
benchmark–arena Spearman, changes relative to the backbone, compute per run), as Markdown, JSON and
figures. A run may be named on the command line (``NAME=PATH``); otherwise a model is named by its
training run (``runs/X/final`` is X) or its folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lrpipe.errors import InputError
from lrpipe.eval import analyses


def _load(run: Path) -> tuple[str, dict[str, Any]]:
    for name, kind in (("results.json", None), ("ratings.json", "arena")):
        p = run / name
        if p.exists():
            data = json.loads(p.read_text())
            if kind is None:
                kind = "text" if "averages" in data else "mm"
            return kind, data
    if (run / "log.jsonl").exists() and (run / "config.json").exists():
        return "train", {}
    if any(run.rglob("results_*.json")):  # lm-eval's own layout (lm_eval --output_path, published runs)
        from lrpipe.eval.text import summary_from_lm_eval

        return "text", summary_from_lm_eval(run)
    raise InputError("not a pipe eval/arena/train run folder (no results.json, ratings.json, log.jsonl or "
                     "lm-eval results_*.json)", path=str(run))


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


def _split(spec: str | Path) -> tuple[str | None, Path]:
    s = str(spec)
    if "=" in s and not Path(s).exists():
        name, path = s.split("=", 1)
        return name, Path(path)
    return None, Path(s)


def gather(runs: list[str | Path]) -> dict[str, Any]:
    text, mm, arena, train = [], [], [], []
    infos: dict[str, dict[str, Any]] = {}
    for spec in runs:
        given, r = _split(spec)
        kind, data = _load(r)
        if kind == "arena":
            arena.append({"run": given or r.name, "groups": {g: {x["model"]: x for x in v["ratings"]}
                                                             for g, v in data["groups"].items()}})
            continue
        if kind == "train":
            train.append(r)
            continue
        model_path = data.get("model") or str(r)
        name = given or analyses.model_label(model_path)
        info = analyses.lineage(model_path)
        infos[name] = dict(info, model=name)
        if kind == "text":
            text.append({"model": name, "averages": data["averages"],
                         "tasks": {(x["language"], x.get("name") or x["task"]): x["score"] for x in data["rows"]
                                   if not x.get("bias")}})
        else:
            row = {"model": name, "scores": {}}
            for res in data["results"]:
                for lang, m in res["metrics"].items():
                    for k, v in m.items():
                        if k not in ("n", "skipped_no_gold") and isinstance(v, (int, float)):
                            row["scores"][(res["task"], k, lang)] = v
            mm.append(row)
    return {"text": text, "mm": mm, "arena": arena, "train": train, "infos": infos}


def arena_scores(g: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Arena dimension → {model: score}, over every arena run (a dimension named by the run when there
    are several); the ``all`` group only when it is the only one."""
    out: dict[str, dict[str, float]] = {}
    for a in g["arena"]:
        groups = {k: v for k, v in a["groups"].items() if k != "all"} or a["groups"]
        for grp, models in groups.items():
            key = grp if len(g["arena"]) == 1 else f"{a['run']}:{grp}"
            out[key] = {m: x["score"] for m, x in models.items()}
    return out


def analyze(g: dict[str, Any], *, relative_benchmarks: list[str], target: str | None) -> dict[str, Any]:
    scores = arena_scores(g)
    out: dict[str, Any] = {}
    if g["text"] or scores:
        out["grouping"] = analyses.grouping(g["text"], scores, g["infos"], target)
    if g["text"] and scores:
        out["correlations"] = analyses.correlations(g["text"], scores)
    if g["text"]:
        out["relative_changes"] = analyses.relative_changes(g["text"], g["infos"], relative_benchmarks, target)
    if g["train"]:
        out["compute"] = analyses.compute_table(g["train"])
    return out


def markdown(g: dict[str, Any], an: dict[str, Any] | None = None) -> str:
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
    return "\n".join(out + _analyses_markdown(an or {}))


def _analyses_markdown(an: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if an.get("grouping"):
        rows = an["grouping"]["rows"]
        langs = sorted({lang for r in rows for lang in r["averages"]})
        dims = sorted({d for r in rows for d in r["arena"]})
        out += ["## Backbone × data (the instruction study's Figure 3)", "",
                "| backbone | data | model | " + " | ".join(f"avg {x}" for x in langs)
                + "".join(f" | arena {d}" for d in dims) + " |", "|---|---|---|" + "---:|" * (len(langs) + len(dims))]
        for r in rows:
            cells = [f"{100 * r['averages'][x]:.2f}" if r["averages"].get(x) is not None else "-" for x in langs]
            cells += [f"{r['arena'][d]:.1f}" if r["arena"].get(d) is not None else "-" for d in dims]
            out.append(f"| {r['backbone']} | {r['data']} | {r['model']} | " + " | ".join(cells) + " |")
        out.append("")
    if an.get("correlations"):
        out += ["## Benchmark–arena Spearman's rho (Figure 4)", "", "| language | benchmark | arena | rho | p | models |",
                "|---|---|---|---:|---:|---:|"]
        out += [f"| {c['language']} | {c['benchmark']} | {c['dimension']} | "
                + ("- | - |" if c["rho"] is None else f"{c['rho']:.2f} | {c['p']:.3f} |") + f" {c['models']} |"
                for c in an["correlations"]]
        out.append("")
    if an.get("relative_changes"):
        out += ["## Change relative to the backbone (Figure 5)", "",
                "| model | backbone | data | language | score | backbone | change |", "|---|---|---|---|---:|---:|---:|"]
        out += [f"| {c['model']} | {c['backbone']} | {c['data']} | {c['language']} | {100 * c['score']:.2f} | "
                f"{100 * c['backbone_score']:.2f} | {100 * c['change']:+.2f} |" for c in an["relative_changes"]]
        out.append("")
    if an.get("compute"):
        c = an["compute"]
        out += ["## Compute (Table 4)", "", "| run | backbone | data | devices | steps | tokens | device hours | "
                "restarts |", "|---|---|---|---:|---:|---:|---:|---:|"]
        out += [f"| {r['run']} | {r['backbone']} | {r['data']} | {r['gpus']} | {r['steps']} | {r['tokens']:,} | "
                f"{r['gpu_hours']:.3f} | {r['restarts']} |" for r in c["runs"]]
        out += ["", "| data | runs | device hours each | device hours | tokens |", "|---|---:|---:|---:|---:|"]
        out += [f"| {d['data']} | {d['runs']} | {d['gpu_hours_each']:.3f} | {d['gpu_hours']:.3f} | {d['tokens']:,} |"
                for d in c["by_data"]]
        out += [f"| total | {len(c['runs'])} | | {c['total_gpu_hours']:.3f} | {c['total_tokens']:,} |", ""]
    return out


def figures(g: dict[str, Any], an: dict[str, Any], out: Path) -> list[Path]:
    """PNG figures: text averages per language, and Figures 3–5 where their analysis has rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []

    def bars(labels: list[str], series: dict[str, list[float]], ylabel: str, name: str) -> None:
        x = np.arange(len(labels))
        w = 0.8 / max(len(series), 1)
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(labels) + 2), 4))
        for i, (k, vals) in enumerate(series.items()):
            ax.bar(x + i * w, vals, w, label=k)
        ax.set_xticks(x + w * (len(series) - 1) / 2, labels, rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        paths.append(out / name)

    if g["text"]:
        langs = sorted({lang for r in g["text"] for lang in r["averages"]})
        bars(langs, {r["model"]: [100 * (_average(r["averages"].get(x)) or float("nan")) for x in langs]
                     for r in g["text"]}, "average score", "text_averages.png")
    rows = (an.get("grouping") or {}).get("rows") or []
    if rows and g["text"]:
        backbones = sorted({r["backbone"] for r in rows})
        datas = sorted({r["data"] for r in rows}, key=lambda d: (d != "-", d))
        lang = sorted({lang for r in rows for lang in r["averages"]})[0]
        table = {(r["backbone"], r["data"]): r["averages"].get(lang) for r in rows}
        bars(backbones, {d: [100 * (table.get((b, d)) or float("nan")) for b in backbones] for d in datas},
             f"average ({lang})", "fig3_grouping.png")
    if an.get("correlations"):
        cs = an["correlations"]
        ylab = sorted({(c["language"], c["benchmark"]) for c in cs})
        xlab = sorted({c["dimension"] for c in cs})
        mat = np.full((len(ylab), len(xlab)), np.nan)
        for c in cs:
            if c["rho"] is not None:
                mat[ylab.index((c["language"], c["benchmark"])), xlab.index(c["dimension"])] = c["rho"]
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(xlab) + 3), max(3, 0.3 * len(ylab) + 1)))
        im = ax.imshow(mat, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
        ax.set_xticks(range(len(xlab)), xlab)
        ax.set_yticks(range(len(ylab)), [f"{lang} {b}" for lang, b in ylab], fontsize=7)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(out / "fig4_correlations.png", dpi=120)
        plt.close(fig)
        paths.append(out / "fig4_correlations.png")
    if an.get("relative_changes"):
        rc = an["relative_changes"]
        models = sorted({c["model"] for c in rc})
        langs = sorted({c["language"] for c in rc})
        val = {(c["model"], c["language"]): 100 * c["change"] for c in rc}
        bars(models, {lang: [val.get((m, lang), float("nan")) for m in models] for lang in langs},
             "change vs backbone (points)", "fig5_relative.png")
    return paths


def run_report(runs: list[str | Path], out: str | Path, *, suite: str = "latxa",
               target: str | None = None) -> str:
    """Gather ``runs``, write ``report.md``, ``report.json`` and the figures into ``out``; return the
    Markdown. The suite names the benchmarks of Figure 5 (its ``relative_tasks``) and the target
    language (its first language) unless ``target`` is given."""
    from lrpipe.eval.text import load_suite

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = load_suite(suite)
    g = gather(runs)
    an = analyze(g, relative_benchmarks=s.relative_tasks, target=target or next(iter(s.languages), None))
    md = markdown(g, an)
    (out / "report.md").write_text(md)
    (out / "report.json").write_text(json.dumps({"analyses": an, "models": g["infos"]}, indent=2, default=str) + "\n")
    figures(g, an, out)
    return md
