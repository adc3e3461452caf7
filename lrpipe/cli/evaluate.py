"""``pipe judge``, ``arena`` and ``eval mm|text|report|correlate|safety``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lrpipe.cli.common import (
    EngineOptions,
    RunOptions,
    app,
    cli_errors,
    eval_app,
    options,
)


@app.command("arena")
@cli_errors
def arena_cmd(
    battles: list[Path] = typer.Argument(..., help="Battle files (jsonl/json/csv/parquet): model_a, model_b, "
                                         "winner (model_a|model_b|tie) [, criterion, annotator, language, "
                                         "question_id]."),
    out: Path = typer.Option(..., help="Folder for ratings.json, ratings.md and the PNG figures."),
    rounds: int = typer.Option(100, help="Bootstrap rounds (the study: 100)."),
    seed: int = typer.Option(42, help="Bootstrap seed (the study: 42)."),
    lower: float = typer.Option(5.0, help="Lower percentile of the interval."),
    upper: float = typer.Option(95.0, help="Upper percentile of the interval."),
    by: str = typer.Option("criterion", help="Rate each value of this battle field separately too "
                           "(criterion, language, annotator)."),
) -> None:
    """Bradley–Terry ratings with bootstrap intervals, ranks, agreement between annotators, figures."""
    from lrpipe.eval.arena import run_arena

    res = run_arena(list(battles), out, group_field=by, rounds=rounds, seed=seed, lower_pct=lower,
                    upper_pct=upper)
    typer.echo((out / "ratings.md").read_text())
    typer.echo(f"{out}: {len(res['groups'])} rating tables and figures")


@app.command("judge")
@cli_errors
@options("run", "engine")
def judge_cmd(
    questions: Path = typer.Option(..., help="Questions file: id and question columns."),
    answers: list[Path] = typer.Option(..., help="One answers file per model (id, answer[, model]); repeat."),
    out: Path = typer.Option(..., help="Output shard directory of battles (pipe arena reads it)."),
    model: str | None = typer.Option(None, help="Judge model (default: the embedded model)."),
    criteria: Path | None = typer.Option(None, help="Criteria YAML (default: the multimodal study's three)."),
    language: str = typer.Option(..., help="Code of the language the answers must be written in (e.g. eu)."),
    language_name: str | None = typer.Option(None, help="Its name in the prompt (default: from the code)."),
    question_field: str = typer.Option("question"),
    image_field: str | None = typer.Option(None, help="Column of the questions file with the image (bytes, "
                                           "{bytes, path} or a path): an MLLM judge sees it (vllm engine, or "
                                           "openai with --openai-api chat)."),
    retries: int = typer.Option(2, help="Retries of an invalid verdict, each with a new seed."),
    seed: int = typer.Option(0),
    rows_per_unit: int = typer.Option(50, help="Questions per unit."),
    *,
    run: RunOptions,
    engine: EngineOptions,
) -> None:
    """Pairwise LLM-as-judge: every pair of models on every question, both orders, tie when they disagree."""
    from lrpipe.eval.judge import JudgeStage, load_criteria, read_answers, read_questions
    from lrpipe.languages import language_name as name_of
    from lrpipe.runner import run_stage

    qs = read_questions(questions, ["id", question_field, *([image_field] if image_field else [])])
    name = name_of(language, language_name)
    crit = load_criteria(criteria, name)
    ans = read_answers(list(answers))
    eng, model_id = engine.start(model, run)
    stage = JudgeStage(qs, ans, eng, model_id, crit, language, question_field=question_field,
                       image_field=image_field, rows_per_unit=rows_per_unit, retries=retries, seed=seed)
    rep = run_stage(stage, out, engine=eng, **run.kwargs())
    typer.echo(f"{rep.out}: {rep.rows_out} battle rows, {rep.rows_rejected} pairs rejected   "
               f"(rate: pipe arena {rep.out} --out DIR)")


@eval_app.command("mm")
@cli_errors
def eval_mm(
    model: str = typer.Option(..., help="A transformers image-text-to-text model (LLaVA-style) with a processor."),
    tasks: str = typer.Option("vqav2,a-okvqa,pixmo-capqa", help="Comma-separated tasks (eval/tasks/mm/*.yaml "
                              "or .yaml paths)."),
    langs: str = typer.Option("en,eu", help="Languages scored on the same instances (source first)."),
    data: str = typer.Option(..., help="Folder with <task>/translated (pipe translate --sample output) or "
                             "<task>/<lang>.parquet copies of released sets; or the word released (each task's "
                             "released: sets from the Hub)."),
    out: Path = typer.Option(..., help="Run folder: results.json, results.md, per-instance records."),
    limit: int | None = typer.Option(None, help="First N instances per task (smoke tests)."),
    batch_size: int = typer.Option(8, help="Generation batch size (transformers backend)."),
    backend: str | None = typer.Option(None, help="Generation backend: vllm (default with a GPU and vLLM "
                                       "installed) or transformers. Multiple choice always uses transformers."),
) -> None:
    """Multimodal close-ended benchmarks in two languages: VQAv2 (official and inclusion accuracy),
    A-OKVQA and PixMo-CapQA by log-likelihood (acc, acc_norm), with per-instance agreement."""
    from lrpipe.eval.mm import report_markdown, run_eval_mm

    lang_list = [x.strip() for x in langs.split(",") if x.strip()]
    results = run_eval_mm(model, [t.strip() for t in tasks.split(",") if t.strip()], lang_list, data, out,
                          limit=limit, batch_size=batch_size, source_lang=lang_list[0], backend=backend)
    typer.echo(report_markdown(results, lang_list))


@eval_app.command("text")
@cli_errors
def eval_text(
    model: str | None = typer.Option(None, help="Model (HF id or folder; default: the embedded model)."),
    out: Path = typer.Option(..., help="Run folder: results.json, results.md, lm-eval's raw output."),
    suite: str = typer.Option("latxa", help="Benchmark suite (the instruction study's 27 + bias sets)."),
    langs: str = typer.Option("eu,en,es", help="Languages of the suite to run."),
    tasks: str | None = typer.Option(None, help="Only these tasks of the suite (comma-separated)."),
    limit: int | None = typer.Option(None, help="Documents per task (smoke tests)."),
    backend: str | None = typer.Option(None, help="lm-eval model type: vllm (default when installed) or hf."),
    model_args: str = typer.Option("", help="Extra lm-eval model_args, e.g. 'dtype=bfloat16,tensor_parallel_size=4'."),
    local_data: Path | None = typer.Option(None, help="Folder with <task>.jsonl copies of our own tasks' data."),
    no_bias: bool = typer.Option(False, "--no-bias", help="Skip BBQ/BasqBBQ."),
    batch_size: str = typer.Option("auto"),
    log_samples: bool = typer.Option(False, "--log-samples", help="Also write lm-eval's samples_*.jsonl."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Score the tasks that can be scored; "
                                       "mark the others missing (averages say over how many)."),
    wandb_args: str | None = typer.Option(None, help="Log to W&B through lm-eval's WandbLogger, e.g. "
                                          "'project=latxa,mode=offline'."),
    hub_results_org: str | None = typer.Option(None, help="Push lm-eval's results (and samples with "
                                               "--log-samples) to this Hub organization's details repo."),
    show: bool = typer.Option(False, "--list", help="Print the task plan and exit."),
) -> None:
    """The study's text benchmarks through lm-eval: 5-shot, chat template, few-shot as multi-turn; lm-eval's
    own results files in --out, and a summary in which every task has a score or says why not."""
    from lrpipe.eval.text import results_markdown, run_text_suite, task_plan

    lang_list = [x.strip() for x in langs.split(",") if x.strip()]
    only = [t.strip() for t in tasks.split(",")] if tasks else None
    if show:
        for t, lang, shots in task_plan(suite, lang_list, not no_bias, only):
            typer.echo(f"{lang}  {shots}-shot  {t}")
        return
    from lrpipe.models import resolve_model

    hub = ({"hub_results_org": hub_results_org, "push_results_to_hub": True,
            "push_samples_to_hub": log_samples} if hub_results_org else None)
    res = run_text_suite(resolve_model(model), out, suite=suite, langs=lang_list, tasks=only, limit=limit,
                         backend=backend, local_data=local_data, bias=not no_bias,
                         batch_size=int(batch_size) if batch_size.isdigit() else batch_size,
                         model_args=model_args, log_samples=log_samples, allow_missing=allow_missing,
                         wandb_args=wandb_args, hub_log_args=hub)
    typer.echo(results_markdown(res))


@eval_app.command("report")
@cli_errors
def eval_report(
    runs: list[Path] = typer.Argument(..., help="Run folders of pipe eval text / pipe eval mm / pipe arena."),
    out: Path = typer.Option(..., help="Folder for report.md and the figures."),
) -> None:
    """Gather runs into one table per kind (a row per model) and a figure of the per-language averages."""
    from lrpipe.eval.report import run_report

    typer.echo(run_report(list(runs), out))


@eval_app.command("correlate")
@cli_errors
def eval_correlate(
    benchmarks: Path = typer.Option(..., help="JSON {model: benchmark average} (or a list of {model, score})."),
    arena: Path = typer.Option(..., help="ratings.json written by 'pipe arena'."),
    group: str = typer.Option("all", help="Which rating group of the arena to use."),
    rounds: int = typer.Option(1000, help="Bootstrap rounds for the interval."),
    seed: int = typer.Option(42),
) -> None:
    """Spearman's rho between benchmark averages and arena scores, with a bootstrap interval."""
    from lrpipe.eval.agreement import correlate_files

    typer.echo(json.dumps(correlate_files(benchmarks, arena, group, rounds=rounds, seed=seed), indent=2))


@eval_app.command("safety")
@cli_errors
def eval_safety(
    annotations: Path = typer.Argument(..., help="Annotated answers: model, language, category, prompt_type "
                                       "(unsafe|safe) and labels (violation|refusal|ok per annotator)."),
    out: Path | None = typer.Option(None, help="Write the rates as JSON here."),
) -> None:
    """Violation rate and false-refusal rate per model, language and category, with agreement."""
    from lrpipe.eval.agreement import read_rows, safety_rates

    res = safety_rates(read_rows(annotations), source=str(annotations))
    if out:
        out.write_text(json.dumps(res, indent=2) + "\n")
    typer.echo("| model | language | category | VR | FRR | Fleiss kappa | agreement |\n|---|---|---|---:|---:|---:|---:|")
    for r in res["rates"]:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        typer.echo(f"| {r['model']} | {r['language']} | {r['category']} | {fmt(r['VR'])} | {fmt(r['FRR'])} | "
                   f"{fmt(r.get('fleiss_kappa'))} | {fmt(r.get('percent_agreement'))} |")
