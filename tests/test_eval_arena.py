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


def fastchat_compute_bt(rows: list[dict], winner: str) -> dict[str, float]:
    """The Chatbot Arena / FastChat ``compute_bt`` formulation (the released scoring of the instruction
    study), written here from its definition: pivot tables of A wins, B wins and ties (both ways); a
    decisive battle weighs 2 and a tie 1 for each side; a logistic regression without intercept or
    penalty on rows of ±ln(10); score 400·coef + 1000."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    df = pd.DataFrame([{"model_a": r["model_a"], "model_b": r["model_b"], "winner": r[winner]} for r in rows
                       if r[winner] is not None])
    models = sorted(set(df.model_a) | set(df.model_b))
    base = pd.DataFrame(0, index=models, columns=models)

    def table(mask):
        return (base + pd.pivot_table(df[mask], index="model_a", columns="model_b", aggfunc="size",
                                      fill_value=0)).fillna(0)

    a_win, b_win = table(df.winner == "model_a"), table(df.winner == "model_b")
    tie = table(df.winner.isin(["tie", "tie (bothbad)"]))
    win = a_win * 2 + b_win.T * 2 + tie + tie.T
    X, Y, W = [], [], []
    for i, ma in enumerate(models):
        for j, mb in enumerate(models):
            if i == j:
                continue
            x = np.zeros(len(models))
            x[i], x[j] = math.log(10), -math.log(10)
            X += [x, x]
            Y += [1.0, 0.0]
            W += [win.loc[ma, mb], win.loc[mb, ma]]
    # FastChat fits with the default lbfgs, which stops with gradients near 1e-6; to compare at 1e-6 the
    # same regression is solved exactly: the last model's column dropped (the scores are defined up to a
    # constant, which made the Hessian singular), Newton's method, then centred as lbfgs's zero start keeps it
    lr = LogisticRegression(fit_intercept=False, C=np.inf, solver="newton-cholesky", tol=1e-15, max_iter=1000)
    lr.fit(np.array(X)[:, :-1], np.array(Y), sample_weight=np.array(W))
    coef = np.append(lr.coef_[0], 0.0)
    return {m: 400 * c + 1000 for m, c in zip(models, coef - coef.mean())}


def _vote(rng, p: float) -> str:
    u = rng.random()
    if u < 0.15:
        return "tie" if u < 0.12 else "tie (bothbad)"
    return "model_a" if rng.random() < min(max(p, 0.0), 1.0) else "model_b"


def released_arena_rows(n: int = 900, seed: int = 4) -> list[dict]:
    """Rows shaped exactly as the released arena (HiTZ/ebaluatoia): one vote per row, the two
    conversations, a winner per dimension (content, language, and the global one)."""
    rng = np.random.default_rng(seed)
    theta = {"gpt-4o": 0.5, "Latxa-Llama-3.1-70B-Instruct": 0.35, "exp_2_111": 0.1, "exp_1_011": 0.0,
             "Llama-3.1-8B-Instruct": -0.6}
    names = list(theta)
    choices = ["model_a", "model_b", "tie", "tie (bothbad)"]
    rows = []
    for i in range(n):
        a, b = rng.choice(len(names), 2, replace=False)
        p = 1 / (1 + 10 ** (theta[names[b]] - theta[names[a]]))
        content, language = (_vote(rng, p), _vote(rng, p + 0.05))
        rows.append({"timestamp": 1741000000.0 + i, "username": f"user{i % 37}", "user_language": "C1",
                     "user_education": "Bachelor", "model_a": names[a], "model_b": names[b],
                     "conv_a": [{"role": "user", "content": f"Galdera {i}"}, {"role": "assistant", "content": "A"}],
                     "conv_b": [{"role": "user", "content": f"Galdera {i}"}, {"role": "assistant", "content": "B"}],
                     "winner": content if content == language else str(rng.choice(choices)),
                     "winner_content": None if i % 50 == 7 else content, "winner_language": language})
    return rows


def test_released_arena_rows_rank_like_fastchat_per_dimension(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = released_arena_rows()
    path = tmp_path / "25-03.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    res = arena.run_arena([path], tmp_path / "out", rounds=20)
    assert set(res["groups"]) == {"all", "global", "content", "language"}
    assert res["groups"]["content"]["battles"] == sum(r["winner_content"] is not None for r in rows)
    for dim, col in (("global", "winner"), ("content", "winner_content"), ("language", "winner_language")):
        ref = fastchat_compute_bt(rows, col)
        ours = {r["model"]: r for r in res["groups"][dim]["ratings"]}
        assert set(ours) == set(ref)
        for m, score in ref.items():
            assert abs(ours[m]["score"] - score) < 1e-6, (dim, m, ours[m]["score"], score)
            assert ours[m]["lower"] <= ours[m]["upper"] and ours[m]["lower"] < ours[m]["score"] + 50
    # each vote's voter is its annotator; the conversations do not get in the way
    battles = arena.read_battles([path])
    assert {b.annotator for b in battles} == {f"user{i}" for i in range(37)}
    # the same rows read the way the Hub dataset is (hf://HiTZ/ebaluatoia:25-03 with a network; here a
    # local copy of a repo folder, read by datasets as the Hub one would be)
    (tmp_path / "repo").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "repo" / "train-00000-of-00001.parquet")
    hub = arena.read_battles([f"hf://{tmp_path}/repo"])
    assert sorted((b.model_a, b.model_b, b.winner, b.criterion) for b in hub) == sorted(
        (b.model_a, b.model_b, b.winner, b.criterion) for b in battles)


def test_majority_vote_mean_kappa_and_judge_against_the_people(tmp_path):
    """Four people label the same 8 items (the multimodal study's shared set), a judge the same items:
    the majority per item, the items without one, the mean pairwise kappa, the judge's kappa against the
    majority and the win / tie / loss table, each counted by hand."""
    from sklearn.metrics import cohen_kappa_score

    from lrpipe.eval.agreement import cohen_kappa
    from lrpipe.shards import ShardDir, UnitSpec

    # labels per item (latxa / llama / tie), by annotators p0..p3
    people = {"q0": ["latxa", "latxa", "latxa", "tie"], "q1": ["tie", "tie", "llama", "tie"],
              "q2": ["llama", "llama", "latxa", "latxa"],  # 2-2: inconclusive
              "q3": ["latxa", "tie", "latxa", "llama"], "q4": ["llama", "llama", "llama", "llama"],
              "q5": ["tie", "latxa", "tie", "tie"], "q6": ["latxa", "latxa", "tie", "tie"],  # 2-2: inconclusive
              "q7": ["llama", "tie", "llama", "llama"]}
    judge = {"q0": "latxa", "q1": "latxa", "q2": "llama", "q3": "latxa", "q4": "llama", "q5": "llama",
             "q6": "latxa", "q7": "llama"}

    def row(q, label, who, flip):
        a, b = ("llama", "latxa") if flip else ("latxa", "llama")
        w = "tie" if label == "tie" else "model_a" if label == a else "model_b"
        return {"question_id": q, "model_a": a, "model_b": b, "winner": w, "criterion": "overall", "annotator": who}

    human = [row(q, lab, f"p{k}", k % 2) for q, labs in people.items() for k, lab in enumerate(labs)]
    (tmp_path / "people.jsonl").write_text("".join(json.dumps(r) + "\n" for r in human))
    sd = ShardDir.create(tmp_path / "judge", stage="judge", config={}, plan=[UnitSpec(0, "u0")], inputs=[],
                         provenance={})
    import pyarrow as pa

    sd.write_unit(UnitSpec(0, "u0"), pa.Table.from_pylist([row(q, lab, "gpt-5", 0) for q, lab in judge.items()]),
                  None, rows_in=8)
    sd.refresh_manifest()
    res = arena.run_arena([tmp_path / "people.jsonl", tmp_path / "judge"], tmp_path / "out", rounds=5)
    majority = {"q0": "latxa", "q1": "tie", "q3": "latxa", "q4": "llama", "q5": "tie", "q7": "llama"}
    wtl = {r["group"]: r for r in res["win_tie_loss"]["people (majority vote)"]}["overall"]
    assert (wtl["wins_1"], wtl["ties"], wtl["wins_2"], wtl["inconclusive"]) == (2, 2, 2, 2)  # latxa, tie, llama
    assert wtl["win_pct_1"] == 25.0 and wtl["inconclusive_pct"] == 25.0
    jt = {r["group"]: r for r in res["win_tie_loss"]["judge gpt-5"]}["overall"]
    assert (jt["wins_1"], jt["ties"], jt["wins_2"]) == (4, 0, 4)
    s = res["agreement_summary"]
    pairs = [cohen_kappa_score([people[q][i] for q in people], [people[q][j] for q in people])
             for i in range(4) for j in range(i + 1, 4)]
    assert s["people_pairs"] == 6 and s["people_mean_kappa"] == pytest.approx(np.mean(pairs))
    assert s["inconclusive"] == 2
    (jv,) = s["judges_vs_majority"]
    shared = sorted(majority)
    assert jv["items"] == 6 and jv["kappa"] == pytest.approx(
        cohen_kappa([judge[q] for q in shared], [majority[q] for q in shared]))
    assert jv["kappa"] == pytest.approx(cohen_kappa_score([judge[q] for q in shared], [majority[q] for q in shared]))
    md = (tmp_path / "out" / "ratings.md").read_text()
    assert "Mean Cohen's kappa over pairs of people" in md and "judge gpt-5 against the people's majority" in md
