"""Arena: Bradley–Terry recovers simulated strengths, ties count half, seeded bootstrap, ranks, the
published logistic-regression formulation, files and figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lrpipe.errors import InputError
from lrpipe.eval import arena
from lrpipe.eval.arena import Battle


def simulate(theta: dict[str, float], n: int, seed: int = 0, tie_rate: float = 0.0) -> list[Battle]:
    rng = np.random.default_rng(seed)
    names = list(theta)
    out = []
    for _ in range(n):
        a, b = rng.choice(len(names), 2, replace=False)
        ma, mb = names[a], names[b]
        if rng.random() < tie_rate:
            out.append(Battle(ma, mb, "tie"))
            continue
        p = 1 / (1 + 10 ** (theta[mb] - theta[ma]))
        out.append(Battle(ma, mb, "model_a" if rng.random() < p else "model_b"))
    return out


def test_recovers_order_and_spacing():
    theta = {"m0": -0.6, "m1": -0.1, "m2": 0.2, "m3": 0.5}
    ratings = arena.rate(simulate(theta, 30_000), rounds=20)
    assert [r.model for r in ratings] == ["m3", "m2", "m1", "m0"]
    mean = np.mean(list(theta.values()))
    for r in ratings:
        want = 400 * (theta[r.model] - mean) + 1000
        assert abs(r.score - want) < 15, (r.model, r.score, want)
        assert r.lower <= r.score <= r.upper
    assert abs(np.mean([r.score for r in ratings]) - 1000) < 1e-6  # mean zero in θ


def test_ties_count_half():
    even = arena.rate([Battle("a", "b", "model_a"), Battle("a", "b", "model_b")], rounds=0)
    ties = arena.rate([Battle("a", "b", "tie"), Battle("b", "a", "tie")], rounds=0)
    assert [r.score for r in even] == pytest.approx([1000, 1000], abs=1e-6)
    assert [r.score for r in ties] == pytest.approx([1000, 1000], abs=1e-6)
    # one win and one tie: P(a beats b) = 3/4, so the gap is 400·log10(3)
    r = {x.model: x.score for x in arena.rate([Battle("a", "b", "model_a"), Battle("b", "a", "tie")], rounds=0)}
    assert r["a"] - r["b"] == pytest.approx(400 * math.log10(3), abs=1e-4)


def test_bootstrap_is_reproducible_with_a_seed():
    bs = simulate({"x": 0.0, "y": 0.2, "z": 0.3}, 600, seed=3, tie_rate=0.2)
    a = arena.rate(bs, rounds=30, seed=42)
    b = arena.rate(bs, rounds=30, seed=42)
    c = arena.rate(bs, rounds=30, seed=7)
    assert [(r.bootstrap_mean, r.lower, r.upper) for r in a] == [(r.bootstrap_mean, r.lower, r.upper) for r in b]
    assert [r.lower for r in a] != [r.lower for r in c]
    assert [r.score for r in a] == [r.score for r in c]  # the point estimate does not depend on the seed


def test_equal_to_the_published_logistic_regression_formulation():
    """FastChat's MLE formulation: a logistic regression without intercept on rows ±ln(10) at the two
    models, a decisive battle weighted 2 and a tie as one win for each side; score 400·coef + 1000."""
    from sklearn.linear_model import LogisticRegression

    bs = simulate({"a": -0.3, "b": 0.0, "c": 0.1, "d": 0.4, "e": 0.45}, 3000, seed=5, tie_rate=0.15)
    models = sorted({b.model_a for b in bs} | {b.model_b for b in bs})
    idx = {m: i for i, m in enumerate(models)}
    X, y, w = [], [], []
    for b in bs:
        x = np.zeros(len(models))
        x[idx[b.model_a]], x[idx[b.model_b]] = math.log(10), -math.log(10)
        if b.winner == "tie":
            X += [x, x]
            y += [1, 0]
            w += [1, 1]
        else:
            X.append(x)
            y.append(1 if b.winner == "model_a" else 0)
            w.append(2)
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-10, max_iter=10_000)
    lr.fit(np.array(X), np.array(y), sample_weight=np.array(w, float))
    coef = lr.coef_[0] - lr.coef_[0].mean()
    ref = {m: 400 * coef[i] + 1000 for m, i in idx.items()}
    ours = {r.model: r.score for r in arena.rate(bs, rounds=0)}
    for m in models:
        assert abs(ours[m] - ref[m]) < 0.01, (m, ours[m], ref[m])


def test_ranks_study_and_ci_aware():
    bs = [Battle("a", "b", "tie")] * 50 + [Battle("a", "c", "model_a")] * 40 + [Battle("c", "a", "model_a")] * 10
    bs += [Battle("b", "c", "model_a")] * 40 + [Battle("c", "b", "model_a")] * 10
    r = {x.model: x for x in arena.rate(bs, rounds=50)}
    assert r["a"].rank == r["b"].rank == 1 and r["c"].rank == 3  # equal rounded scores share the best rank
    assert r["c"].rank_ci == 1 + sum(x.lower > r["c"].upper for x in r.values())
    assert r["a"].rank_ci == 1


def test_files_errors_and_figures(tmp_path):
    p = tmp_path / "battles.jsonl"
    rows = [{"model_a": b.model_a, "model_b": b.model_b, "winner": b.winner, "criterion": c}
            for c in ("content", "language") for b in simulate({"x": 0.0, "y": 0.3, "z": 0.1}, 300, seed=1, tie_rate=0.1)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = arena.run_arena([p], tmp_path / "out", rounds=10)
    assert set(res["groups"]) == {"all", "content", "language"}
    assert res["groups"]["all"]["battles"] == 600
    for g in res["groups"].values():
        for f in g["figures"]:
            assert (tmp_path / "out" / f).stat().st_size > 1000
    assert "| rank | rank (CI) |" in (tmp_path / "out" / "ratings.md").read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"model_a": "x", "model_b": "y", "winner": "A"}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl, row 0, field 'winner'"):
        arena.read_battles([bad])


def test_cli_arena_agreement_and_correlate(tmp_path):
    from typer.testing import CliRunner

    from lrpipe.cli import app

    bs = simulate({"x": 0.0, "y": 0.3, "z": 0.1, "w": -0.2}, 400, seed=2, tie_rate=0.1)
    rows = []
    for k, b in enumerate(bs):
        rows.append({"model_a": b.model_a, "model_b": b.model_b, "winner": b.winner, "annotator": "human",
                     "question_id": str(k)})
        # a judge that saw the answers in the other order and agrees 80% of the time
        flip = {"model_a": "model_b", "model_b": "model_a", "tie": "tie"}[b.winner]
        rows.append({"model_a": b.model_b, "model_b": b.model_a, "annotator": "judge", "question_id": str(k),
                     "winner": flip if k % 5 else "tie"})
    p = tmp_path / "b.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(app, ["arena", str(p), "--out", str(tmp_path / "a"), "--rounds", "10", "--by", "annotator"])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "a" / "ratings.json").read_text())
    assert set(out["groups"]) == {"all", "human", "judge"}
    agr = out["agreement"][0]
    assert agr["items"] == 400 and 0.75 <= agr["agreement"] <= 0.85 and agr["kappa"] > 0.5
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"x": 50.0, "y": 60.0, "z": 55.0, "w": 40.0}))
    res = CliRunner().invoke(app, ["eval", "correlate", "--benchmarks", str(bench), "--arena",
                                   str(tmp_path / "a" / "ratings.json"), "--rounds", "100"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["rho"] == pytest.approx(1.0)
