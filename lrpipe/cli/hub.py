"""``pipe show``, ``report``, ``push`` and ``models prepare|path``: looking at outputs, publishing them, the embedded model."""

from __future__ import annotations

from pathlib import Path

import typer

from lrpipe.cli.common import (
    app,
    cli_errors,
    models_app,
)


@app.command("show")
@cli_errors
def show_cmd(path: Path = typer.Argument(..., help="A shard directory, or a folder of them (e.g. out/magpie)."),
             as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
             units: bool = typer.Option(False, help="List every unit.")) -> None:
    """Print a shard directory's manifest in human form."""
    from lrpipe.show import describe

    typer.echo(describe(path, as_json, units))


@app.command("report")
@cli_errors
def report_cmd(path: Path = typer.Argument(..., help="A shard directory, a chain's --out, a training run, an "
                                           "evaluation folder, or a study's --out."),
               out: Path | None = typer.Option(None, help="The HTML file to write (default: PATH/report.html)."),
               study: Path | None = typer.Option(None, help="The study file, to draw every step of its DAG with "
                                                 "its status (default: the one the study's run recorded)."),
               languages: bool = typer.Option(True, help="Detect the language of the sampled rows "
                                              "(fastText lid.176).")) -> None:
    """One self-contained HTML page (no network, no server) of what PATH holds: the funnel and reject
    reasons with sample rows, distributions, mixtures and packing, training curves, evaluations, the
    arena. It reads manifests and per-unit profiles, not the data."""
    import time

    from lrpipe.page import build_report

    t0 = time.time()
    target = build_report(path, out, study_file=study, detect_languages=languages)
    typer.echo(f"{target}  ({target.stat().st_size / 1e6:.2f} MB, {time.time() - t0:.1f} s)")


@app.command("push")
@cli_errors
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
    from lrpipe.page.build import card_figures

    def _list(v: str | None) -> list[str] | None:
        return [x.strip() for x in v.split(",") if x.strip()] if v else None

    where = push(path, repo_id, dry_run=dry_run, fmt=fmt, private=private, include_rejected=include_rejected,
                 revision=revision, license=license, languages=_list(language),
                 task_categories=_list(task_category), figures=card_figures(path))
    typer.echo(where)


@models_app.command("prepare")
@cli_errors
def models_prepare(force: bool = typer.Option(False, help="Convert again even if cached.")) -> None:
    """Convert the embedded SmolLM2-135M-Instruct GGUF once into an HF folder in the cache."""
    from lrpipe.models import prepare_embedded_model

    typer.echo(str(prepare_embedded_model(force=force)))


@models_app.command("path")
@cli_errors
def models_path() -> None:
    """Print the cache folder of the embedded model (converting it if needed)."""
    models_prepare(force=False)


@models_app.command("init")
@cli_errors
def models_init(
    config: Path = typer.Option(..., help="YAML: kind (causal-lm | clip-vision | marian) and the architecture's "
                                "fields (sizes, layers)."),
    out: Path = typer.Option(..., help="Model folder to write (nothing is done when it already holds one)."),
    tokenizer: str | None = typer.Option(None, help="causal-lm: the tokenizer to take (HF id, folder, embedded)."),
    corpus: str | None = typer.Option(None, help="marian: texts to train its vocabularies on (file, shard dir, "
                                      "hf://id)."),
    field: str = typer.Option("text", help="marian: the corpus column."),
    seed: int = typer.Option(0),
) -> None:
    """A randomly initialized model from a small config, for runs that test a pipeline (the studies'
    miniatures, dry runs): it loads with from_pretrained like a released model."""
    from lrpipe.config_files import read_yaml
    from lrpipe.model_init import init_model

    cfg = read_yaml(config, "model config")
    typer.echo(str(init_model(cfg, out, tokenizer=tokenizer, corpus=corpus, field=field, seed=seed,
                              where=str(config))))
