"""The page's charts: matplotlib figures inlined as SVG text.

Why matplotlib and SVG: the page must open offline on a laptop (no CDN, no server) and stay small.
An inline SVG needs no script at all, scales without blurring, keeps its text selectable
(``svg.fonttype: none``) and weighs tens of kB; the interactive libraries (Plotly, Vega) would embed
1-4 MB of JavaScript into every page to draw the same bars. matplotlib is already how
``pipe eval report`` and ``pipe arena`` draw, and the same figures go into the dataset card as PNG.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lrpipe.page.collect import num_key  # noqa: E402
from lrpipe.profile import LENGTH_EDGES, RATIO_EDGES  # noqa: E402

STYLE = {"svg.fonttype": "none", "svg.hashsalt": "lrpipe", "font.size": 8, "axes.titlesize": 9,
         "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100}
KEPT, REJ = "#2f7d4f", "#c0504d"
PALETTE = ["#c0504d", "#e39c37", "#8064a2", "#4bacc6", "#9bbb59", "#f79646", "#7f7f7f", "#1f497d", "#d16ba5",
           "#86a8e7"]


# Coordinates to a tenth of a point (finer than any screen), in geometry attributes only: labels keep
# every digit they print.
_COORDS = re.compile(r'\b(d|x|y|x1|x2|y1|y2|transform|viewBox|points|width|height)="([^"]*)"')
_DIGITS = re.compile(r"(\d\.\d)\d+")


def to_svg(fig: Any) -> str:
    """The figure as an ``<svg>`` element at its natural size (no XML prolog; CSS shrinks it to fit)."""
    buf = io.StringIO()
    with plt.rc_context(STYLE):  # svg.fonttype is read when saving: text stays text, not glyph paths
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'<g id="[^"]*">', "<g>", text)  # element ids nobody references (clip paths keep theirs)
    text = _COORDS.sub(lambda m: m.group(1) + '="' + _DIGITS.sub(r"\1", m.group(2)) + '"', text)
    return re.sub(r"\n\s*", "\n", text)


def to_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    with plt.rc_context(STYLE):
        fig.savefig(buf, format="png", bbox_inches="tight", dpi=110)
    return buf.getvalue()


def render(draw: Any, *args: Any, fmt: str = "svg", **kw: Any) -> str | bytes | None:
    """``draw(*args)``'s figure as SVG text or PNG bytes; None when there is nothing to draw."""
    fig = draw(*args, **kw)
    if fig is None:
        return None
    try:
        return to_png(fig) if fmt == "png" else to_svg(fig)
    finally:
        plt.close(fig)


def _new(w: float, h: float, ncols: int = 1, nrows: int = 1) -> tuple[Any, Any]:
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(nrows, ncols, figsize=(w, h), squeeze=False)
    fig.set_layout_engine("tight")  # one layout pass (constrained layout draws several times)
    return fig, ax


def _bin_labels(edges: list[float], kind: str) -> list[str]:
    if kind == "ratio":
        return [f"{e:.1f}" for e in edges[:-1]] + [f"≥{edges[-1]:.1f}"]
    labels = []
    for i, e in enumerate(edges):
        nxt = edges[i + 1] if i + 1 < len(edges) else None
        labels.append(f"{e:g}" if nxt is None or nxt - e <= 1 else f"{e:g}–{nxt - 1:g}")
    labels[-1] = f"≥{edges[-1]:g}"
    return labels


# ------------------------------------------------------------------------------------- funnel
def funnel(stages: list[dict[str, Any]]) -> Any:
    """Rows in → kept + rejected by reason, one bar per stage, in the chain's order."""
    reasons = sorted({r for s in stages for r in s["totals"]["rejected_by_reason"]})
    color = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(reasons)}
    fig, ax = _new(8.5, 0.42 * len(stages) + 1.3)
    a = ax[0][0]
    names = [s["name"] for s in stages][::-1]
    for y, s in enumerate(stages[::-1]):
        t = s["totals"]
        out = t.get("rows_consumed", t["rows_out"])
        a.barh(y, out, color=KEPT, label="kept" if y == 0 else None)
        left = out
        for r in reasons:
            n = t["rejected_by_reason"].get(r, 0)
            if n:
                a.barh(y, n, left=left, color=color[r])
                left += n
        a.text(left, y, f"  {t['rows_in']:,} in → {t['rows_out']:,} out", va="center", fontsize=7)
    for r in reasons:
        a.barh(0, 0, color=color[r], label=r)
    a.set_yticks(range(len(names)), names)
    a.set_xlabel("rows")
    a.set_xlim(0, max(1, max(s["totals"]["rows_in"] for s in stages)) * 1.35)
    a.legend(fontsize=7, loc="lower right", frameon=False)
    a.set_title("Funnel: rows in each stage, kept and rejected by reason")
    return fig


# ------------------------------------------------------------------------------------- facets
def facets(stage: dict[str, Any]) -> Any | None:
    """Kept and rejected rows per value of each facet column (category, temperature, language, ...)."""
    kf = stage["kept"].get("facets", {})
    rf = stage["rejected"].get("facets", {})
    names = [n for n in sorted(set(kf) | set(rf)) if "|" not in n]
    if not names:
        return None
    fig, ax = _new(3.0 * len(names) + 0.5, 2.5, ncols=len(names))
    for a, n in zip(ax[0], names):
        keys = sorted(set(kf.get(n, {})) | set(rf.get(n, {})), key=num_key)
        k = [kf.get(n, {}).get(x, 0) for x in keys]
        r = [rf.get(n, {}).get(x, 0) for x in keys]
        xs = range(len(keys))
        a.bar(xs, k, color=KEPT, label="kept")
        a.bar(xs, r, bottom=k, color=REJ, label="rejected")
        a.set_xticks(list(xs), keys, rotation=45 if len(keys) > 4 else 0, ha="right" if len(keys) > 4 else "center")
        a.set_title(n)
    ax[0][0].legend(fontsize=7, frameon=False)
    return fig


def _short(v: str) -> str:
    """``0.844444`` as ``0.84``: a label, the cell keeps its exact value."""
    try:
        return f"{float(v):.2f}"
    except ValueError:
        return v


def heat(hm: dict[str, Any]) -> Any:
    """Kept share of each (system prompt category, temperature) cell over the chain."""
    cats, temps = hm["categories"], hm["temperatures"]
    grid = [[math.nan] * len(temps) for _ in cats]
    for i, c in enumerate(cats):
        for j, t in enumerate(temps):
            kept, planned = hm["cells"].get(f"{c}|{t}", (0, 0))
            grid[i][j] = kept / planned if planned else math.nan
    fig, ax = _new(max(4.8, 0.62 * len(temps) + 2.4), 0.42 * len(cats) + 1.3)
    a = ax[0][0]
    im = a.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    a.set_xticks(range(len(temps)), [_short(t) for t in temps], rotation=45 if len(temps) > 6 else 0)
    a.set_yticks(range(len(cats)), cats)
    for i, c in enumerate(cats):
        for j, t in enumerate(temps):
            kept, planned = hm["cells"].get(f"{c}|{t}", (0, 0))
            if planned:
                a.text(j, i, f"{kept}/{planned}", ha="center", va="center", fontsize=6,
                       color="white" if grid[i][j] < 0.6 else "black")
    fig.colorbar(im, ax=a, label="kept share")
    a.set_title("Kept share per (category, temperature)")
    a.set_xlabel(f"temperature  ({hm['last']} kept / {hm['first']} planned)")
    return fig


# ------------------------------------------------------------------------------------- distributions
def histograms(stage: dict[str, Any], kind: str = "lengths") -> Any | None:
    """Small multiples: one panel per measure (tokens, characters, turns, or translation length ratio),
    kept and rejected rows on the same bins."""
    key = "ratios" if kind == "ratio" else "lengths"
    kept = stage["kept"].get(key, {})
    rej = stage["rejected"].get(key, {}) if kind != "ratio" else {}
    order = {"(tokens)": 0, "(chars)": 1, "(turns)": 2}
    names = sorted(kept, key=lambda n: (order.get(n[n.rfind("("):], 3), n))[:6]
    if not names:
        return None
    edges = RATIO_EDGES if kind == "ratio" else LENGTH_EDGES
    labels = _bin_labels(edges, "ratio" if kind == "ratio" else "length")
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, ax = _new(3.3 * ncols, 2.3 * nrows, ncols=ncols, nrows=nrows)
    for i in range(nrows * ncols):
        a = ax[i // ncols][i % ncols]
        if i >= len(names):
            a.set_axis_off()
            continue
        n = names[i]
        k = kept[n]["all"] if isinstance(kept[n], dict) else kept[n]
        r = (rej.get(n) or {}).get("all") if isinstance(rej.get(n), dict) else None
        used = [j for j, v in enumerate(k) if v or (r and r[j])]
        lo, hi = (min(used), max(used) + 1) if used else (0, len(k))
        xs = list(range(lo, hi))
        a.bar(xs, k[lo:hi], color=KEPT, alpha=0.85, label="kept")
        if r:
            a.bar(xs, r[lo:hi], color=REJ, alpha=0.55, label="rejected")
        step = max(1, len(xs) // 8)
        a.set_xticks(xs[::step], labels[lo:hi][::step], rotation=45, ha="right", fontsize=6)
        a.set_title(n, fontsize=8)
        if i == 0:
            a.legend(fontsize=6, frameon=False)
    fig.suptitle("Translation length ratio (characters, target / source)" if kind == "ratio"
                 else "Lengths (fixed log2 bins)", fontsize=9)
    return fig


def by_facet(stage: dict[str, Any], facet: str) -> Any | None:
    """Mean-free view of token lengths per facet value: one line per value over the same bins."""
    kept = stage["kept"].get("lengths", {})
    names = [n for n in sorted(kept) if n.endswith("(tokens)") and any(k.startswith(f"{facet}=") for k in kept[n])]
    if not names:
        return None
    fig, ax = _new(4.2 * len(names), 2.4, ncols=len(names))
    labels = _bin_labels(LENGTH_EDGES, "length")
    for a, n in zip(ax[0], names):
        series = {k.split("=", 1)[1]: v for k, v in kept[n].items() if k.startswith(f"{facet}=")}
        used = [j for v in series.values() for j, c in enumerate(v) if c]
        lo, hi = (min(used), max(used) + 1) if used else (0, len(LENGTH_EDGES))
        for i, (val, counts) in enumerate(sorted(series.items(), key=lambda kv: num_key(kv[0]))):
            tot = sum(counts) or 1
            a.plot(range(lo, hi), [c / tot for c in counts[lo:hi]], marker="o", ms=2.5, lw=1,
                   color=plt.get_cmap("viridis")(i / max(1, len(series) - 1)), label=val)
        a.set_xticks(range(lo, hi), labels[lo:hi], rotation=45, ha="right", fontsize=6)
        a.set_ylabel("share of kept rows")
        a.set_title(f"{n} per {facet}")
        a.legend(fontsize=6, frameon=False, ncol=2)
    return fig


def shares(title: str, table: dict[str, dict[str, int]]) -> Any | None:
    """Stacked 100% bars: one bar per row key, segments per value (languages per column, sources per
    mixture...)."""
    if not table:
        return None
    values = sorted({v for d in table.values() for v in d}, key=lambda v: -sum(d.get(v, 0) for d in table.values()))
    fig, ax = _new(7.5, 0.38 * len(table) + 1.1)
    a = ax[0][0]
    for y, counts in enumerate(table.values()):
        tot = sum(counts.values()) or 1
        left = 0.0
        for i, v in enumerate(values):
            w = counts.get(v, 0) / tot
            if w:
                a.barh(y, w, left=left, color=PALETTE[i % len(PALETTE)], label=v if y == 0 or v not in
                       table[next(iter(table))] else None)
                if w > 0.08:
                    a.text(left + w / 2, y, f"{v} {w:.0%}", ha="center", va="center", fontsize=6, color="white")
                left += w
    a.set_yticks(range(len(table)), list(table))
    a.set_xlim(0, 1)
    a.set_title(title)
    return fig


def mixture(rows: list[dict[str, Any]]) -> Any | None:
    """Requested against achieved share per source (rows and tokens)."""
    if not rows:
        return None
    fig, ax = _new(7.5, 0.45 * len(rows) + 1.2)
    a = ax[0][0]
    ys = range(len(rows))
    h = 0.27
    a.barh([y - h for y in ys], [r["requested_share"] or 0 for r in rows], height=h, color="#7f7f7f",
           label="requested")
    a.barh(list(ys), [r["row_share"] for r in rows], height=h, color=KEPT, label="rows achieved")
    a.barh([y + h for y in ys], [r["token_share"] for r in rows], height=h, color="#4bacc6", label="tokens achieved")
    a.set_yticks(list(ys), [r["source"] for r in rows])
    a.set_xlim(0, 1)
    a.legend(fontsize=7, frameon=False)
    a.set_title("Mixture: requested vs achieved share per source")
    return fig


# ------------------------------------------------------------------------------------- training
def training(run: dict[str, Any]) -> Any | None:
    """Loss with the learning rate, tokens/s per GPU, and MFU when measured; every resume and
    preemption a vertical line on each panel."""
    steps = run["steps"]
    if not steps:
        return None
    panels = [("loss", "loss"), ("tokens_per_s_per_gpu", "tokens/s/GPU")]
    if any("mfu" in s for s in steps):
        panels.append(("mfu", "MFU"))
    fig, ax = _new(3.4 * len(panels), 2.5, ncols=len(panels))
    xs = [s["step"] for s in steps]
    for a, (k, label) in zip(ax[0], panels):
        a.plot(xs, [s.get(k, math.nan) for s in steps], color="#1f497d", lw=1.2, marker="o" if len(xs) < 30 else None,
               ms=2.5)
        a.set_title(label)
        a.set_xlabel("step")
        a.ticklabel_format(axis="y", useOffset=False, style="plain")
        if k == "loss" and any("lr" in s for s in steps):
            b = a.twinx()
            b.plot(xs, [s.get("lr", math.nan) for s in steps], color="#e39c37", lw=0.9, ls="--")
            b.set_ylabel("learning rate", color="#e39c37")
            b.tick_params(axis="y", labelsize=6, colors="#e39c37")
        for e in run["events"]:
            if e.get("event") in ("resume", "preempted"):
                c = "#c0504d" if e["event"] == "preempted" else "#8064a2"
                a.axvline(e.get("step", 0), color=c, ls=":", lw=1)
                a.text(e.get("step", 0), a.get_ylim()[1], e["event"], rotation=90, va="top", ha="right", fontsize=6,
                       color=c)
    fig.suptitle(run["name"], fontsize=9)
    return fig


def losses(runs: list[dict[str, Any]]) -> Any | None:
    """Every run's loss on one panel (the study's cells side by side)."""
    runs = [r for r in runs if r["steps"]]
    if len(runs) < 2:
        return None
    fig, ax = _new(7.5, 3.0)
    a = ax[0][0]
    for i, r in enumerate(runs):
        a.plot([s["step"] for s in r["steps"]], [s.get("loss", math.nan) for s in r["steps"]], lw=1.1,
               color=plt.get_cmap("tab10")(i % 10), label=r["name"])
    a.set_xlabel("step")
    a.set_ylabel("loss")
    a.legend(fontsize=6, frameon=False, ncol=2)
    a.set_title("Training loss of every run")
    return fig


# ------------------------------------------------------------------------------------- evaluation
def eval_averages(evals: list[dict[str, Any]]) -> Any | None:
    """Average score per language for each evaluated model."""
    langs = sorted({lang for e in evals for lang in e["averages"]})
    models = [e for e in evals if e["averages"]]
    if not models or not langs:
        return None
    fig, ax = _new(max(4.5, 0.5 * len(models) * len(langs) + 2), 2.8)
    a = ax[0][0]
    w = 0.8 / len(langs)
    for j, lang in enumerate(langs):
        vals = [e["averages"].get(lang) for e in models]
        a.bar([i + j * w for i in range(len(models))], [v if v is not None else 0 for v in vals], width=w,
              color=PALETTE[(j + 3) % len(PALETTE)], label=lang)
    a.set_xticks([i + 0.4 - w / 2 for i in range(len(models))], [e["model"] for e in models], rotation=30, ha="right")
    a.set_ylabel("average score (%)")
    a.legend(fontsize=7, frameon=False)
    a.set_title("Evaluation averages per language")
    return fig


def arena(group: str, ratings: list[dict[str, Any]]) -> Any:
    """Bradley-Terry scores with their bootstrap intervals, best first."""
    rs = sorted(ratings, key=lambda r: -r["score"])
    fig, ax = _new(6.5, 0.36 * len(rs) + 1.0)
    a = ax[0][0]
    ys = list(range(len(rs)))[::-1]
    a.errorbar([r["score"] for r in rs], ys,
               xerr=[[r["score"] - r.get("lower", r["score"]) for r in rs],
                     [r.get("upper", r["score"]) - r["score"] for r in rs]],
               fmt="o", color="#1f497d", ecolor="#7f7f7f", capsize=2, ms=3)
    a.set_yticks(ys, [f"{r['model']} (#{r.get('rank')})" for r in rs])
    a.set_xlabel("Bradley-Terry score (Elo scale)")
    a.set_title(f"Arena: {group}")
    return fig


# ------------------------------------------------------------------------------------- study
def dag(steps: list[dict[str, Any]]) -> Any | None:
    """The study's steps as a layered graph: a column per depth, an arrow per input, colored by
    status (complete, to do, changed)."""
    if not steps:
        return None
    names = [s["step"] for s in steps]
    deps = {s["step"]: [d for d in s["upstream"] if d in names] for s in steps}
    depth: dict[str, int] = {}

    def level(n: str, seen: tuple[str, ...] = ()) -> int:
        if n not in depth:
            depth[n] = 0 if not deps[n] or n in seen else 1 + max(level(d, seen + (n,)) for d in deps[n])
        return depth[n]

    for n in names:
        level(n)
    cols: dict[int, list[str]] = {}
    for n in names:
        cols.setdefault(depth[n], []).append(n)
    height = max(len(v) for v in cols.values())
    pos = {n: (x, (len(v) - 1) / 2 - i) for x, v in cols.items() for i, n in enumerate(v)}
    fig, ax = _new(1.75 * len(cols) + 0.6, 0.3 * height + 0.7)
    a = ax[0][0]
    status_color = {"complete": "#d7ecd9", "done": "#d7ecd9", "todo": "#f3f3f3", "changed": "#f7d9d8",
                    "running": "#fde9c9", "failed": "#f7d9d8"}
    for n in names:
        x, y = pos[n]
        for d in deps[n]:
            x0, y0 = pos[d]
            a.annotate("", xy=(x - 0.42, y), xytext=(x0 + 0.42, y0),
                       arrowprops={"arrowstyle": "->", "color": "#9a9a9a", "lw": 0.6})
    for s in steps:
        x, y = pos[s["step"]]
        a.text(x, y, s["step"], ha="center", va="center", fontsize=6.5,
               bbox={"boxstyle": "round,pad=0.25", "fc": status_color.get(s["status"] or "", "#ffffff"),
                     "ec": "#7f7f7f", "lw": 0.5})
    a.set_xlim(-0.6, len(cols) - 0.4)
    a.set_ylim(-height / 2 - 0.5, height / 2 + 0.5)
    a.set_axis_off()
    a.set_title("Study DAG (green: complete, grey: to do, red: changed)")
    return fig
