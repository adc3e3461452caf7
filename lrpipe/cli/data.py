"""``pipe run magpie``, ``filter``, ``translate``, ``mt``, ``images``, ``pack``, ``mix``: the data commands."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from lrpipe.cli.common import EngineOptions, RunOptions, app, cli_errors, options, register_group, run_app
from lrpipe.errors import PipeError


@run_app.command("magpie")
@cli_errors
@options("run", "engine")
def run_magpie_cmd(
    out: Path = typer.Option(Path("out/magpie"), help="Output folder; each step writes a shard directory inside."),
    n: int = typer.Option(1000, help="Number of instructions to sample, spread over categories × temperatures."),
    temps: str = typer.Option("0.8:1.2", help="a:b = 10 evenly spaced values inclusive; a:b:k; or a list x,y,z."),
    categories: str = typer.Option("general,math,arithmetic,code,translation",
                                   help="Categories (system prompts in prompts/magpie), comma separated."),
    weights: str = typer.Option("", help="Category weights, e.g. 'general=2,math=1' (default: equal)."),
    model: str | None = typer.Option(None, help="HF id or local path of an instruct model (default: embedded SmolLM2-135M-Instruct)."),
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
    *,
    run: RunOptions,
    engine: EngineOptions,
) -> None:
    """Magpie: sample instructions from an instruct model, answer them, filter (README: "`pipe run magpie`")."""
    from lrpipe.pipelines.magpie import config_from_options, is_embedded, run_magpie

    cfg, step_list = config_from_options(
        model=model, n=n, temps=temps, categories=categories, weights=weights, steps=steps, filters=filters,
        top_p=top_p, max_tokens=max_tokens, chunk_size=chunk_size, seed=seed,
        response_temperature=response_temperature, response_top_p=response_top_p,
        response_max_tokens=response_max_tokens)
    if filters is None and "filter" in step_list and is_embedded(model):
        typer.echo("note: the filter step leaves out the study's 'quality' filter on the embedded 135M "
                   "model (it rates every instruction 'very poor'); with --model it is in the chain", err=True)
    eng, model_id = engine.start(model, run)
    try:
        reports = run_magpie(cfg, out, eng, model_id=model_id, steps=step_list, **run.kwargs(),
                             prompts_dir=prompts_dir)
    finally:
        eng.close()
    for step, rep in reports.items():
        typer.echo(f"{step:8s} {rep.out}: +{rep.units_done_now} units ({rep.units_done_before} already done), "
                   f"{rep.rows_out} rows kept, {rep.rows_rejected} rejected, {rep.seconds:.1f}s"
                   + (f", {rep.output_tokens / max(rep.seconds, 1e-9):.0f} out tok/s" if rep.output_tokens else "")
                   + ("" if rep.complete else "  [incomplete: other ranks pending]"))
    final = out / ("filtered" if "filter" in reports else list(reports)[-1] if reports else "")
    typer.echo(f"shards: {final}/data/*.arrow   (inspect: pipe show {final})")


@app.command("filter")
@cli_errors
@options("run", "engine")
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
    *,
    run: RunOptions,
    engine: EngineOptions,
) -> None:
    """Run a filter chain: kept rows to data/, removed rows to rejected/ with their reason."""
    from lrpipe.filters.base import build_filter
    from lrpipe.parallel import default_workers
    from lrpipe.pipelines.filter import load_chain, make_filter_stage
    from lrpipe.runner import run_stage
    from lrpipe.sources import open_source

    src = open_source(input, rows_per_unit=rows_per_unit)
    chain = load_chain(config, field) if config else [
        {"name": f.strip(), **({"field": field} if field else {})} for f in filters.split(",") if f.strip()]
    built = [build_filter(c) for c in chain]
    src.require(sorted({x for f in built for x in f.reads()}))
    eng = None
    if any(f.needs_engine for f in built):
            eng, _ = engine.start(model, run)
    try:
        stage = make_filter_stage(src, built, eng)
        rep = run_stage(stage, out, engine=eng, **run.kwargs(), workers=workers or default_workers())
    finally:
        if eng is not None:
            eng.close()
    typer.echo(f"{rep.out}: {rep.rows_out} kept, {rep.rows_rejected} rejected")


# ------------------------------------------------------------------------------------------ translate
@dataclass
class RecipeOverrides:
    """``pipe translate``'s options that override the recipe's own values (None: the recipe's)."""

    src: str | None = None
    tgt: str | None = None
    fmt: str | None = None
    retries: int | None = None
    max_tokens: int | None = None
    sample: int | None = None
    seed: int | None = None
    split: str | None = None
    id_field: str | None = None
    src_name: str | None = None
    tgt_name: str | None = None
    conversation_field: str | None = None
    checks: str | None = None

    def as_recipe(self) -> dict[str, Any]:
        """As :func:`lrpipe.pipelines.translate.load_recipe` names them."""
        return {"source_lang": self.src, "target_lang": self.tgt, "format": self.fmt, "retries": self.retries,
                "seed": self.seed, "max_tokens": self.max_tokens, "sample": self.sample, "split": self.split,
                "id_field": self.id_field, "source_name": self.src_name, "target_name": self.tgt_name,
                "conversation_field": self.conversation_field,
                "checks": [c.strip() for c in self.checks.split(",") if c.strip()] if self.checks is not None else None}


register_group("recipe_options", RecipeOverrides, {
    "src": Annotated[str | None, typer.Option("--src", help="Source language code (default: the recipe's).")],
    "tgt": Annotated[str | None, typer.Option("--tgt", help="Target language code (default: the recipe's).")],
    "fmt": Annotated[str | None, typer.Option("--format", help="json | text (default: the recipe's).")],
    "retries": Annotated[int | None, typer.Option(help="Retries of a failed translation, each with a new seed.")],
    "max_tokens": Annotated[int | None, typer.Option(help="Max tokens of a translation (default: the recipe's).")],
    "sample": Annotated[int | None, typer.Option(help="Translate a seeded subset of this many rows (default: the "
                                                 "recipe's; benchmarks: 2,500). 0: every row.")],
    "seed": Annotated[int | None, typer.Option(help="Seed of the sample and of the per-row sampling seeds "
                                               "(default: the recipe's).")],
    "split": Annotated[str | None, typer.Option(help="Split of a Hub input (default: the recipe's, else train).")],
    "id_field": Annotated[str | None, typer.Option(help="Column with the row ids (e.g. uuid; default: the "
                                                   "recipe's, else id/uuid/conversation_id/question_id, else "
                                                   "derived from the content).")],
    "src_name": Annotated[str | None, typer.Option("--src-name", help="Source language name used in prompts.")],
    "tgt_name": Annotated[str | None, typer.Option("--tgt-name", help="Target language name used in prompts (for "
                                                   "codes the built-in table lacks).")],
    "conversation_field": Annotated[str | None, typer.Option(help="Column holding the conversations of a "
                                                             "conversation recipe (default: the recipe's).")],
    "checks": Annotated[str | None, typer.Option(help="The checks to run, comma-separated, in place of the "
                                                 "recipe's (parse, count, empty, preserve, span_repetition, "
                                                 "language).")],
})


@app.command("translate")
@cli_errors
@options("run", "engine", "recipe_options")
def translate_cmd(
    recipe: str | None = typer.Argument(None, help="Recipe name (see --list) or a recipe .yaml path."),
    list_: bool = typer.Option(False, "--list", help="List the recipes with their model, mode and fields."),
    input: str | None = typer.Option(None, "--input", help="Shard directory, local file(s) or hf://id "
                                     "(default: the recipe's input)."),
    out: Path | None = typer.Option(None, help="Output shard directory (with --sample: a folder holding "
                                    "source/ and translated/)."),
    model: str | None = typer.Option(None, help="Model (default: the embedded model; the recipe names the "
                                     "study's model, pass it explicitly on a GPU machine)."),
    streaming: bool = typer.Option(False, help="Stream a Hub input instead of downloading it (units: the "
                                   "dataset's files / parquet row groups, each read once)."),
    rows_per_unit: int = typer.Option(1000),
    dry_run: bool = typer.Option(False, "--dry-run", help="Render the first prompts and estimate the job's "
                                 "input/output tokens; load no model."),
    *,
    run: RunOptions,
    engine: EngineOptions,
    recipe_options: RecipeOverrides,
) -> None:
    """Translate conversations or question-answer datasets with an LLM, by recipe (README: "Translation")."""
    from lrpipe.pipelines import translate as tr
    from lrpipe.runner import run_stage
    from lrpipe.sources import open_source

    if list_ or recipe is None:
        typer.echo(tr.recipe_table())
        if recipe is None and not list_:
            typer.echo("\nusage: pipe translate RECIPE --input SRC --out DIR")
        return
    rec = tr.load_recipe(recipe, **recipe_options.as_recipe())
    spec = input or rec.input
    if not spec:
        raise PipeError(f"recipe {rec.name} names no input: pass --input")
    source = open_source(spec, split=rec.split or "train", streaming=streaming, rows_per_unit=rows_per_unit,
                         id_field=rec.fields.id)
    source.require(rec.input_columns())
    if dry_run:
        from lrpipe.models import load_tokenizer

        typer.echo(tr.format_dry_run(tr.dry_run(source, rec, load_tokenizer(model))))
        return
    if out is None:
        raise PipeError("--out is required")
    if rec.sample or rec.select or rec.kept_ids() is not None:  # benchmarks: select, sample, kept in English too
        source, out = tr.sample_first(source, rec, out, run.kwargs())
    if model is None and rec.model:
        typer.echo(f"note: translating with the embedded model; recipe {rec.name} was designed for "
                   f"{rec.model} (pass --model {rec.model})", err=True)
    eng, model_id = engine.start(model, run)
    try:
        stage = tr.TranslateStage(source, rec, eng, model_id)
        for note in stage.checker.notes:
            typer.echo(f"note: {note}", err=True)
        rep = run_stage(stage, out, engine=eng, **run.kwargs())
    finally:
        eng.close()
    typer.echo(f"{rep.out}: {rep.rows_out} translated, {rep.rows_rejected} rejected"
               + ("" if rep.complete else "  [incomplete: other ranks pending]"))
    typer.echo(f"inspect: pipe show {rep.out}")


@app.command("mt")
@cli_errors
@options("run")
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
    *,
    run: RunOptions,
) -> None:
    """Sentence-level MT of a text column (captions): Punkt split, each distinct sentence once."""
    import importlib.util

    from lrpipe.pipelines import mt
    from lrpipe.runner import run_stage
    from lrpipe.sources import open_source

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
    rep = run_stage(stage, out, **run.kwargs())
    typer.echo(f"{rep.out}: {rep.rows_out} translated, {rep.rows_rejected} rejected")


@app.command("images")
@cli_errors
@options("run")
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
    *,
    run: RunOptions,
) -> None:
    """Download the images a dataset references by URL (CC3M, PixMo) into an 'image' column; dead,
    slow, opted-out or corrupt images are rejected rows with their reason."""
    from lrpipe.images import url_column
    from lrpipe.pipelines.images import ImageFetcher, ImagesStage
    from lrpipe.runner import run_stage
    from lrpipe.sources import open_source

    source = open_source(input, split=split, rows_per_unit=rows_per_unit)
    cols = source.columns()
    url = url_column(cols, url_field)
    if url is None:
        raise PipeError(f"{input}: no URL column ({url_field or 'image_url, url, img_url'}); the input has {cols}")
    sha = sha256_field or ("image_sha256" if "image_sha256" in cols else None)
    fetcher = ImageFetcher(cache, timeout=timeout, retries=retries, max_bytes=max_bytes,
                           respect_opt_out=not ignore_opt_out)
    stage = ImagesStage(source, fetcher, url_field=url, sha256_field=sha, out_field=field, concurrency=concurrency)
    rep = run_stage(stage, out, **run.kwargs())
    typer.echo(f"{rep.out}: {rep.rows_out} rows with images, {rep.rows_rejected} rejected   (inspect: pipe show {rep.out})")


@app.command("pack")
@cli_errors
@options("run")
def pack_cmd(
    input: str = typer.Option(..., "--input", help="Shard directory, local file(s) or hf://id: rows with a "
                              "'conversation' (or instruction/response) or a 'text' column."),
    out: Path = typer.Option(..., help="Output shard directory of packed token rows."),
    tokenizer: str | None = typer.Option(None, help="The training model's tokenizer (HF id or folder; default: "
                                         "the embedded model)."),
    seq_len: int = typer.Option(8192, min=2, help="Tokens per packed row."),
    text_field: str = typer.Option("text", help="Column of corpus documents."),
    conversation_field: str | None = typer.Option(None, help="Column of conversations (default: the first of "
                                                  "conversation/conversations/messages holding messages, else "
                                                  "instruction/response)."),
    language: str | None = typer.Option(None, help="Pack the LANG version of a translation directory "
                                        "(X_LANG columns in place of X); pipe mix output needs none."),
    rows_per_unit: int = typer.Option(10000, help="Rows per unit; packing is best-fit within a unit."),
    workers: int | None = typer.Option(None, help="Processes tokenizing and packing units (default: all cores)."),
    split: str = typer.Option("train"),
    *,
    run: RunOptions,
) -> None:
    """Tokenize (chat template, loss on assistant tokens only) and pack into fixed-length rows."""
    from lrpipe.models import load_tokenizer, resolve_model
    from lrpipe.pipelines.pack import PackStage
    from lrpipe.runner import run_stage
    from lrpipe.sources import open_source

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

    rep = run_stage(stage, out, **run.kwargs(),
                    workers=workers or default_workers())
    typer.echo(f"{rep.out}: {rep.rows_out} packed rows, {rep.rows_rejected} rejected   (inspect: pipe show {rep.out})")


@app.command("mix")
@cli_errors
@options("run")
def mix_cmd(
    recipe: str = typer.Argument(..., help="Mixture recipe YAML (or the word 'grid': the study's data grid)."),
    out: Path = typer.Option(..., help="Output shard directory (grid: a folder for the recipes and mixtures)."),
    target_share: list[str] | None = typer.Option(None, help="Share of ids in the target language: SHARE for every "
                                                  "parallel source, or SOURCE=SHARE for one (repeat); overrides "
                                                  "the recipe."),
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
    *,
    run: RunOptions,
) -> None:
    """Build a training mixture from a YAML recipe (sources, languages, weights, budgets, parallel
    swap), or with RECIPE=grid write the 7 corpus/instruction combinations of the study's Table 3."""
    from lrpipe.parallel import default_workers
    from lrpipe.pipelines.grid import write_grid
    from lrpipe.pipelines.mix import build_mix

    opts = {"workers": workers or default_workers(), **run.kwargs()}
    if recipe == "grid":
        typer.echo(write_grid(out, corpus, instructions_en, instructions_tgt, target_lang,
                              instruction_rows=instruction_rows, seed=seed or 0, tokenizer=tokenizer, build=build,
                              **opts))
        typer.echo(f"recipes: {out / 'recipes'}" + (f"   mixtures: {out}/<name>" if build else
                                                      "   (build one: pipe mix RECIPE --out DIR, or all: --build)"))
        return
    if any(x is not None for x in (corpus, instructions_en, instructions_tgt, instruction_rows)) or build:
        raise PipeError("--corpus/--instructions-*/--instruction-rows/--build are options of 'pipe mix grid'")
    from lrpipe.pipelines.mix_recipe import load_mix_recipe, parse_target_shares

    rec = load_mix_recipe(recipe, target_share=parse_target_shares(target_share), seed=seed, tokenizer=tokenizer)
    rep = build_mix(rec, out, **opts)
    typer.echo(f"{rep.out}: {rep.rows_out} rows   (inspect: pipe show {rep.out})")


