"""``pipe eval text``: the instruction study's text benchmarks through lm-eval as a library (SPEC §9).

The suite is data (:data:`SUITES`): 14 Basque, 9 English and 4 Spanish benchmarks at 5-shot, and the
bias sets BBQ and BasqBBQ at 4-shot, run with the chat template applied and the few-shot examples as
a multi-turn conversation (``apply_chat_template=True, fewshot_as_multiturn=True``), multiple choice
by log-probability and MGSM by native chain-of-thought generation, exactly as lm-eval's tasks define
them. lm-eval already has most tasks; ``eval/tasks/lm_eval/`` holds YAMLs only for what it lacks
(BertaQA's local/global split, BL2MP, the study's MMLU in Basque and English, BasqBBQ), registered
through lm-eval's ``include_path``.

``--local-data DIR`` makes our own tasks read ``DIR/<task>.jsonl`` (or ``DIR/<task>/*.jsonl``)
instead of the Hub, for offline clusters and tests. Results go to a run folder: lm-eval's full
output, and one table (markdown + JSON) with the per-language averages the study's figures show.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from lrpipe.errors import InputError

OWN_TASKS = Path(__file__).parent / "tasks" / "lm_eval"

#: suite -> language -> tasks (5-shot), and the bias tasks (4-shot)
SUITES: dict[str, dict[str, Any]] = {
    "latxa": {
        "languages": {
            "eu": ["arc_eu_challenge", "arc_eu_easy", "belebele_eus_Latn", "bertaqa_eu_global", "bertaqa_eu_local",
                   "bl2mp", "eus_exams_eu", "eus_proficiency", "eus_reading", "eus_trivia", "mgsm_native_cot_eu",
                   "mmlu_eu", "piqa_eu", "xstorycloze_eu"],
            "en": ["arc_challenge", "arc_easy", "belebele_eng_Latn", "bertaqa_en_global", "bertaqa_en_local",
                   "mgsm_native_cot_en", "mmlu_en", "piqa", "xstorycloze_en"],
            "es": ["belebele_spa_Latn", "mgsm_native_cot_es", "m_mmlu_es", "xstorycloze_es"],
        },
        "bias": {"en": ["bbq"], "eu": ["basqbbq"]},
        "num_fewshot": 5,
        "bias_fewshot": 4,
        # minimal pairs have no prompt to put examples in front of
        "fewshot_overrides": {"bl2mp": 0},
    },
}
#: the metric reported per task, in order of preference
PRIMARY = ("acc,none", "exact_match,flexible-extract", "exact_match,strict-match", "exact_match,none")


def task_plan(suite: str, langs: list[str], bias: bool = True,
              only: list[str] | None = None) -> list[tuple[str, str, int]]:
    """(task, language, num_fewshot) for the suite's tasks in ``langs`` (or just ``only``)."""
    if suite not in SUITES:
        raise InputError(f"unknown suite '{suite}' (have {sorted(SUITES)})")
    s = SUITES[suite]
    plan = []
    for lang in langs:
        if lang not in s["languages"] and lang not in s["bias"]:
            raise InputError(f"suite {suite} has no tasks in '{lang}' (have {sorted(s['languages'])})")
        for t in s["languages"].get(lang, []):
            plan.append((t, lang, s["fewshot_overrides"].get(t, s["num_fewshot"])))
        if bias:
            plan += [(t, lang, s["bias_fewshot"]) for t in s["bias"].get(lang, [])]
    if only:
        unknown = set(only) - {t for t, _, _ in plan}
        if unknown:
            raise InputError(f"tasks {sorted(unknown)} are not in suite {suite} for {langs}")
        plan = [p for p in plan if p[0] in only]
    return plan


def _include_dir(local_data: str | Path | None) -> Path:
    """Our task YAMLs, rewritten to local JSONL files where ``local_data`` has them."""
    if local_data is None:
        return OWN_TASKS
    tmp = Path(tempfile.mkdtemp(prefix="lrpipe-lmeval-"))
    shutil.copy(OWN_TASKS / "utils.py", tmp / "utils.py")
    local = Path(local_data)
    for y in OWN_TASKS.glob("*.yaml"):
        text = y.read_text()
        task = y.stem
        files = [local / f"{task}.jsonl"] if (local / f"{task}.jsonl").exists() else sorted((local / task).glob("*.jsonl"))
        if files:
            # keep the YAML (its !function tags) and override the data source at the end
            cfg = yaml.load(text, Loader=_TagKeeper)
            split = cfg.get("test_split") or "test"
            lines = [ln for ln in text.splitlines() if not ln.startswith(("dataset_path:", "dataset_name:",
                                                                          "dataset_kwargs:"))]
            lines += ["dataset_path: json", "dataset_name: null",
                      "dataset_kwargs:", "  data_files:", f"    {split}: [{', '.join(json.dumps(str(f)) for f in files)}]"]
            text = "\n".join(lines) + "\n"
        (tmp / y.name).write_text(text)
    return tmp


class _TagKeeper(yaml.SafeLoader):
    """Reads our YAMLs without resolving lm-eval's ``!function`` tags."""


_TagKeeper.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def primary_metric(res: dict[str, Any]) -> tuple[str, float] | None:
    for k in PRIMARY:
        if isinstance(res.get(k), (int, float)):
            return k.split(",")[0], float(res[k])
    return None


def run_text_suite(model: str, out: str | Path, *, suite: str = "latxa", langs: list[str] = ("eu", "en", "es"),
                   tasks: list[str] | None = None, limit: int | None = None, backend: str | None = None,
                   local_data: str | Path | None = None, bias: bool = True, batch_size: str | int = "auto",
                   model_args: str = "") -> dict[str, Any]:
    """Run the suite with lm-eval and write ``results.json``, ``results.md`` and lm-eval's raw output."""
    import importlib.util

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    plan = task_plan(suite, list(langs), bias, tasks)
    backend = backend or ("vllm" if importlib.util.find_spec("vllm") else "hf")
    args = f"pretrained={model}" + (f",{model_args}" if model_args else "")
    if backend == "hf" and "device=" not in args:
        import torch

        args += ",device=" + ("cuda" if torch.cuda.is_available() else "cpu")
    tm = TaskManager(include_path=str(_include_dir(local_data)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    for shots in sorted({s for _, _, s in plan}):
        names = [t for t, _, s in plan if s == shots]
        res = simple_evaluate(model=backend, model_args=args, tasks=names, num_fewshot=shots, limit=limit,
                              apply_chat_template=True, fewshot_as_multiturn=shots > 0, task_manager=tm,
                              batch_size=batch_size)
        raw[f"{shots}-shot"] = {"results": res["results"], "configs": res.get("configs"),
                                "versions": res.get("versions"), "n-samples": res.get("n-samples")}
        for t, lang, s in plan:
            if s != shots:
                continue
            m = primary_metric(res["results"].get(t, {}))
            rows.append({"task": t, "language": lang, "num_fewshot": s, "metric": m[0] if m else None,
                         "score": m[1] if m else None, "bias": t in SUITES[suite]["bias"].get(lang, [])})
    averages = {}
    for lang in langs:
        vals = [r["score"] for r in rows if r["language"] == lang and not r["bias"] and r["score"] is not None]
        if vals:
            averages[lang] = sum(vals) / len(vals)
    result = {"model": model, "suite": suite, "backend": backend, "limit": limit, "rows": rows, "averages": averages}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "lm_eval_raw.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    (out / "results.md").write_text(results_markdown(result))
    return result


def results_markdown(result: dict[str, Any]) -> str:
    lines = [f"# {result['model']} — suite {result['suite']}" + (f" (limit {result['limit']})" if result["limit"] else ""),
             "", "| language | task | shots | metric | score |", "|---|---|---:|---|---:|"]
    for r in result["rows"]:
        score = "-" if r["score"] is None else f"{100 * r['score']:.2f}"
        lines.append(f"| {r['language']} | {r['task']} | {r['num_fewshot']} | {r['metric'] or '-'} | {score} |")
    lines += ["", "| language | average (without bias sets) |", "|---|---:|"]
    lines += [f"| {lang} | {100 * v:.2f} |" for lang, v in result["averages"].items()]
    return "\n".join(lines) + "\n"
