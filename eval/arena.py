"""Arena scoring: Bradley–Terry ratings from pairwise battles, bootstrap intervals, ranks, figures
(README: "Evaluation"; the instruction study's human evaluation and the multimodal study's WildVision arena).

**Model.** ``P(a beats b) = 1 / (1 + 10^((θ_b − θ_a)))``; θ maximizes the likelihood of the battles
with a tie counted as half a win for each side (the outcome is 1, ½ or 0 in the log-likelihood,
exactly FastChat's ``compute_bt``). θ is identified up to a constant: it is centred to mean zero and
reported as ``400·θ + 1000`` (base-10 log-odds; the paper writes e, its published scores use 10).
Identical battles are folded into weighted unique (a, b, outcome) rows, so the fit costs the same for
a thousand or a million battles.

**Bootstrap.** ``rounds`` resamples of the battles with replacement (multinomial counts over the
unique rows, seeded: the study's released scoring used 100 rounds, seed 42), refit each; reported:
the point estimate, the bootstrap mean (what the study's tables show), and the ``lower``/``upper``
percentiles (5th–95th by default).

**Ranks.** ``rank``: by score, models with equal (rounded) scores sharing the best rank, as the study
reports them; ``rank_ci``: 1 + the number of models whose lower bound is above this model's upper
bound, as Chatbot Arena does (models whose intervals overlap share ranks).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lrpipe.errors import InputError

WINNERS = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}


# ------------------------------------------------------------------------------------------ battles
@dataclass
class Battle:
    model_a: str
    model_b: str
    winner: str
    criterion: str | None = None
    annotator: str | None = None
    language: str | None = None
    question_id: str | None = None
    #: a verdict of an LLM judge (read from a ``pipe judge`` directory), not of a person
    judge: bool = False


#: battle fields ratings can be grouped by (``pipe arena --by``)
GROUP_FIELDS = ("criterion", "language", "annotator", "question_id")

#: the released arena layout (the instruction study's ``HiTZ/ebaluatoia``): one row per vote, a winner
#: column per dimension, the two conversations beside them (``conv_a``, ``conv_b``)
DIMENSIONS = {"winner": "global", "winner_content": "content", "winner_language": "language"}


def _table(path: str | Path) -> tuple[Any, bool]:
    """(rows as an Arrow table, whether they are an LLM judge's) from a file, a shard directory or a Hub
    dataset (``hf://HiTZ/ebaluatoia:25-03``)."""
    from lrpipe.readers import read_table
    from lrpipe.shards import ShardDir
    from lrpipe.sources import is_hub_spec, open_source

    if ShardDir.is_shard_dir(path):
        sd = ShardDir.open(path)
        return sd.read_all(), sd.header().get("stage") == "judge"
    if is_hub_spec(str(path)) and not Path(path).exists():
        import pyarrow as pa

        src = open_source(str(path))
        tables = [src.read_unit(u) for u in src.units()]
        return pa.concat_tables(tables, promote_options="permissive"), False
    return read_table(str(path)), False


def read_battles(paths: list[str | Path]) -> list[Battle]:
    """Battles from JSONL/JSON/CSV/Parquet files, ``pipe judge`` shard directories or Hub datasets.

    Two layouts: one battle per row (``model_a, model_b, winner`` and optionally ``criterion, annotator,
    language, question_id``), or the released arena's, one vote per row with a winner per dimension
    (``winner`` → ``global``, ``winner_content`` → ``content``, ``winner_language`` → ``language``; the
    voter's ``username`` is the annotator), each dimension a battle of its own and a missing one skipped.
    A bad row is an error naming file, row and field."""
    out: list[Battle] = []
    for p in paths:
        table, judge = _table(p)
        for col in ("model_a", "model_b", "winner"):
            if col not in table.column_names:
                raise InputError(f"missing column (have {table.column_names})", path=str(p), field=col)
        wide = any(c in table.column_names for c in ("winner_content", "winner_language"))
        for i, r in enumerate(table.to_pylist()):
            for col in ("model_a", "model_b"):
                if not r.get(col):
                    raise InputError("empty model name", path=str(p), row=i, field=col)
            if r["model_a"] == r["model_b"]:
                raise InputError("a model cannot battle itself", path=str(p), row=i, field="model_b")
            if wide:
                votes = [(DIMENSIONS[c], c) for c in DIMENSIONS if r.get(c) not in (None, "")]
                annotator = r.get("annotator") or r.get("username")
                qid = r.get("question_id") or r.get("id") or f"{Path(str(p)).name}:{i}"
            else:
                votes = [(r.get("criterion"), "winner")]
                annotator, qid = r.get("annotator"), r.get("question_id")
            for criterion, col in votes:
                w = str(r.get(col) or "").strip().lower()
                if w not in WINNERS:
                    raise InputError(f"winner must be one of {sorted(WINNERS)}, got {r.get(col)!r}", path=str(p),
                                     row=i, field=col)
                out.append(Battle(str(r["model_a"]), str(r["model_b"]), w,
                                  *(None if v is None else str(v) for v in (criterion, annotator, r.get("language"),
                                                                            qid)), judge=judge))
    return out


def fold(battles: list[Battle]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Models (sorted), and the unique (a, b, outcome) rows with their counts."""
    models = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    index = {m: i for i, m in enumerate(models)}
    rows = np.array([(index[b.model_a], index[b.model_b], int(WINNERS[b.winner] * 2)) for b in battles],
                    np.int64).reshape(-1, 3)
    uniq, counts = np.unique(rows, axis=0, return_counts=True)
    return models, uniq[:, :2], uniq[:, 2] / 2.0, counts.astype(np.float64)


# ------------------------------------------------------------------------------------------ fitting
def _loss_grad(theta: np.ndarray, pairs: np.ndarray, outcome: np.ndarray, weight: np.ndarray,
               alpha: float) -> tuple[float, np.ndarray]:
    z = alpha * (theta[pairs[:, 0]] - theta[pairs[:, 1]])
    # log σ(z) and log σ(−z) without overflow
    log_p = -np.logaddexp(0.0, -z)
    log_q = -np.logaddexp(0.0, z)
    loss = -float(np.sum(weight * (outcome * log_p + (1.0 - outcome) * log_q)))
    g_pair = -alpha * weight * (outcome - np.exp(log_p))
    grad = np.bincount(pairs[:, 0], g_pair, len(theta)) - np.bincount(pairs[:, 1], g_pair, len(theta))
    return loss, grad


def fit_bt(pairs: np.ndarray, outcome: np.ndarray, weight: np.ndarray, n_models: int, base: float = 10.0,
           tol: float = 1e-10) -> np.ndarray:
    """Maximum-likelihood θ (base-``base`` log-odds), centred to mean zero."""
    from scipy.optimize import minimize

    alpha = math.log(base)
    res = minimize(_loss_grad, np.zeros(n_models), args=(pairs, outcome, weight, alpha), jac=True,
                   method="L-BFGS-B", options={"maxiter": 2000, "gtol": tol})
    theta = res.x - res.x.mean()
    # a few Newton steps on top: the optimum to machine precision (scores equal to another exact MLE,
    # FastChat's logistic regression, to 1e-6), at the cost of an n×n solve
    a, b = pairs[:, 0], pairs[:, 1]
    for _ in range(3):
        _, grad = _loss_grad(theta, pairs, outcome, weight, alpha)
        z = alpha * (theta[a] - theta[b])
        h = alpha * alpha * weight / (2.0 + np.exp(z) + np.exp(-z))  # w·σ(z)·σ(−z)
        hess = np.zeros((n_models, n_models))
        np.add.at(hess, (a, a), h)
        np.add.at(hess, (b, b), h)
        np.add.at(hess, (a, b), -h)
        np.add.at(hess, (b, a), -h)
        step = np.linalg.lstsq(hess, -grad, rcond=None)[0]
        if not np.all(np.isfinite(step)):
            break
        theta = theta + step
        theta -= theta.mean()
        if np.max(np.abs(step)) < 1e-13:
            break
    return theta


@dataclass
class Rating:
    model: str
    score: float
    bootstrap_mean: float
    lower: float
    upper: float
    rank: int
    rank_ci: int
    battles: int
    wins: float


def rate(battles: list[Battle], *, rounds: int = 100, seed: int = 42, lower_pct: float = 5.0,
         upper_pct: float = 95.0, scale: float = 400.0, offset: float = 1000.0, base: float = 10.0,
         rank_decimals: int = 0) -> list[Rating]:
    """Bradley–Terry ratings with bootstrap intervals and both kinds of rank, best first."""
    if not battles:
        return []
    models, pairs, outcome, weight = fold(battles)
    n = len(models)
    point = scale * fit_bt(pairs, outcome, weight, n, base) + offset
    rng = np.random.default_rng(seed)
    total = int(weight.sum())
    boots = np.empty((rounds, n))
    for r in range(rounds):
        w = rng.multinomial(total, weight / weight.sum()).astype(np.float64)
        boots[r] = scale * fit_bt(pairs, outcome, w, n, base) + offset
    lo = np.percentile(boots, lower_pct, axis=0) if rounds else point
    hi = np.percentile(boots, upper_pct, axis=0) if rounds else point
    mean = boots.mean(axis=0) if rounds else point
    counts = np.bincount(pairs[:, 0], weight, n) + np.bincount(pairs[:, 1], weight, n)
    wins = np.bincount(pairs[:, 0], weight * outcome, n) + np.bincount(pairs[:, 1], weight * (1 - outcome), n)
    rounded = np.round(point, rank_decimals)
    out = []
    for i, m in enumerate(models):
        out.append(Rating(m, float(point[i]), float(mean[i]), float(lo[i]), float(hi[i]),
                          rank=1 + int(np.sum(rounded > rounded[i])), rank_ci=1 + int(np.sum(lo > hi[i])),
                          battles=int(counts[i]), wins=float(wins[i])))
    return sorted(out, key=lambda r: -r.score)


def pairwise(battles: list[Battle]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Models, battle counts and win fractions (row model vs column model; a tie is half a win)."""
    models = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    idx = {m: i for i, m in enumerate(models)}
    n = len(models)
    count = np.zeros((n, n))
    win = np.zeros((n, n))
    for b in battles:
        a, c = idx[b.model_a], idx[b.model_b]
        s = WINNERS[b.winner]
        count[a, c] += 1
        count[c, a] += 1
        win[a, c] += s
        win[c, a] += 1 - s
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(count > 0, win / count, np.nan)
    return models, count, frac


# ------------------------------------------------------------------------------------------ votes
def _item(b: Battle) -> tuple[Any, tuple[str, str], Any]:
    """What a vote is about: the question, the pair of models (in either order) and the criterion."""
    return b.question_id, tuple(sorted((b.model_a, b.model_b))), b.criterion


def _label(b: Battle) -> str:
    """A vote as the model it prefers, or ``tie``: the same verdict in either answer order."""
    return b.model_a if b.winner == "model_a" else b.model_b if b.winner == "model_b" else "tie"


def majority(battles: list[Battle]) -> tuple[list[Battle], list[tuple]]:
    """The people's verdict per item by majority vote (judges' battles are left out): one battle per item
    whose most frequent label is unique (annotator ``majority``), and the items where it is not
    (*inconclusive*: the multimodal study's 3% of "annotation discrepancies")."""
    votes: dict[tuple, list[str]] = {}
    for b in battles:
        if not b.judge:
            votes.setdefault(_item(b), []).append(_label(b))
    decided, inconclusive = [], []
    for item, labels in votes.items():
        (top, n), *rest = Counter(labels).most_common()
        if rest and rest[0][1] == n:
            inconclusive.append(item)
            continue
        qid, (m1, m2), criterion = item
        winner = "model_a" if top == m1 else "model_b" if top == m2 else "tie"
        decided.append(Battle(m1, m2, winner, criterion, "majority", None, qid))
    return decided, inconclusive


def win_tie_loss(battles: list[Battle], inconclusive: list[tuple] | None = None,
                 field: str = "criterion") -> list[dict[str, Any]]:
    """Win / tie / loss counts and percentages per value of ``field`` and pair of models, as the
    multimodal study's Table 2 reports them: a tie is a tie (not half a win), ``tie (bothbad)`` is a tie,
    and items without a majority are counted apart (``inconclusive``), in the percentages' total."""
    cells: dict[tuple[str, str, str], Counter] = {}
    for b in battles:
        m1, m2 = sorted((b.model_a, b.model_b))
        c = cells.setdefault((getattr(b, field) or "all", m1, m2), Counter())
        lab = _label(b)
        c["first" if lab == m1 else "second" if lab == m2 else "tie"] += 1
    for _qid, (m1, m2), criterion in inconclusive or []:
        cells.setdefault((criterion or "all", m1, m2), Counter())["inconclusive"] += 1
    out = []
    for (group, m1, m2), c in sorted(cells.items()):
        n = sum(c.values())
        out.append({"group": group, "model_1": m1, "model_2": m2, "items": n, "wins_1": c["first"],
                    "ties": c["tie"], "wins_2": c["second"], "inconclusive": c["inconclusive"],
                    "win_pct_1": 100 * c["first"] / n, "tie_pct": 100 * c["tie"] / n,
                    "win_pct_2": 100 * c["second"] / n, "inconclusive_pct": 100 * c["inconclusive"] / n})
    return out


def wtl_markdown(rows: list[dict[str, Any]], title: str) -> str:
    lines = [f"### {title}", "", "| criterion | model 1 | wins % | ties % | model 2 wins % | model 2 | inconclusive % "
             "| items |", "|---|---|---:|---:|---:|---|---:|---:|"]
    lines += [f"| {r['group']} | {r['model_1']} | {r['win_pct_1']:.2f} | {r['tie_pct']:.2f} | {r['win_pct_2']:.2f} | "
              f"{r['model_2']} | {r['inconclusive_pct']:.2f} | {r['items']} |" for r in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ reports
def by_group(battles: list[Battle], field: str) -> dict[str, list[Battle]]:
    groups: dict[str, list[Battle]] = {}
    for b in battles:
        groups.setdefault(getattr(b, field) or "all", []).append(b)
    return groups


def markdown_table(ratings: list[Rating], title: str) -> str:
    lines = [f"### {title}", "", "| rank | rank (CI) | model | score | bootstrap mean | interval | battles | win rate |",
             "|---:|---:|---|---:|---:|---|---:|---:|"]
    for r in ratings:
        lines.append(f"| {r.rank} | {r.rank_ci} | {r.model} | {r.score:.1f} | {r.bootstrap_mean:.1f} | "
                     f"{r.lower:.1f} – {r.upper:.1f} | {r.battles} | {r.wins / max(r.battles, 1):.1%} |")
    return "\n".join(lines) + "\n"


def figures(battles: list[Battle], ratings: list[Rating], out: Path, name: str) -> list[Path]:
    """Win-fraction and battle-count heatmaps and ratings with interval bars, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [r.model for r in ratings]
    models, count, frac = pairwise(battles)
    perm = [models.index(m) for m in order]
    count, frac = count[np.ix_(perm, perm)], frac[np.ix_(perm, perm)]
    paths = []
    for kind, mat, fmt in (("win_fraction", frac, "{:.2f}"), ("battle_count", count, "{:.0f}")):
        size = max(4.0, 0.6 * len(order) + 2)
        fig, ax = plt.subplots(figsize=(size, size))
        im = ax.imshow(mat, cmap="RdBu" if kind == "win_fraction" else "Blues",
                       vmin=0 if kind == "win_fraction" else None, vmax=1 if kind == "win_fraction" else None)
        ax.set_xticks(range(len(order)), order, rotation=45, ha="right")
        ax.set_yticks(range(len(order)), order)
        ax.set_xlabel("model B")
        ax.set_ylabel("model A")
        for i in range(len(order)):
            for j in range(len(order)):
                if not np.isnan(mat[i, j]) and (kind == "win_fraction" or mat[i, j] > 0):
                    ax.text(j, i, fmt.format(mat[i, j]), ha="center", va="center", fontsize=8)
        ax.set_title(f"{name}: {'fraction of A wins (ties ½)' if kind == 'win_fraction' else 'battles'}")
        fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        p = out / f"{name}.{kind}.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(order) + 3), 4))
    x = np.arange(len(ratings))
    ax.errorbar(x, [r.score for r in ratings],
                yerr=[[r.score - r.lower for r in ratings], [r.upper - r.score for r in ratings]], fmt="o", capsize=4)
    ax.set_xticks(x, order, rotation=45, ha="right")
    ax.set_ylabel("Bradley–Terry score")
    ax.set_title(f"{name}: ratings with bootstrap intervals")
    fig.tight_layout()
    p = out / f"{name}.ratings.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths + [p]


def run_arena(paths: list[str | Path], out: str | Path, *, group_field: str = "criterion", **kw: Any) -> dict:
    if group_field not in GROUP_FIELDS:
        raise ValueError(f"group_field: one of {', '.join(GROUP_FIELDS)} (got {group_field!r})")
    """Rate every group (criterion by default, plus all battles together), write ``ratings.json``,
    ``ratings.md`` and the figures into ``out``; return the JSON."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    battles = read_battles(paths)
    if not battles:
        raise InputError("no battles", path=str(paths[0]) if paths else None)
    groups = {"all": battles}
    if any(getattr(b, group_field) for b in battles):
        groups |= {k: v for k, v in by_group(battles, group_field).items() if k != "all"}
    result: dict[str, Any] = {"settings": {"group_field": group_field, **kw}, "groups": {}}
    md = ["# Arena ratings", ""]
    for name, bs in groups.items():
        ratings = rate(bs, **kw)
        figs = figures(bs, ratings, out, _safe(name))
        result["groups"][name] = {"battles": len(bs), "ratings": [asdict(r) for r in ratings],
                                  "figures": [p.name for p in figs]}
        md.append(markdown_table(ratings, f"{name} ({len(bs)} battles)"))
    result["win_tie_loss"] = wtl = verdict_tables(battles)
    for source, rows in wtl.items():
        md.append(wtl_markdown(rows, f"Win / tie / loss: {source}"))
    agreement = annotator_agreement(battles)
    if agreement:
        result["agreement"] = agreement
        md += ["### Agreement (Cohen's kappa on shared items)", "", "| annotator A | annotator B | items | kappa | "
               "raw agreement |", "|---|---|---:|---:|---:|"]
        md += [f"| {a['annotator_a']} | {a['annotator_b']} | {a['items']} | {a['kappa']:.3f} | {a['agreement']:.1%} |"
               for a in agreement]
        summary = agreement_summary(battles, agreement)
        result["agreement_summary"] = summary
        if summary["people_mean_kappa"] is not None:
            md.append(f"\nMean Cohen's kappa over pairs of people: {summary['people_mean_kappa']:.3f} "
                      f"({summary['people_pairs']} pairs); items without a majority: {summary['inconclusive']}")
        for j in summary["judges_vs_majority"]:
            md.append(f"\nCohen's kappa of judge {j['judge']} against the people's majority: {j['kappa']:.3f} "
                      f"on {j['items']} items ({j['agreement']:.1%} raw agreement)")
    (out / "ratings.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "ratings.md").write_text("\n".join(md))
    return result


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_+" else "_" for c in name)


def annotator_agreement(battles: list[Battle]) -> list[dict[str, Any]]:
    """Cohen's kappa for every pair of annotators (a judge is an annotator) on the items both
    judged. An item is (question, the two models, criterion); its label is the winning *model*
    (or tie), so the same verdict given with the answers in either order counts as agreement."""
    from lrpipe.eval.agreement import cohen_kappa

    verdicts: dict[str, dict[tuple, str]] = {}
    for b in battles:
        if b.annotator is None:
            continue
        key = (b.question_id, tuple(sorted((b.model_a, b.model_b))), b.criterion)
        label = b.model_a if b.winner == "model_a" else b.model_b if b.winner == "model_b" else "tie"
        verdicts.setdefault(b.annotator, {})[key] = label
    out = []
    names = sorted(verdicts)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            shared = sorted(verdicts[x].keys() & verdicts[y].keys(), key=str)
            if not shared:
                continue
            a, c = [verdicts[x][k] for k in shared], [verdicts[y][k] for k in shared]
            out.append({"annotator_a": x, "annotator_b": y, "items": len(shared), "kappa": cohen_kappa(a, c),
                        "agreement": sum(p == q for p, q in zip(a, c)) / len(shared)})
    return out


def verdict_tables(battles: list[Battle]) -> dict[str, list[dict[str, Any]]]:
    """Win / tie / loss per criterion and pair: of the people's majority and of each judge when votes
    carry annotators (the multimodal study's Table 2, human and GPT-5 side by side), else of all battles."""
    people = [b for b in battles if not b.judge and b.annotator is not None]
    judges = sorted({b.annotator or "judge" for b in battles if b.judge})
    if not people and not judges:
        return {"all battles": win_tie_loss(battles)}
    out = {}
    if people:
        decided, inconclusive = majority(people)
        out["people (majority vote)"] = win_tie_loss(decided, inconclusive)
    for j in judges:
        out[f"judge {j}"] = win_tie_loss([b for b in battles if b.judge and (b.annotator or "judge") == j])
    return out


def agreement_summary(battles: list[Battle], pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """The multimodal study's agreement figures: the mean Cohen's kappa over pairs of people, and each
    judge's kappa against the people's majority vote (items with a majority only)."""
    from lrpipe.eval.agreement import cohen_kappa

    judges = {b.annotator for b in battles if b.judge}
    people_pairs = [a["kappa"] for a in pairs if a["annotator_a"] not in judges and a["annotator_b"] not in judges]
    decided, inconclusive = majority([b for b in battles if b.annotator is not None])
    truth = {_item(b): _label(b) for b in decided}
    versus = []
    for j in sorted(judges):
        got = {_item(b): _label(b) for b in battles if b.judge and b.annotator == j}
        shared = sorted(got.keys() & truth.keys(), key=str)
        if shared:
            x, y = [got[k] for k in shared], [truth[k] for k in shared]
            versus.append({"judge": j, "items": len(shared), "kappa": cohen_kappa(x, y),
                           "agreement": sum(a == b for a, b in zip(x, y)) / len(shared)})
    return {"people_mean_kappa": float(np.mean(people_pairs)) if people_pairs else None,
            "people_pairs": len(people_pairs), "inconclusive": len(inconclusive), "judges_vs_majority": versus}
