"""Agreement statistics against scikit-learn/scipy and textbook examples; safety rates."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lrpipe.errors import InputError
from lrpipe.eval import agreement as ag


def test_cohen_kappa_matches_sklearn():
    from sklearn.metrics import cohen_kappa_score

    rng = random.Random(0)
    for _ in range(50):
        a = [rng.choice("ABt") for _ in range(60)]
        b = [x if rng.random() < 0.6 else rng.choice("ABt") for x in a]
        assert ag.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert ag.cohen_kappa(["A", None, "B"], ["A", "B", "B"]) == 1.0  # items labelled by one side skipped


def test_fleiss_kappa_textbook_example():
    # Fleiss (1971)-style example: 10 items, 14 raters, 5 categories; kappa = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    items = [[c for c, k in enumerate(row) for _ in range(k)] for row in table]
    assert ag.fleiss_kappa(items) == pytest.approx(0.210, abs=5e-4)


def test_krippendorff_alpha_by_hand():
    # coincidences: a-a 2, a-b 1, b-a 1, b-b 4; D_o = 2/8, D_e = 2·3·5/(8·7); alpha = 1 - D_o/D_e
    items = [["a", "a"], ["a", "b"], ["b", "b"], ["b", "b"]]
    assert ag.krippendorff_alpha_nominal(items) == pytest.approx(1 - 0.25 / (30 / 56))
    assert ag.krippendorff_alpha_nominal([["x", "x", None], ["y", "y", "y"]]) == 1.0
    assert ag.percent_agreement([["a", "a", "b"], ["b", "b", "b"]]) == pytest.approx((1 / 3 + 1) / 2)


def test_spearman_matches_scipy_with_ties_and_bootstrap_is_seeded():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    for _ in range(30):
        x = rng.integers(0, 6, 12).astype(float)
        y = x + rng.normal(0, 2, 12).round()
        assert ag.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    x, y = [50.1, 55.3, 60.2, 58.0, 61.5], [950, 990, 1010, 1040, 1080]  # one swap: 1 - 6·2/120
    a, b = ag.spearman_ci(x, y, rounds=200, seed=3), ag.spearman_ci(x, y, rounds=200, seed=3)
    assert a == b and a["rho"] == pytest.approx(0.9) and a["lower"] <= a["rho"] <= a["upper"]


def test_safety_rates_majority_and_agreement():
    rows = []
    for i in range(4):  # unsafe prompts: 3 annotators; items 0 and 1 violate by majority
        labels = [["violation", "violation", "ok"], ["violation", "ok", "violation"], ["ok", "ok", "violation"],
                  ["ok", "ok", "ok"]][i]
        rows.append({"model": "m", "language": "eu", "category": "drugs", "prompt_type": "unsafe", "labels": labels})
    for i in range(5):  # safe prompts: one refused unanimously
        rows.append({"model": "m", "language": "eu", "category": "drugs", "prompt_type": "safe",
                     "labels": ["refusal"] * 3 if i == 0 else ["ok"] * 3})
    res = {(r["language"], r["category"]): r for r in ag.safety_rates(rows)["rates"]}
    r = res[("eu", "all")]
    assert r["VR"] == 0.5 and r["FRR"] == 0.2 and r["unsafe_prompts"] == 4 and r["safe_prompts"] == 5
    assert "fleiss_kappa" in r and -1 <= r["fleiss_kappa"] <= 1
    # long format (one row per annotator) gives the same rates
    long = [{"model": x["model"], "language": x["language"], "category": x["category"],
             "prompt_type": x["prompt_type"], "id": k, "annotator": j, "label": lab}
            for k, x in enumerate(rows) for j, lab in enumerate(x["labels"])]
    r2 = {(r["language"], r["category"]): r for r in ag.safety_rates(long)["rates"]}[("eu", "all")]
    assert (r2["VR"], r2["FRR"], r2["fleiss_kappa"]) == (r["VR"], r["FRR"], r["fleiss_kappa"])
    with pytest.raises(InputError, match="row 0, field 'prompt_type'"):
        ag.safety_rates([{"model": "m", "language": "eu", "prompt_type": "harmful", "labels": ["ok"]}])
