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
    assert all(s == 5 for t, s in by_lang["eu"] if t != "basqbbq")  # BL2MP too, as the study ran it
    assert {"bertaqa_eu_local", "bertaqa_eu_global", "mgsm_native_cot_eu", "eus_exams_eu"} <= set(main["eu"])
    assert "mmlu_es" in main["es"] and "m_mmlu_es" not in main["es"]  # the study's subset, not Okapi's MT
    assert text.task_plan("latxa", ["es"], bias=True) == [(t, "es", 5) for t in main["es"]]
    with pytest.raises(Exception, match="not in suite"):
        text.task_plan("latxa", ["es"], only=["bl2mp"])
    suite = text.load_suite("latxa")
    assert suite.languages["eu"][6].task == "eus_exams_eu" and suite.languages["eu"][6].study == 56.00


def test_every_suite_task_resolves_in_lm_eval_with_its_shots():
    """Every task of the suite is a task, group or tag of the installed lm-eval (or ours); the declared
    floor is the first lm-eval release that has them all (checked on 0.4.9-0.4.12: 0.4.9 lacks
    mgsm_native_cot_eu), and the installed one is not below it."""
    pytest.importorskip("lm_eval")
    import re
    from importlib.metadata import version

    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(text.OWN_TASKS))
    known = set(tm.all_tasks) | set(tm.all_tags) | set(tm.all_groups)
    plan = text.task_plan("latxa", ["eu", "en", "es"])
    assert not [t for t, _, _ in plan if t not in known]
    assert {t: s for t, _, s in plan if t in ("bl2mp", "bbq", "basqbbq", "mmlu_es")} == {
        "bl2mp": 5, "bbq": 4, "basqbbq": 4, "mmlu_es": 5}
    floor = re.search(r'"lm-eval>=([\d.]+)"', (text.OWN_TASKS.parents[2] / "pyproject.toml").read_text()).group(1)
    assert floor == "0.4.10"
    as_tuple = lambda v: tuple(int(x) for x in v.split(".")[:3])  # noqa: E731
    assert as_tuple(version("lm_eval")) >= as_tuple(floor)


def test_scores_come_from_each_tasks_own_metric_and_tags_are_size_weighted():
    """A fake lm-eval results dict: MGSM with only a get-answer filter, a tag of three sub-tasks of
    different sizes, a group with its own aggregate, and a task whose metric is absent."""
    res = {
        "results": {
            "mgsm_native_cot_eu": {"exact_match,get-answer": 0.40, "exact_match_stderr,get-answer": 0.1},
            "mgsm_native_cot_en": {"exact_match,strict-match": 0.70, "exact_match,flexible-extract": 0.80},
            "exams_a": {"acc,none": 0.5}, "exams_b": {"acc,none": 1.0}, "exams_c": {"acc,none": 0.0},
            "broken": {"acc_norm,none": 0.9},
        },
        "groups": {"grp": {"acc,none": 0.66, "acc_stderr,none": 0.01}},
        "configs": {
            "mgsm_native_cot_eu": {"metric_list": [{"metric": "exact_match"}], "filter_list": [{"name": "get-answer"}]},
            "mgsm_native_cot_en": {"metric_list": [{"metric": "exact_match"}],
                                   "filter_list": [{"name": "strict-match"}, {"name": "flexible-extract"}]},
            "exams_a": {"metric_list": [{"metric": "acc"}]}, "exams_b": {"metric_list": [{"metric": "acc"}]},
            "exams_c": {"metric_list": [{"metric": "acc"}]}, "broken": {"metric_list": [{"metric": "acc"}]},
        },
        "n-samples": {"exams_a": {"effective": 100}, "exams_b": {"effective": 300}, "exams_c": {"effective": 600},
                      "mgsm_native_cot_eu": {"effective": 250}},
    }
    subs = {"exams": ["exams_a", "exams_b", "exams_c"]}
    prefer = ["flexible-extract"]
    assert text.score_task("mgsm_native_cot_eu", res, subs, prefer) == {
        "metric": "exact_match,get-answer", "score": 0.40, "n": 250, "how": "task"}
    assert text.score_task("mgsm_native_cot_en", res, subs, prefer)["metric"] == "exact_match,flexible-extract"
    tag = text.score_task("exams", res, subs, prefer)
    assert tag["score"] == pytest.approx((0.5 * 100 + 1.0 * 300 + 0.0 * 600) / 1000) and tag["n"] == 1000
    assert text.score_task("grp", res, subs, prefer)["score"] == 0.66
    assert text.score_task("broken", res, subs, prefer) is None
    suite = text.Suite(name="t", languages={"eu": [{"task": "mgsm_native_cot_eu"}, {"task": "exams"},
                                                    {"task": "broken"}]})
    rows, avg = text.summarize([res], text.task_plan(suite, ["eu"]), suite, subs, {})
    assert [r["score"] is None for r in rows] == [False, False, True] and "metric not reported" in rows[2]["missing"]
    assert avg["eu"] == {"score": pytest.approx((0.40 + 0.35) / 2), "tasks": 2, "of": 3}
    md = text.results_markdown({"model": "m", "suite": "t", "limit": None, "rows": rows, "averages": avg})
    assert "| eu | broken | 5 | - | missing |" in md and "| eu | 37.50 | 2 of 3 |" in md


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
                              local_data=data, batch_size=4, log_samples=True)
    scores = {r["task"]: r for r in res["rows"]}
    assert set(scores) == {"bl2mp", "bertaqa_eu_local", "mmlu_eu", "basqbbq"}
    assert all(r["metric"] == "acc,none" and 0.0 <= r["score"] <= 1.0 for r in scores.values())
    assert scores["basqbbq"]["num_fewshot"] == 4 and scores["bl2mp"]["num_fewshot"] == 5
    # lm-eval's own layout: results_*.json per few-shot group and samples_<task>_*.jsonl, in one model folder
    results = sorted((tmp_path / "run").glob("*/results_*.json"))
    assert len(results) == 2 and len({p.parent for p in results}) == 1
    five = next(json.loads(p.read_text()) for p in results if "bl2mp" in json.loads(p.read_text())["results"])
    # the local split filter kept only local questions: 8 of 16, limited to 3
    assert five["n-samples"]["bertaqa_eu_local"]["original"] == 8 and five["configs"]["bl2mp"]["num_fewshot"] == 5
    samples = sorted(p.name.split("_20")[0] for p in (tmp_path / "run").glob("*/samples_*.jsonl"))
    assert samples == ["samples_basqbbq", "samples_bertaqa_eu_local", "samples_bl2mp", "samples_mmlu_eu"]
    assert "| eu | mmlu_eu | 5 | acc,none |" in (tmp_path / "run" / "results.md").read_text()


@pytest.mark.slow
def test_the_whole_suite_on_the_embedded_model_scores_or_fails_loudly(tmp_path, model_path, env):
    """Offline, lm-eval's own tasks cannot get their data: the run names them and stops, or, with
    --allow-missing, scores ours and says over how many tasks each average is."""
    import subprocess

    from .conftest import PIPE

    pytest.importorskip("lm_eval")
    data = tmp_path / "data"
    data.mkdir()
    _local_copies(data)
    env = env | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    args = ["eval", "text", "--out", str(tmp_path / "run"), "--limit", "2", "--backend", "hf", "--local-data",
            str(data), "--batch-size", "4", "--langs", "eu", "--tasks",
            "bl2mp,mmlu_eu,arc_eu_challenge,eus_exams_eu,mgsm_native_cot_eu"]
    r = subprocess.run(PIPE + args, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert "no score possible for" in err and "arc_eu_challenge" in err and "eus_exams_eu" in err
    assert "bl2mp" not in err
    r = subprocess.run(PIPE + args + ["--allow-missing"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    got = {x["task"]: x["score"] for x in res["rows"]}
    assert got["bl2mp"] is not None and got["mmlu_eu"] is not None and got["arc_eu_challenge"] is None
    assert res["averages"]["eu"]["tasks"] == 2 and res["averages"]["eu"]["of"] == 5
    assert "| eu | " in r.stdout and "2 of 5 |" in r.stdout

    # pipe report on the evaluation folder: scores beside the paper's figures, in Chromium
    from tests.browser import assert_renders, open_page, report, screenshot_path

    facts = open_page(report(tmp_path / "run", tmp_path / "eval.html", env), screenshot_path(tmp_path, "eval"))
    assert_renders(facts, min_charts=1)
    rows = {x["task"]: x for x in res["rows"]}
    line = next(x for x in facts.text.splitlines() if x.startswith("eu\tbl2mp\t"))
    assert line.split("\t")[2] == f"{100 * rows['bl2mp']['score']:.2f}"
    paper = rows["bl2mp"]["study"]
    assert line.split("\t")[3] == ("–" if paper is None else f"{paper:.2f}")  # the paper's figure beside ours
    arc = next(x for x in facts.text.splitlines() if x.startswith("eu\tarc_eu_challenge\t"))
    assert arc.split("\t")[2] == "–"  # a task with no score shows none, never a zero


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


def test_report_reads_lm_evals_own_layout(tmp_path):
    """A folder of lm-eval results_*.json files (lm_eval --output_path, or a published run) is a text
    run for pipe eval report: the suite's tasks found there, averaged over those present."""
    from typer.testing import CliRunner

    from lrpipe.cli import app

    d = tmp_path / "published" / "org__model"
    d.mkdir(parents=True)
    for i, (task, acc) in enumerate((("piqa_eu", 0.70), ("mmlu_eu", 0.60), ("arc_easy", 0.80))):
        (d / f"results_2025-03-0{i + 1}T00-00-00.json").write_text(json.dumps({
            "results": {task: {"alias": task, "acc,none": acc}}, "configs": {task: {"metric_list": [{"metric": "acc"}]}},
            "n-samples": {task: {"original": 100, "effective": 100}}, "model_name": "org/model",
            "config": {"model": "hf", "model_args": "pretrained=org/model", "limit": None}}))
    res = CliRunner().invoke(app, ["eval", "report", str(tmp_path / "published"), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| model | en | eu |" in md and "| model | 80.00 (1/9 tasks) | 65.00 (2/14 tasks) |" in md


def test_letter_choice_for_a_model_behind_an_api(tmp_path, env, tokenizer):
    """An OpenAI-compatible chat endpoint scored as the study scored GPT-4o and Claude: lm-eval's own
    prompts (system instruction, 5 few-shot turns answered with letters), the letter parsed from the reply,
    a reply without one counted wrong and reported, and a log-likelihood task (BL2MP) named as missing."""
    import re
    import subprocess

    from .conftest import PIPE
    from .fakes import TranslatorServer

    pytest.importorskip("lm_eval")
    data = tmp_path / "data"
    data.mkdir()
    _local_copies(data)

    def reply(body):
        msgs = body["messages"]
        question = msgs[-1]["content"]
        if m := re.search(r"Zenbat da (\d+)\+1\?", question):  # mmlu_eu: the gold is always B
            i = int(m.group(1))
            return "Erantzuna: B" if i % 2 == 0 else "(C)" if i % 4 == 1 else "Ez dakit"
        return "A"  # bertaqa: right when the gold index is 0

    with TranslatorServer(tokenizer, chat_reply=reply) as srv:
        r = subprocess.run(PIPE + ["eval", "text", "--backend", "openai", "--base-url", srv.url, "--model", "gpt-4o",
                                   "--langs", "eu", "--tasks", "mmlu_eu,bertaqa_eu_local,bl2mp", "--local-data",
                                   str(data), "--allow-missing", "--out", str(tmp_path / "run")],
                           capture_output=True, text=True, env=env | {"HF_DATASETS_OFFLINE": "1"}, timeout=600)
        bodies = list(srv.bodies)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = {x["task"]: x for x in res["rows"]}
    assert rows["mmlu_eu"]["score"] == pytest.approx(4 / 8)  # i even right; i = 1, 5 wrong; i = 3, 7 no letter
    local_gold = [i % 3 for i in range(16) if i % 2]  # the Local half of the rows
    assert rows["bertaqa_eu_local"]["score"] == pytest.approx(sum(g == 0 for g in local_gold) / 8)
    assert rows["bl2mp"]["score"] is None and "log-probabilities" in rows["bl2mp"]["missing"]
    assert res["averages"]["eu"]["tasks"] == 2 and res["averages"]["eu"]["of"] == 3
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples_letters_mmlu_eu.jsonl").read_text().splitlines()]
    assert sum(s["parsed"] is None for s in samples) == 2 and all(s["gold"] == "B" for s in samples)
    # the prompt: the study's instruction, then five few-shot turns whose answers are letters, then the question
    first = bodies[0]["messages"]
    assert first[0] == {"role": "system", "content": "Respond always with a single letter: A, B, C or D."}
    roles = [m["role"] for m in first[1:]]
    assert roles == ["user", "assistant"] * 5 + ["user"]
    assert all(m["content"].strip() in ("A", "B", "C", "D") for m in first[1:] if m["role"] == "assistant")
    assert len(bodies) == 16 and all(b["temperature"] == 0.0 for b in bodies)
