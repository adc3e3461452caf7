"""pipe eval report: the instruction study's analyses from the files the project writes — lm-eval result
folders of trained variants and their backbones, arena ratings, training runs — every number checked
against a hand computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrpipe.shards import ShardDir, UnitSpec

# task -> score per model (lm-eval's own task names; the suite names them Belebele, MMLU, EusTrivia)
SCORES = {
    "Llama-3.1-8B-Instruct": {"belebele_eus_Latn": 0.60, "mmlu_eu": 0.40, "eus_trivia": 0.30,
                              "belebele_eng_Latn": 0.90, "mmlu_en": 0.70},
    "Llama-3.1-8B": {"belebele_eus_Latn": 0.50, "mmlu_eu": 0.30, "eus_trivia": 0.20,
                     "belebele_eng_Latn": 0.80, "mmlu_en": 0.60},
    "INS_C_EU_I_EN": {"belebele_eus_Latn": 0.80, "mmlu_eu": 0.50, "eus_trivia": 0.60,
                      "belebele_eng_Latn": 0.86, "mmlu_en": 0.66},
    "INS_I_EU": {"belebele_eus_Latn": 0.70, "mmlu_eu": 0.46, "eus_trivia": 0.40,
                 "belebele_eng_Latn": 0.88, "mmlu_en": 0.70},
    "BAS_C_EU_I_EN+EU": {"belebele_eus_Latn": 0.76, "mmlu_eu": 0.42, "eus_trivia": 0.56,
                         "belebele_eng_Latn": 0.84, "mmlu_en": 0.62},
}
BACKBONE = {"INS_C_EU_I_EN": "meta-llama/Llama-3.1-8B-Instruct", "INS_I_EU": "meta-llama/Llama-3.1-8B-Instruct",
            "BAS_C_EU_I_EN+EU": "meta-llama/Llama-3.1-8B"}
SOURCES = {"INS_C_EU_I_EN": [("corpus_eu", "eu"), ("instructions_en", "en")],
           "INS_I_EU": [("instructions_eu", "eu")],
           "BAS_C_EU_I_EN+EU": [("corpus_eu", "eu"), ("instructions_en", "en"), ("instructions_eu", "eu")]}
# arena global scores: ranks of the Basque averages are 1..5 for C_EU_I_EN, BAS.., I_EU, INS, BAS;
# the arena swaps the first two, so rho = 1 - 6·(1+1)/(5·24) = 0.9
ARENA = {"global": {"INS_C_EU_I_EN": 1040, "BAS_C_EU_I_EN+EU": 1050, "INS_I_EU": 1000,
                    "Llama-3.1-8B-Instruct": 950, "Llama-3.1-8B": 900},
         "content": {"INS_C_EU_I_EN": 1060, "BAS_C_EU_I_EN+EU": 1030, "INS_I_EU": 1001,
                     "Llama-3.1-8B-Instruct": 940, "Llama-3.1-8B": 930}}


def lm_eval_folder(root: Path, model: str, pretrained: str) -> Path:
    d = root / "lm-eval" / model
    d.mkdir(parents=True)
    for i, (task, acc) in enumerate(SCORES[model].items()):
        (d / f"results_2025-03-0{i + 1}T00-00-00.json").write_text(json.dumps({
            "results": {task: {"alias": task, "acc,none": acc}},
            "configs": {task: {"metric_list": [{"metric": "acc"}]}},
            "n-samples": {task: {"original": 100, "effective": 100}}, "model_name": pretrained,
            "config": {"model": "vllm", "model_args": f"pretrained={pretrained}", "limit": None}}))
    return d


def training_run(root: Path, name: str) -> Path:
    """What pipe mix, pipe pack and pipe train leave: a mixture's header, the packed data's header, and the
    run's config.json and log.jsonl (2 ranks; started at t=1000, resumed at t=2000, step 2 logged twice)."""
    mix = ShardDir.create(root / "mix" / name, stage="mix", plan=[UnitSpec(0, "u")], config={"recipe": {
        "name": name, "target_lang": "eu", "sources": [{"name": n, "language": lang} for n, lang in SOURCES[name]]}})
    pack = ShardDir.create(root / "pack" / name, stage="pack", plan=[UnitSpec(0, "u")], config={
        "seq_len": 8192, "input": {"kind": "shards", "path": str(mix.path), "stage": "mix"}})
    run = root / "runs" / name
    (run / "final").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": BACKBONE[name], "data": str(pack.path), "log_every": 1}))
    log = [{"time": 1000.0, "event": "start", "step": 0, "world": 2, "device": "cuda:0"},
           {"time": 1010.0, "step": 1, "tokens": 1000}, {"time": 1020.0, "step": 2, "tokens": 1000},
           {"time": 2000.0, "event": "resume", "step": 1, "world": 2, "device": "cuda:0"},
           {"time": 2012.0, "step": 2, "tokens": 1000}, {"time": 2030.0, "step": 3, "tokens": 500},
           {"time": 2031.0, "event": "done", "step": 3}]
    (run / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in log))
    return run


def test_report_analyses_checked_by_hand(tmp_path):
    from typer.testing import CliRunner

    from lrpipe.cli import app

    folders, runs = [], []
    for model in SCORES:
        if model in BACKBONE:
            runs.append(training_run(tmp_path, model))
            folders.append(lm_eval_folder(tmp_path, model, str(tmp_path / "runs" / model / "final")))
        else:
            folders.append(lm_eval_folder(tmp_path, model, f"meta-llama/{model}"))
    arena_dir = tmp_path / "arena"
    arena_dir.mkdir()
    (arena_dir / "ratings.json").write_text(json.dumps({"groups": {g: {"ratings": [
        {"model": m, "score": s, "rank": 1, "lower": s - 10, "upper": s + 10} for m, s in scores.items()]}
        for g, scores in ARENA.items()}}))
    res = CliRunner().invoke(app, ["eval", "report", *map(str, folders), str(arena_dir), *map(str, runs),
                                   "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())["analyses"]

    # Figure 3: backbone and data of every model, read back from the runs' files; the Basque average
    eu_avg = {m: sum(v for t, v in s.items() if t in ("belebele_eus_Latn", "mmlu_eu", "eus_trivia")) / 3
              for m, s in SCORES.items()}
    rows = {r["model"]: r for r in rep["grouping"]["rows"]}
    assert {m: (r["backbone"], r["data"]) for m, r in rows.items()} == {
        "INS_C_EU_I_EN": ("Llama-3.1-8B-Instruct", "C_EU I_EN"), "INS_I_EU": ("Llama-3.1-8B-Instruct", "I_EU"),
        "BAS_C_EU_I_EN+EU": ("Llama-3.1-8B", "C_EU I_EN+EU"), "Llama-3.1-8B-Instruct": ("Llama-3.1-8B-Instruct", "-"),
        "Llama-3.1-8B": ("Llama-3.1-8B", "-")}
    for m, r in rows.items():
        assert r["averages"]["eu"] == pytest.approx(eu_avg[m]) and r["arena"]["global"] == ARENA["global"][m]

    # Figure 4: Spearman of the Basque average against the global arena (hand: 0.9), and per benchmark
    corr = {(c["language"], c["benchmark"], c["dimension"]): c for c in rep["correlations"]}
    assert corr[("eu", "average", "global")]["rho"] == pytest.approx(0.9)
    assert corr[("eu", "average", "global")]["models"] == 5
    # EusTrivia: 0.6, 0.56, 0.4, 0.3, 0.2 has the Basque average's order; content arena agrees fully
    assert corr[("eu", "EusTrivia", "content")]["rho"] == pytest.approx(1.0)
    assert corr[("eu", "EusTrivia", "global")]["rho"] == pytest.approx(0.9)

    # Figure 5: mean of Belebele and MMLU (the suite's relative tasks present) minus the backbone's
    rel = {(c["model"], c["language"]): c["change"] for c in rep["relative_changes"]}
    assert rel[("INS_C_EU_I_EN", "eu")] == pytest.approx((0.80 + 0.50) / 2 - (0.60 + 0.40) / 2)
    assert rel[("INS_C_EU_I_EN", "en")] == pytest.approx((0.86 + 0.66) / 2 - (0.90 + 0.70) / 2)
    assert rel[("BAS_C_EU_I_EN+EU", "en")] == pytest.approx((0.84 + 0.62) / 2 - (0.80 + 0.60) / 2)
    assert len(rel) == 6  # three variants x two languages; backbones have no change of their own

    # Table 4: (20 s + 31 s) x 2 ranks; step 2 counted once; grouped by data
    comp = rep["compute"]
    for r in comp["runs"]:
        assert r["gpu_hours"] == pytest.approx(102 / 3600) and r["tokens"] == 2500 and r["steps"] == 3
        assert r["restarts"] == 1 and r["gpus"] == 2
    assert comp["total_gpu_hours"] == pytest.approx(3 * 102 / 3600)
    assert {d["data"]: d["runs"] for d in comp["by_data"]} == {n: 1 for n in BACKBONE}

    md = (tmp_path / "rep" / "report.md").read_text()
    for title in ("Figure 3", "Figure 4", "Figure 5", "Table 4"):
        assert title in md
    for fig in ("fig3_grouping.png", "fig4_correlations.png", "fig5_relative.png", "text_averages.png"):
        assert (tmp_path / "rep" / fig).stat().st_size > 1000
