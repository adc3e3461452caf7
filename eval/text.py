"""``pipe eval text``: the instruction study's text benchmarks through lm-eval as a library.

The suite is data (``eval/tasks/suites/<name>.yaml``): for the study, 14 Basque, 9 English and 4 Spanish
benchmarks at 5-shot and the bias sets BBQ and BasqBBQ at 4-shot, run with the chat template and the
few-shot examples as a multi-turn conversation, as the study's own lm-eval scripts ran them. lm-eval has
most tasks; ``eval/tasks/lm_eval/`` holds YAMLs only for what it lacks (BertaQA's local/global split,
BL2MP, the study's MMLU subset in Basque, English and Spanish, BasqBBQ).

**lm-eval's own outputs.** The model is loaded once and every few-shot group runs through
``simple_evaluate`` with an ``EvaluationTracker``: the run folder holds lm-eval's ``results_*.json``
(and ``samples_*.jsonl`` with ``--log-samples``) exactly as ``lm_eval --output_path`` writes them, so
runs compare sample by sample with the study's published ones, push to the Hub, or log to W&B through
lm-eval's own ``WandbLogger``. Our summary (``results.json``, ``results.md``) is derived from them.

**Every task counts, or the run says so.** A task's score is its own metric (the first of its
``metric_list``) under its own filter (the only one, or the suite's preferred one among several:
MGSM's ``flexible-extract``), read from the results; a *group* is scored by lm-eval's aggregate; a
*tag* (``eus_exams_eu``: lm-eval returns only its sub-tasks) by the mean of its sub-tasks weighted by
their sizes, which is how lm-eval aggregates groups and how the study's EusExams figure was computed.
A task without a score (its data could not be loaded, its metric is missing) is an error naming it;
with ``--allow-missing`` the row is marked missing and each average says over how many tasks it is.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from lrpipe.errors import InputError

OWN_TASKS = Path(__file__).parent / "tasks" / "lm_eval"
SUITES = Path(__file__).parent / "tasks" / "suites"


# ------------------------------------------------------------------------------------------ the suite
class SuiteTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str
    name: str = ""
    study: float | None = None
    num_fewshot: int | None = None


class BiasSets(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_fewshot: int = 4
    languages: dict[str, list[SuiteTask]] = {}


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    reference_model: str = ""
    num_fewshot: int = 5
    prefer_filters: list[str] = []
    #: a folder of lm-eval task YAMLs for this suite's own tasks (relative to the suite file), read beside
    #: lm-eval's and pipe's own: a new language's benchmarks need no change to shipped files
    task_dir: str | None = None
    #: the benchmarks (by name) whose change relative to the backbone the report shows per language
    #: (the instruction study's Figure 5: the ones it has in all three languages)
    relative_tasks: list[str] = []
    languages: dict[str, list[SuiteTask]]
    bias: BiasSets = BiasSets()

    def tasks(self, lang: str, bias: bool) -> list[tuple[SuiteTask, int, bool]]:
        main = [(t, self.num_fewshot if t.num_fewshot is None else t.num_fewshot, False)
                for t in self.languages.get(lang, [])]
        extra = [(t, self.bias.num_fewshot if t.num_fewshot is None else t.num_fewshot, True)
                 for t in self.bias.languages.get(lang, [])] if bias else []
        return main + extra


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES.glob("*.yaml"))


def load_suite(name_or_path: str) -> Suite:
    from lrpipe.config_files import load

    def update(data: dict[str, Any], path: Path) -> None:
        if isinstance(data.get("task_dir"), str) and not Path(data["task_dir"]).is_absolute():
            data["task_dir"] = str(path.parent / data["task_dir"])

    return load(Suite, name_or_path, SUITES, kind="suite", update=update)


def task_plan(suite: str | Suite, langs: list[str], bias: bool = True,
              only: list[str] | None = None) -> list[tuple[str, str, int]]:
    """(task, language, num_fewshot) for the suite's tasks in ``langs`` (or just ``only``)."""
    s = suite if isinstance(suite, Suite) else load_suite(suite)
    plan = []
    for lang in langs:
        if lang not in s.languages and lang not in s.bias.languages:
            raise InputError(f"suite {s.name} has no tasks in '{lang}' (have {sorted(s.languages)})")
        plan += [(t.task, lang, shots) for t, shots, _ in s.tasks(lang, bias)]
    if only:
        unknown = set(only) - {t for t, _, _ in plan}
        if unknown:
            raise InputError(f"tasks {sorted(unknown)} are not in suite {s.name} for {langs}")
        plan = [p for p in plan if p[0] in only]
    return plan


# ------------------------------------------------------------------------------------------ scoring
def metric_key(config: dict[str, Any], prefer: list[str]) -> str:
    """``metric,filter`` a task reports its score under: its first metric, under its only filter (or the
    first of ``prefer`` it has, else its first filter), or ``none`` without filters."""
    metrics = config.get("metric_list") or [{"metric": "acc"}]
    metric = metrics[0]["metric"] if isinstance(metrics[0], dict) else str(metrics[0])
    names = [f.get("name", "none") for f in config.get("filter_list") or [] if isinstance(f, dict)]
    if not names:
        return f"{metric},none"
    return f"{metric},{next((p for p in prefer if p in names), names[0])}"


def score_task(name: str, res: dict[str, Any], subtasks: dict[str, list[str]],
               prefer: list[str]) -> dict[str, Any] | None:
    """The score of one planned task in an lm-eval results dict, or None when it has none:
    ``{"metric", "score", "n", "how"}`` (``how``: task, group or tag)."""
    results, configs, n_samples = res.get("results", {}), res.get("configs", {}), res.get("n-samples", {})
    if name in configs:
        key = metric_key(configs[name], prefer)
        value = results.get(name, {}).get(key)
        if isinstance(value, (int, float)):
            n = (n_samples.get(name) or {}).get("effective")
            return {"metric": key, "score": float(value), "n": n, "how": "task"}
        return None
    group = (res.get("groups") or {}).get(name)
    if group:
        for k, v in group.items():
            if "," in k and "_stderr" not in k and isinstance(v, (int, float)):
                return {"metric": k, "score": float(v), "n": None, "how": "group"}
    subs = subtasks.get(name)
    if subs:
        parts = [score_task(s, res, subtasks, prefer) for s in subs]
        if any(p is None or not p["n"] for p in parts):
            return None
        total = sum(p["n"] for p in parts)  # type: ignore[index,misc]
        keys = {p["metric"] for p in parts}  # type: ignore[index]
        return {"metric": keys.pop() if len(keys) == 1 else "mixed",
                "score": sum(p["score"] * p["n"] for p in parts) / total,  # type: ignore[index]
                "n": total, "how": f"tag of {len(subs)}, size-weighted"}
    return None


def tag_members(task_manager: Any, names: list[str]) -> dict[str, list[str]]:
    """Sub-tasks of the names that are lm-eval tags (results come per sub-task for those)."""
    out = {}
    for n in names:
        entry = getattr(task_manager, "task_index", {}).get(n)
        kind = getattr(getattr(entry, "kind", None), "name", "")
        if kind == "TAG":
            out[n] = sorted(entry.tags)  # type: ignore[union-attr]
    return out


def summarize(res_by_group: list[dict[str, Any]], plan: list[tuple[str, str, int]], suite: Suite,
              subtasks: dict[str, list[str]], failed: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per planned task (score or the reason it has none) and the per-language averages
    (without the bias sets), each saying over how many of the language's tasks it is."""
    info = {t.task: (t, b) for lang in set(suite.languages) | set(suite.bias.languages)
            for t, _, b in suite.tasks(lang, True)}
    rows = []
    for task, lang, shots in plan:
        spec, is_bias = info.get(task, (SuiteTask(task=task), False))
        got = None
        for res in res_by_group:
            got = got or score_task(task, res, subtasks, suite.prefer_filters)
        row = {"task": task, "name": spec.name or task, "language": lang, "num_fewshot": shots, "bias": is_bias,
               "metric": got["metric"] if got else None, "score": got["score"] if got else None,
               "n": got["n"] if got else None, "how": got["how"] if got else None, "study": spec.study}
        if got is None:
            row["missing"] = failed.get(task) or "no score in lm-eval's results (metric not reported)"
        rows.append(row)
    averages = {}
    for lang in dict.fromkeys(r["language"] for r in rows):
        main = [r for r in rows if r["language"] == lang and not r["bias"]]
        vals = [r["score"] for r in main if r["score"] is not None]
        if main:
            averages[lang] = {"score": sum(vals) / len(vals) if vals else None, "tasks": len(vals), "of": len(main)}
    return rows, averages


# ------------------------------------------------------------------------------------------ running
@contextlib.contextmanager
def _include_dir(local_data: str | Path | None, suite: Suite | None = None) -> Iterator[list[str]]:
    """The task folders lm-eval reads beside its own: ours, and the suite's ``task_dir`` when it names
    one; with ``local_data``, their YAMLs rewritten to the local JSONL files it has (in a temporary
    folder, removed when the run ends)."""
    dirs = [OWN_TASKS] + ([Path(suite.task_dir)] if suite is not None and suite.task_dir else [])
    if local_data is None:
        yield [str(d) for d in dirs]
        return
    with tempfile.TemporaryDirectory(prefix="lrpipe-lmeval-") as name:
        out = []
        for k, d in enumerate(dirs):
            (Path(name) / str(k)).mkdir()
            out.append(str(_write_local_tasks(Path(name) / str(k), Path(local_data), d)))
        yield out


def _write_local_tasks(tmp: Path, local: Path, source: Path = OWN_TASKS) -> Path:
    for py in source.glob("*.py"):
        shutil.copy(py, tmp / py.name)
    for y in source.glob("*.yaml"):
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


def _load_tasks(names: list[str], tm: Any) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """What to hand lm-eval for each planned name, loaded one by one, so a task whose data cannot be
    loaded (offline, gated, a wrong id) is named instead of stopping the others: the loaded Task
    objects (a tag's sub-tasks; a group by its name, which lm-eval loads again with its structure), and
    {name: why not}."""
    from lm_eval.api.task import Task
    from lm_eval.tasks import get_task_dict

    loaded, failed = {}, {}
    for n in names:
        try:
            got = get_task_dict([n], tm)
        except Exception as e:  # datasets raises many types for "cannot get the data"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            failed[n] = f"cannot load its data ({type(e).__name__}: {first[:200]})"
            continue
        loaded[n] = [v if isinstance(v, Task) else n for v in got.values()]
        if n in loaded[n]:
            loaded[n] = [n]
    return loaded, failed


def run_text_suite(model: str, out: str | Path, *, suite: str = "latxa", langs: list[str] = ("eu", "en", "es"),
                   tasks: list[str] | None = None, limit: int | None = None, backend: str | None = None,
                   local_data: str | Path | None = None, bias: bool = True, batch_size: str | int = "auto",
                   model_args: str = "", log_samples: bool = False, allow_missing: bool = False,
                   wandb_args: str | None = None, hub_log_args: dict[str, Any] | None = None,
                   api: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the suite with lm-eval: lm-eval's own files under ``out``, plus ``results.json``/``.md``.

    ``backend="openai"`` scores a model behind an OpenAI-compatible chat endpoint (``api``: base_url,
    api_key, max_concurrency, instruction) as the study scored GPT-4o and Claude: letter choice on the
    multiple-choice tasks written as letters (:mod:`lrpipe.eval.letters`), lm-eval's chat-completions
    model on generative ones (MGSM), and the log-likelihood tasks marked missing with the reason."""
    import importlib.util

    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    s = load_suite(suite)
    plan = task_plan(s, list(langs), bias, tasks)
    if wandb_args and importlib.util.find_spec("wandb") is None:
        raise InputError("--wandb-args needs wandb (pip install wandb; WANDB_MODE=offline works without network)")
    backend = backend or ("vllm" if importlib.util.find_spec("vllm") else "hf")
    if backend == "openai":
        return _run_api(model, Path(out), s, plan, limit=limit, local_data=local_data, allow_missing=allow_missing,
                        api=api or {})
    args = f"pretrained={model}" + (f",{model_args}" if model_args else "")
    if backend == "hf" and "device=" not in args:
        import torch

        args += ",device=" + ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _include_dir(local_data, s) as include:
        tm = TaskManager(include_path=include)
        names = list(dict.fromkeys(t for t, _, _ in plan))
        subtasks = tag_members(tm, names)
        loaded, failed = _load_tasks(names, tm)
        if failed and not allow_missing:
            raise InputError("no score possible for " + "; ".join(f"{k}: {v}" for k, v in failed.items())
                             + " (put the datasets in the Hugging Face cache, or --local-data for our own tasks; "
                             "--allow-missing to score the rest)")
        lm = get_model(backend).create_from_arg_string(args, {"batch_size": batch_size})  # once for every group
        groups = _evaluate_groups(lm, args, plan, loaded, tm, out, limit=limit, batch_size=batch_size,
                                  log_samples=log_samples, wandb_args=wandb_args, hub_log_args=hub_log_args)
    rows, averages = summarize(groups, plan, s, subtasks, failed)
    result = {"model": model, "suite": s.name, "backend": backend, "limit": limit, "rows": rows,
              "averages": averages, "lm_eval_output": str(out)}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(result))
    missing = [r["task"] for r in rows if r["score"] is None]
    if missing and not allow_missing:
        raise InputError(f"no score for {missing} (lm-eval's results lack their metric; see {out}/results.md)")
    return result


def _evaluate_groups(lm: Any, args: str, plan: list[tuple[str, str, int]], loaded: dict[str, list[Any]], tm: Any,
                     out: Path, *, limit: int | None, batch_size: str | int, log_samples: bool,
                     wandb_args: str | None, hub_log_args: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One ``simple_evaluate`` per few-shot group on the one model, written by lm-eval's own tracker
    (``results_*.json``, ``samples_*.jsonl``, the Hub) and its W&B logger; the results, JSON-safe."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.utils import handle_non_serializable

    tracker = EvaluationTracker(output_path=str(out), **(hub_log_args or {}))
    wandb = None
    if wandb_args:
        from lm_eval.loggers import WandbLogger

        wandb = WandbLogger(init_args=dict(kv.split("=", 1) for kv in wandb_args.split(",") if kv))
    groups: list[dict[str, Any]] = []
    for shots in sorted({sh for _, _, sh in plan}):
        objs = [o for t in dict.fromkeys(t for t, _, sh in plan if sh == shots) for o in loaded.get(t, [])]
        if not objs:
            continue
        res = simple_evaluate(model=lm, model_args=args, tasks=objs, num_fewshot=shots, limit=limit,
                              apply_chat_template=True, fewshot_as_multiturn=shots > 0, task_manager=tm,
                              batch_size=batch_size, log_samples=log_samples, evaluation_tracker=tracker)
        if res is None:  # not the main process of a multi-process lm-eval run
            continue
        samples = res.pop("samples", None)
        tracker.save_results_aggregated(results=res, samples=samples if log_samples else None)
        if log_samples and samples:
            for task_name in res["configs"]:
                tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
        if wandb is not None:
            wandb.post_init(res)
            wandb.log_eval_result()
            if log_samples and samples:
                wandb.log_eval_samples(samples)
        groups.append(json.loads(json.dumps(res, default=handle_non_serializable)))
    if tracker.push_results_to_hub or tracker.push_samples_to_hub:
        tracker.recreate_metadata_card()
    if wandb is not None:
        wandb.run.finish()
    return groups


def _run_api(model: str, out: Path, s: Suite, plan: list[tuple[str, str, int]], *, limit: int | None,
             local_data: str | Path | None, allow_missing: bool, api: dict[str, Any]) -> dict[str, Any]:
    """The suite for a model behind an API (see :func:`run_text_suite`)."""
    from lm_eval.api.task import Task
    from lm_eval.tasks import TaskManager

    from lrpipe.engines import make_engine
    from lrpipe.eval.letters import STUDY_INSTRUCTION, classify, score_letters

    if not api.get("base_url"):
        raise InputError("--backend openai needs --base-url (the server's /v1 URL)")
    out.mkdir(parents=True, exist_ok=True)
    engine = make_engine("openai", model, base_url=api["base_url"], api_key=api.get("api_key"), api="chat",
                         max_concurrency=api.get("max_concurrency") or 8, served_model=api.get("served_model"))
    groups: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    with _include_dir(local_data, s) as include:
        tm = TaskManager(include_path=include)
        names = list(dict.fromkeys(t for t, _, _ in plan))
        subtasks = tag_members(tm, names)
        loaded, failed = _load_tasks(names, tm)
        generative: dict[int, list[Any]] = {}
        for shots in sorted({sh for _, _, sh in plan}):
            letter_tasks: dict[str, Any] = {}
            for name in dict.fromkeys(t for t, _, sh in plan if sh == shots):
                objs = [o for o in loaded.get(name, []) if isinstance(o, Task)]
                kinds = {classify(o) for o in objs}
                if kinds == {"letters"}:
                    letter_tasks.update({o.config.task: o for o in objs})
                elif kinds == {"generate"}:
                    generative.setdefault(shots, []).extend(objs)
                elif name not in failed:
                    failed[name] = ("scored by log-likelihood of options (or a group): an API gives no "
                                    "log-probabilities, and its prompt lists no letters to choose from")
            if letter_tasks:
                groups.append(score_letters(engine, letter_tasks, shots, out, limit=limit,
                                            instruction=api.get("instruction") or STUDY_INSTRUCTION))
        for shots, objs in generative.items():
            groups.append(_api_generate(model, api, objs, shots, out, limit=limit, task_manager=tm))
    engine.close()
    if failed and not allow_missing:
        raise InputError("no score possible for " + "; ".join(f"{k}: {v}" for k, v in failed.items())
                         + " (--allow-missing to score the rest, as the study did for API models)")
    rows, averages = summarize(groups, plan, s, subtasks, failed)
    result = {"model": model, "suite": s.name, "backend": "openai (letter choice)", "limit": limit, "rows": rows,
              "averages": averages, "lm_eval_output": str(out)}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(result))
    return result


def _api_generate(model: str, api: dict[str, Any], objs: list[Any], shots: int, out: Path, *,
                  limit: int | None, task_manager: Any) -> dict[str, Any]:
    """Generative tasks (MGSM) for an API model through lm-eval's own chat-completions model."""
    import os

    from lm_eval import simple_evaluate
    from lm_eval.utils import handle_non_serializable

    if api.get("api_key"):
        os.environ.setdefault("OPENAI_API_KEY", api["api_key"])
    url = str(api["base_url"]).rstrip("/") + "/chat/completions"
    args = (f"model={api.get('served_model') or model},base_url={url},num_concurrent={api.get('max_concurrency') or 8},"
            "tokenized_requests=False,max_retries=5")
    res = simple_evaluate(model="local-chat-completions", model_args=args, tasks=objs, num_fewshot=shots,
                          limit=limit, apply_chat_template=True, fewshot_as_multiturn=shots > 0,
                          task_manager=task_manager)
    res.pop("samples", None)
    return json.loads(json.dumps(res, default=handle_non_serializable))


def summary_from_lm_eval(path: str | Path, suite: str = "latxa") -> dict[str, Any]:
    """Our summary of a folder of lm-eval ``results_*.json`` files (``pipe eval text``'s own, ``lm_eval
    --output_path`` runs, or the study's published ones): the suite's tasks found in them, scored as
    :func:`score_task` does, averaged per language over the tasks present."""
    files = sorted(Path(path).rglob("results_*.json"))
    if not files:
        raise InputError("no lm-eval results_*.json here", path=str(path))
    groups = []
    for f in files:
        try:
            groups.append(json.loads(f.read_text()))
        except json.JSONDecodeError as e:
            raise InputError(f"not JSON ({e})", path=str(f)) from e
    s = load_suite(suite)
    seen = {k for g in groups for k in list(g.get("results", {})) + list(g.get("groups", {}))}
    plan = [(t.task, lang, shots) for lang in dict.fromkeys([*s.languages, *s.bias.languages])
            for t, shots, _ in s.tasks(lang, True)]
    subtasks: dict[str, list[str]] = {}
    if any(t not in seen for t, _, _ in plan):  # tags: lm-eval returns their sub-tasks only
        from lm_eval.tasks import TaskManager

        with _include_dir(None, s) as include:
            subtasks = tag_members(TaskManager(include_path=include), [t for t, _, _ in plan if t not in seen])
    present = [p for p in plan if p[0] in seen or any(x in seen for x in subtasks.get(p[0], []))]
    langs = {lang for _, lang, _ in present}  # a language's average says how many of its tasks ran
    plan = [p for p in plan if p[1] in langs]
    rows, averages = summarize(groups, plan, s, subtasks,
                               {p[0]: "not in these results" for p in plan if p not in present})
    cfg = groups[-1].get("config", {})
    args = str(cfg.get("model_args") or "")
    model = groups[-1].get("model_name") or next((a.split("=", 1)[1] for a in args.split(",")
                                                  if a.startswith("pretrained=")), Path(path).name)
    return {"model": model, "suite": s.name, "backend": cfg.get("model"), "limit": cfg.get("limit"), "rows": rows,
            "averages": averages, "lm_eval_output": str(path)}


def results_markdown(result: dict[str, Any]) -> str:
    lines = [f"# {result['model']} — suite {result['suite']}" + (f" (limit {result['limit']})" if result["limit"] else ""),
             "", "| language | task | shots | metric | score | study | how |", "|---|---|---:|---|---:|---:|---|"]
    for r in result["rows"]:
        score = "missing" if r["score"] is None else f"{100 * r['score']:.2f}"
        study = "" if r.get("study") is None else f"{r['study']:.2f}"
        how = r.get("missing") or r.get("how") or ""
        lines.append(f"| {r['language']} | {r['task']} | {r['num_fewshot']} | {r['metric'] or '-'} | {score} | "
                     f"{study} | {how} |")
    lines += ["", "| language | average (without bias sets) | tasks |", "|---|---:|---|"]
    for lang, a in result["averages"].items():
        a = a if isinstance(a, dict) else {"score": a, "tasks": None, "of": None}
        score = "-" if a["score"] is None else f"{100 * a['score']:.2f}"
        over = "" if a["tasks"] is None else (f"{a['tasks']} of {a['of']}" if a["tasks"] != a["of"] else f"all {a['of']}")
        lines.append(f"| {lang} | {score} | {over} |")
    return "\n".join(lines) + "\n"
