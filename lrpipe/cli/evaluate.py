"""``pipe judge``, ``arena rank|serve|export`` and ``eval mm|text|report|correlate|safety``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from lrpipe.cli.common import (
    EngineOptions,
    RunOptions,
    app,
    cli_errors,
    eval_app,
    options,
)
from lrpipe.errors import PipeError


class _ArenaGroup(TyperGroup):
    """``pipe arena FILES --out DIR`` is ``pipe arena rank ...``: ranking kept its short form when
    ``serve`` and ``export`` joined it."""

    default_command = "rank"

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


arena_app = typer.Typer(cls=_ArenaGroup, no_args_is_help=True,
                        help="Rank battles (pipe arena FILES --out DIR), or run an arena and export its votes.")
app.add_typer(arena_app, name="arena")


@arena_app.command("rank")
@cli_errors
def arena_cmd(
    battles: list[Path] = typer.Argument(..., help="Battle files (jsonl/json/csv/parquet): model_a, model_b, "
                                         "winner (model_a|model_b|tie) [, criterion, annotator, language, "
                                         "question_id]."),
    out: Path = typer.Option(..., help="Folder for ratings.json, ratings.md and the PNG figures."),
    rounds: int = typer.Option(100, min=1, help="Bootstrap rounds (the study: 100)."),
    seed: int = typer.Option(42, help="Bootstrap seed (the study: 42)."),
    lower: float = typer.Option(5.0, min=0.0, max=100.0, help="Lower percentile of the interval."),
    upper: float = typer.Option(95.0, min=0.0, max=100.0, help="Upper percentile of the interval."),
    by: str = typer.Option("criterion", help="Rate each value of this battle field separately too "
                           "(criterion, language, annotator)."),
) -> None:
    """Bradley–Terry ratings with bootstrap intervals, ranks, agreement between annotators, figures."""
    from lrpipe.eval.arena import GROUP_FIELDS, run_arena

    if by not in GROUP_FIELDS:
        raise PipeError(f"--by: one of {', '.join(GROUP_FIELDS)} (got {by!r})")
    if lower >= upper:
        raise PipeError(f"--lower {lower:g} must be below --upper {upper:g}")
    res = run_arena(list(battles), out, group_field=by, rounds=rounds, seed=seed, lower_pct=lower,
                    upper_pct=upper)
    typer.echo((out / "ratings.md").read_text())
    typer.echo(f"{out}: {len(res['groups'])} rating tables and figures")


@arena_app.command("serve")
@cli_errors
def arena_serve_cmd(
    config: Path = typer.Option(..., help="arena.yaml: the models (OpenAI-compatible endpoints), system prompt, "
                                "sampling, dimensions, limits, the participant form."),
    host: str | None = typer.Option(None, help="Interface to listen on (default: the config's, 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default: the config's, 7860; 0 picks a free one)."),
    store: Path | None = typer.Option(None, help="SQLite file of the votes (default: the config's store)."),
) -> None:
    """Serve the community arena: two anonymous models side by side, a vote per dimension, names shown
    after the vote; votes stored as they are cast (SQLite, WAL)."""
    from lrpipe.eval.arena_serve import load_config, serve

    cfg = load_config(config)

    def ready(server: Any) -> None:
        typer.echo(f"arena {cfg.name}: {len(cfg.models)} models, votes in {store or cfg.store}; listening on "
                   f"http://{host or cfg.host}:{cfg.port if port is None else port}", err=True)

    serve(cfg, host=host, port=port, store=str(store) if store else None, ready=ready)


@arena_app.command("export")
@cli_errors
def arena_export_cmd(
    store: Path = typer.Argument(..., help="The arena's SQLite file."),
    out: Path = typer.Option(..., help="JSONL in the released arena layout (pipe arena ranks it)."),
    drop_usernames: bool = typer.Option(False, help="Leave the voters' names out (a release)."),
) -> None:
    """Every vote of an arena in the released layout: model_a, model_b, winner, winner_content,
    winner_language, conv_a, conv_b, username."""
    from lrpipe.errors import InputError
    from lrpipe.eval.arena_store import ArenaStore

    if not store.is_file():
        raise InputError("no such arena store", path=str(store))
    st = ArenaStore(store)
    rows = st.export_rows(drop_usernames=drop_usernames)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(out)
    c = st.counts()
    typer.echo(f"{out}: {len(rows)} votes ({c.get('failed', 0)} failed battles and {c.get('open', 0)} unvoted "
               "left out)")


@app.command("answer")
@cli_errors
@options("run", "engine")
def answer_cmd(
    input: str = typer.Option(..., help="Prompt rows: a shard directory, files, or a Hub dataset (one turn per row "
                              "in a text column, several in a list column or a conversation)."),
    out: Path = typer.Option(..., help="Folder with one shard directory of answers per model (<out>/<name>)."),
    model: list[str] | None = typer.Option(None, help="Model to answer (repeat for several, run one after "
                                            "another; default: the embedded model)."),
    name: list[str] | None = typer.Option(None, help="Name of each model in the answers (default: its folder or "
                                          "Hub name); repeat in --model's order."),
    recipe: str | None = typer.Option(None, help="Answer settings: a YAML or a shipped name (arena: the "
                                      "instruction study's system prompt, T 0.9, top-p 0.95; wildvision)."),
    system_prompt: str | None = typer.Option(None, help="System prompt text (overrides the recipe's)."),
    prompt_field: str | None = typer.Option(None, help="Prompt column (default: turns, instruction, prompt, "
                                            "question, else a conversation's user turns)."),
    image_field: str | None = typer.Option(None, help="Image column: the first turn shows it (vllm, a multimodal "
                                           "model on transformers, or openai --openai-api chat)."),
    temperature: float | None = typer.Option(None),
    top_p: float | None = typer.Option(None),
    max_tokens: int | None = typer.Option(None),
    seed: int | None = typer.Option(None),
    split: str = typer.Option("train", help="Split of a Hub dataset."),
    id_field: str | None = typer.Option(None, help="Id column (default: id, uuid, question_id, ...)."),
    *,
    run: RunOptions,
    engine: EngineOptions,
) -> None:
    """A model's answers to a prompt set (text, or image + text; one or several turns) through the engine
    layer: one resumable shard directory per model, which pipe judge, pipe arena and pipe eval safety read."""
    from lrpipe.eval.answer import AnswerStage, load_answer_config, model_names
    from lrpipe.runner import run_stage
    from lrpipe.sources import open_source

    cfg = load_answer_config(recipe, system_prompt=system_prompt, prompt_field=prompt_field, image_field=image_field,
                             temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    models = list(model or [None])
    names = model_names([m or "embedded" for m in models], list(name) if name else None)
    source = open_source(input, split=split, rows_per_unit=cfg.rows_per_unit, id_field=id_field)
    for m, n in zip(models, names):
        eng, _ = engine.start(m, run)
        try:
            rep = run_stage(AnswerStage(source, eng, n, cfg), out / n, engine=eng, **run.kwargs())
        finally:
            eng.close()
        typer.echo(f"{rep.out}: {rep.rows_out} answers of {n}, {rep.rows_rejected} rejected")
    typer.echo(f"judge them: pipe judge --answers {out} --language LANG --out DIR")


@app.command("judge")
@cli_errors
@options("run", "engine")
def judge_cmd(
    answers: list[Path] = typer.Option(..., help="Answers of each model: pipe answer's --out (a folder of shard "
                                       "directories), shard directories, or files (id, answer[, model]); repeat."),
    out: Path = typer.Option(..., help="Output shard directory of battles (pipe arena reads it)."),
    questions: Path | None = typer.Option(None, help="Questions (file or shard directory: id and question columns); "
                                          "default: the first answers directory, whose rows hold their questions."),
    model: str | None = typer.Option(None, help="Judge model (default: the embedded model)."),
    criteria: Path | None = typer.Option(None, help="Criteria YAML (default: the multimodal study's three)."),
    language: str = typer.Option(..., help="Code of the language the answers must be written in (e.g. eu)."),
    language_name: str | None = typer.Option(None, help="Its name in the prompt (default: from the code)."),
    question_field: str | None = typer.Option(None, help="Question column (default: question, instruction, prompt)."),
    image_field: str | None = typer.Option(None, help="Column of the questions file with the image (bytes, "
                                           "{bytes, path} or a path): an MLLM judge sees it (vllm engine, or "
                                           "openai with --openai-api chat)."),
    overall: bool = typer.Option(True, "--overall/--no-overall", help="Ask for an overall verdict too (criterion "
                                 "overall), weighing the criteria in their order."),
    retries: int = typer.Option(2, help="Retries of an invalid verdict, each with a new seed."),
    seed: int = typer.Option(0),
    rows_per_unit: int = typer.Option(50, help="Questions per unit."),
    *,
    run: RunOptions,
    engine: EngineOptions,
) -> None:
    """Pairwise LLM-as-judge: every pair of models on every question, both orders, tie when they disagree;
    then the win / tie / loss table per pair and criterion."""
    from lrpipe.eval.arena import read_battles, win_tie_loss, wtl_markdown
    from lrpipe.eval.judge import (
        JudgeStage,
        answer_paths,
        load_criteria,
        question_field_of,
        read_answers,
        read_questions,
    )
    from lrpipe.languages import language_name as name_of
    from lrpipe.runner import run_stage

    qpath = questions or answer_paths(list(answers))[0]
    qs = read_questions(qpath, ["id"])
    qf = question_field_of(qs, question_field, str(qpath))
    read_questions(qpath, ["id", qf, *([image_field] if image_field else [])])  # every row has them
    name = name_of(language, language_name)
    crit = load_criteria(criteria, name)
    ans = read_answers(list(answers))
    eng, model_id = engine.start(model, run)
    stage = JudgeStage(qs, ans, eng, model_id, crit, language, question_field=qf, image_field=image_field,
                       rows_per_unit=rows_per_unit, retries=retries, seed=seed, overall=overall)
    rep = run_stage(stage, out, engine=eng, **run.kwargs())
    typer.echo(f"{rep.out}: {rep.rows_out} battle rows, {rep.rows_rejected} pairs rejected   "
               f"(rate: pipe arena {rep.out} --out DIR)")
    if rep.complete:
        typer.echo(wtl_markdown(win_tie_loss(read_battles([out])), f"Win / tie / loss: judge {model_id}"))


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
    backend: str | None = typer.Option(None, help="vllm (default when installed), hf, or openai: a model behind an "
                                       "OpenAI-compatible chat endpoint, scored by letter choice as the study scored "
                                       "GPT-4o and Claude."),
    base_url: str | None = typer.Option(None, help="--backend openai: the server's /v1 URL."),
    api_key: str | None = typer.Option(None, envvar="OPENAI_API_KEY", help="--backend openai: API key."),
    max_concurrency: int = typer.Option(8, help="--backend openai: requests in flight."),
    system_instruction: str | None = typer.Option(None, help="--backend openai: the letter-choice instruction "
                                                  "(default: the study's 'Respond always with a single letter: "
                                                  "A, B, C or D.')."),
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
    api = None
    if backend == "openai":
        if not model:
            raise PipeError("--backend openai needs --model: the model name the server knows (gpt-4o, ...)")
        api = {"base_url": base_url, "api_key": api_key, "max_concurrency": max_concurrency,
               "instruction": system_instruction}
    res = run_text_suite(model if backend == "openai" else resolve_model(model), out, suite=suite, langs=lang_list,
                         tasks=only, limit=limit, backend=backend, local_data=local_data, bias=not no_bias,
                         batch_size=int(batch_size) if batch_size.isdigit() else batch_size,
                         model_args=model_args, log_samples=log_samples, allow_missing=allow_missing,
                         wandb_args=wandb_args, hub_log_args=hub, api=api)
    typer.echo(results_markdown(res))


@eval_app.command("report")
@cli_errors
def eval_report(
    runs: list[str] = typer.Argument(..., help="Run folders of pipe eval text / eval mm / arena / train, each "
                                     "optionally named: NAME=PATH."),
    out: Path = typer.Option(..., help="Folder for report.md, report.json and the figures."),
    suite: str = typer.Option("latxa", help="Suite whose relative_tasks Figure 5 averages."),
    target: str | None = typer.Option(None, help="Target language code (default: the suite's first)."),
) -> None:
    """Gather runs into one table per kind (a row per model) and the instruction study's analyses:
    backbone x data grouping, benchmark-arena Spearman, change relative to the backbone, compute per run."""
    from lrpipe.eval.report import run_report

    typer.echo(run_report(list(runs), out, suite=suite, target=target))


@eval_app.command("correlate")
@cli_errors
def eval_correlate(
    benchmarks: Path = typer.Option(..., help="JSON {model: benchmark average} (or a list of {model, score})."),
    arena: Path = typer.Option(..., help="ratings.json written by 'pipe arena'."),
    group: str = typer.Option("all", help="Which rating group of the arena to use."),
    rounds: int = typer.Option(1000, min=1, help="Bootstrap rounds for the interval."),
    seed: int = typer.Option(42),
) -> None:
    """Spearman's rho between benchmark averages and arena scores, with a bootstrap interval."""
    from lrpipe.eval.agreement import correlate_files

    typer.echo(json.dumps(correlate_files(benchmarks, arena, group, rounds=rounds, seed=seed), indent=2))


@eval_app.command("safety")
@cli_errors
def eval_safety(
    annotations: Path = typer.Argument(..., help="Annotated answers: model, language, category, prompt_type "
                                       "(unsafe|safe) and labels (violation|refusal|ok per annotator); or, with "
                                       "--answers, labels only: id, annotator, label [, model]."),
    answers: list[Path] | None = typer.Option(None, help="pipe answer output (its --out, or shard directories) "
                                              "the labels are about; repeat."),
    out: Path | None = typer.Option(None, help="Write the rates as JSON here."),
) -> None:
    """Violation rate and false-refusal rate per model, language and category, with agreement."""
    from lrpipe.eval.agreement import labelled_answers, read_rows, safety_rates

    rows = read_rows(annotations)
    if answers:
        from lrpipe.eval.judge import answer_paths

        rows = labelled_answers([r for p in answer_paths(list(answers)) for r in read_rows(p)], rows,
                                source=str(annotations))
    res = safety_rates(rows, source=str(annotations))
    if out:
        out.write_text(json.dumps(res, indent=2) + "\n")
    typer.echo("| model | language | category | VR | FRR | Fleiss kappa | agreement |\n|---|---|---|---:|---:|---:|---:|")
    for r in res["rates"]:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        typer.echo(f"| {r['model']} | {r['language']} | {r['category']} | {fmt(r['VR'])} | {fmt(r['FRR'])} | "
                   f"{fmt(r.get('fleiss_kappa'))} | {fmt(r.get('percent_agreement'))} |")
