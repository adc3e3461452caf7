"""``pipe study plan|run|submit|status|list``: the two published studies, and yours, as one file each."""

from __future__ import annotations

from pathlib import Path

import typer

from lrpipe.cli.common import app, cli_errors

study_app = typer.Typer(help="Reproduce a study: plan it, run it here, or submit it to Slurm.", no_args_is_help=True)
app.add_typer(study_app, name="study")

STUDY = typer.Argument(..., help="A shipped study (pipe study list) or a study .yaml path.")
OUT = typer.Option(..., help="The study's folder: one output folder per step, and .study/ (records, logs).")


@study_app.command("list")
@cli_errors
def study_list() -> None:
    """The studies shipped with pipe."""
    from lrpipe.study import list_studies, load_study

    for name in list_studies():
        s, _ = load_study(name)
        typer.echo(f"{name:18s} {s.description}")


@study_app.command("plan")
@cli_errors
def study_plan(
    study: str = STUDY,
    out: Path | None = typer.Option(None, help="The study's folder, to show what is already complete."),
    measured: Path | None = typer.Option(None, help="A study folder whose finished trainings give the training "
                                         "throughput (instead of the study file's table)."),
) -> None:
    """Every step with what it reads, its expected rows and tokens, its estimated GPU hours and whether it
    is complete; the training cells; the totals. Runs nothing."""
    import tempfile

    from lrpipe.study import load_study
    from lrpipe.study.plan import estimate, plan_text
    from lrpipe.study.run import prepare
    from lrpipe.study.state import states

    s, path = load_study(study)
    with tempfile.TemporaryDirectory() as tmp:
        steps, ctx = prepare(s, path, out or Path(tmp) / s.name)
        rows = estimate(steps, s, states(steps, ctx), ctx, measured)
    typer.echo(plan_text(s, rows))


@study_app.command("run")
@cli_errors
def study_run(
    study: str = STUDY,
    out: Path = OUT,
    only: list[str] | None = typer.Option(None, help="Run only this step (or a grid cell: its steps); repeat."),
    until: list[str] | None = typer.Option(None, help="Run this step and every step it reads; repeat."),
    rerun_changed: bool = typer.Option(False, "--rerun-changed", help="Rerun the steps whose configuration "
                                       "changed since their output was written, and their dependents."),
) -> None:
    """Run every step whose output is not complete, in dependency order, on this machine (training
    through torchrun on the local devices). A second run does nothing; after a crash it finishes."""
    from lrpipe.study import load_study
    from lrpipe.study.run import run_study

    s, path = load_study(study)
    run_study(s, path, out, only=only, until=until, rerun_changed=rerun_changed, echo=typer.echo)


@study_app.command("submit")
@cli_errors
def study_submit(
    study: str = STUDY,
    out: Path = OUT,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print every job (script, environment, arguments, "
                                 "dependencies) instead of submitting; needs no Slurm."),
) -> None:
    """Submit every step that is not complete as a Slurm job, each after the jobs of the steps it reads
    (afterok); jobs are recorded in OUT/.study/slurm.json."""
    from lrpipe.study import load_study
    from lrpipe.study.slurm import submit

    s, path = load_study(study)
    submit(s, path, out, dry_run=dry_run, echo=typer.echo)


@study_app.command("status")
@cli_errors
def study_status(study: str = STUDY, out: Path = OUT) -> None:
    """Where each step stands: complete, changed, its Slurm job's state, or not started."""
    from lrpipe.study import load_study
    from lrpipe.study.slurm import status

    s, path = load_study(study)
    rows = status(s, path, out)
    w = max(len(r["step"]) for r in rows) if rows else 10
    for r in rows:
        typer.echo(f"{r['step']:{w}s}  {r['status']}")
