"""pipe eval text: the suite's task lists, and our own lm-eval YAMLs running with --limit on tiny
local copies of their data (no network) with the embedded model."""

from __future__ import annotations

import json

import pytest

from lrpipe.eval import text


def test_suite_task_lists_per_language():
    plan = text.task_plan("latxa", ["eu", "en", "es"], bias=True)
    by_lang = {}
    for t, lang, shots in plan:
        by_lang.setdefault(lang, []).append((t, shots))
    main = {lang: [t for t, s in v if t not in ("bbq", "basqbbq")] for lang, v in by_lang.items()}
    assert (len(main["eu"]), len(main["en"]), len(main["es"])) == (14, 9, 4)  # the study's 27
    assert ("bbq", 4) in by_lang["en"] and ("basqbbq", 4) in by_lang["eu"]
    assert all(s == 5 for t, s in by_lang["eu"] if t not in ("basqbbq", "bl2mp"))
    assert {"bertaqa_eu_local", "bertaqa_eu_global", "mgsm_native_cot_eu", "eus_exams_eu"} <= set(main["eu"])
    assert text.task_plan("latxa", ["es"], bias=True) == [(t, "es", 5) for t in main["es"]]
    with pytest.raises(Exception, match="not in suite"):
        text.task_plan("latxa", ["es"], only=["bl2mp"])


def test_every_suite_task_is_known_to_lm_eval_or_ours():
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(text.OWN_TASKS))
    known = set(tm.all_tasks)
    missing = [t for t, _, _ in text.task_plan("latxa", ["eu", "en", "es"]) if t not in known]
    assert not missing, missing


def _local_copies(d):
    rows = {
        "bl2mp": [{"sentence_good": f"Etxera noa {i}.", "sentence_bad": f"Etxera noan {i}.", "type": "E1", "level": "A"}
                  for i in range(8)],
        "bertaqa_eu_local": [{"question": f"Zein da {i}?", "candidates": ["bat", "bi", "hiru"], "answer": i % 3,
                              "group": "Local" if i % 2 else "Global"} for i in range(16)],
        "mmlu_eu": [{"question": f"Zenbat da {i}+1?", "choices": [str(i), str(i + 1), "0", "9"], "answer": 1}
                    for i in range(8)],
        "basqbbq": [{"context": f"{i + 2} lagun daude.", "question": "Nor da azkarra?", "ans0": "Lehena",
                     "ans1": "Bigarrena", "ans2": "Ezin da jakin", "label": 2} for i in range(8)],
    }
    for task, rs in rows.items():
        (d / f"{task}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs))


@pytest.mark.slow
def test_own_yamls_run_with_limit_on_local_copies(tmp_path, model_path):
    pytest.importorskip("lm_eval")
    data = tmp_path / "data"
    data.mkdir()
    _local_copies(data)
    res = text.run_text_suite(model_path, tmp_path / "run", langs=["eu"],
                              tasks=["bl2mp", "bertaqa_eu_local", "mmlu_eu", "basqbbq"], limit=3, backend="hf",
                              local_data=data, batch_size=4)
    scores = {r["task"]: r for r in res["rows"]}
    assert set(scores) == {"bl2mp", "bertaqa_eu_local", "mmlu_eu", "basqbbq"}
    assert all(r["metric"] == "acc" and 0.0 <= r["score"] <= 1.0 for r in scores.values())
    assert scores["basqbbq"]["num_fewshot"] == 4 and scores["bl2mp"]["num_fewshot"] == 0
    raw = json.loads((tmp_path / "run" / "lm_eval_raw.json").read_text())
    # the local split filter kept only local questions: 8 of 16, limited to 3
    assert raw["5-shot"]["n-samples"]["bertaqa_eu_local"]["original"] == 8
    assert "| eu | mmlu_eu | 5 | acc |" in (tmp_path / "run" / "results.md").read_text()


def test_report_gathers_text_mm_and_arena_runs(tmp_path):
    from typer.testing import CliRunner

    from lrpipe.cli import app

    for name, avg in (("base", {"eu": 0.41, "en": 0.60}), ("ours", {"eu": 0.52, "en": 0.61})):
        d = tmp_path / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps({"model": f"/models/{name}", "suite": "latxa", "limit": None,
                                                    "rows": [{"task": "piqa_eu", "language": "eu", "score": avg["eu"]}],
                                                    "averages": avg}))
    mmrun = tmp_path / "mm"
    mmrun.mkdir()
    (mmrun / "results.json").write_text(json.dumps({"model": "/models/ours", "languages": ["en", "eu"], "results": [
        {"task": "vqav2", "metrics": {"en": {"vqa_acc": 0.7, "n": 5}, "eu": {"vqa_acc": 0.6, "n": 5}}}]}))
    res = CliRunner().invoke(app, ["eval", "report", str(tmp_path / "base"), str(tmp_path / "ours"), str(mmrun),
                                   "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| ours | 61.00 | 52.00 |" in md and "| base | 60.00 | 41.00 |" in md
    assert "vqav2 vqa_acc (eu)" in md and (tmp_path / "rep" / "text_averages.png").stat().st_size > 1000
