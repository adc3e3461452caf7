"""What every ``pipe`` command shares: the command groups, the engine options (declared once), ``--dp``
replicas, and one way to fail. Starting an engine is :func:`lrpipe.engines.startup.start_engine`."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from lrpipe.engines.startup import start_engine
from lrpipe.errors import PipeError, validation_message

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




# Options shared by commands, declared once: ``tp: TP = 1`` in a signature. The engine options go on
# every command that generates (run magpie, filter, translate, judge); the run options on every stage.
Engine = Annotated[str | None, typer.Option(help="vllm (default when installed) | transformers | openai.")]
BaseUrl = Annotated[list[str] | None, typer.Option(
    "--base-url", help="openai engine: server URL, e.g. http://node:8000/v1; repeat it (or comma-separate) for "
    "several servers: the least busy gets each request.")]
TP = Annotated[int, typer.Option("--tensor-parallel-size", "--tp", help="vLLM tensor parallelism (GPUs per "
                                 "model), e.g. 4 for 70B.")]
PP = Annotated[int, typer.Option("--pipeline-parallel-size", "--pp", help="vLLM pipeline parallelism (GPUs per "
                                 "model = tp × pp). Data parallelism: --dp, or one rank per replica (README: "
                                 "Running on a cluster).")]
DP = Annotated[int, typer.Option("--data-parallel-size", "--dp", help="Engine replicas on this node, each on its "
                                 "own tp × pp GPUs and its own share of the work units (one process each, as vLLM "
                                 "runs them).")]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="OPENAI_API_KEY",
                                            help="openai engine: API key (default: $OPENAI_API_KEY).")]
MaxConcurrency = Annotated[int, typer.Option(help="openai engine: requests in flight per server.")]
ServedModelName = Annotated[str | None, typer.Option(help="openai engine: the model name the server knows "
                                                     "(default: --model).")]
OpenAIApi = Annotated[str, typer.Option(help="openai engine: completions (raw prompts) | chat (messages, images).")]
JsonFormat = Annotated[str, typer.Option(help="openai engine: how JSON schemas are sent: vllm (structured_outputs) "
                                         "| response_format | auto (ask the server).")]
MaxModelLen = Annotated[int | None, typer.Option(help="Context length of the engine (default: the model's).")]
GpuMemory = Annotated[float | None, typer.Option(help="vLLM: fraction of GPU memory to use (0.3 on CPU).")]
MaxNumSeqs = Annotated[int | None, typer.Option(help="vLLM: concurrent sequences (keep the engine full).")]
BatchSize = Annotated[int | None, typer.Option(help="transformers engine: batch size.")]
DType = Annotated[str, typer.Option(help="Engine dtype: auto | bfloat16 | float16 | float32.")]
Rank = Annotated[int | None, typer.Option(help="This process's rank (default: torchrun, Slurm, or 0; README: "
                                          "Running on a cluster).")]
WorldSize = Annotated[int | None, typer.Option(help="Number of ranks sharing --out.")]
Overwrite = Annotated[bool, typer.Option(help="Delete an --out made with another config and start again.")]
Progress = Annotated[bool | None, typer.Option("--progress/--no-progress", help="Progress bar (terminal) or "
                                               "lines (batch log); default: on.")]


def replicate(dp: int, rank: int | None, world_size: int | None, overwrite: bool) -> None:
    """``--dp N``: in the process the user started, run N replicas of this command (ranks of their own)
    and exit with their code; in a replica, or with N = 1, do nothing."""
    from lrpipe.devices import is_replica, spawn_replicas

    if dp <= 1 or is_replica():
        return
    if overwrite:
        raise PipeError("--overwrite with --dp: each replica would clear the others' output; delete --out first")
    raise typer.Exit(spawn_replicas(dp, rank, world_size))


def fail(e: PipeError) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(e.exit_code)


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Every command fails the same way: an input or model problem (:class:`PipeError`) or a value the
    command refuses (``ValueError``, pydantic's included) is one red line and the error's exit code;
    anything else is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PipeError as e:
            fail(e)
        except ValueError as e:
            fail(PipeError(validation_message(e) if hasattr(e, "errors") else str(e)))

    return run


# ------------------------------------------------------------------------------------------ option groups
@dataclass
class RunOptions:
    """Where a stage runs among others and how it shows itself: ``--rank --world-size --overwrite
    --progress/--no-progress``."""

    rank: int | None = None
    world_size: int | None = None
    overwrite: bool = False
    progress: bool | None = None

    def kwargs(self) -> dict[str, Any]:
        """As :func:`lrpipe.runner.run_stage` takes them."""
        return {"rank": self.rank, "world_size": self.world_size, "overwrite": self.overwrite,
                "progress": self.progress}


@dataclass
class EngineOptions:
    """Every option of the engine a command starts (vLLM, transformers, an OpenAI-compatible server)."""

    engine: str | None = None
    base_url: list[str] | None = None
    tp: int = 1
    pp: int = 1
    dp: int = 1
    api_key: str | None = None
    max_concurrency: int = 64
    served_model_name: str | None = None
    openai_api: str = "completions"
    json_format: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    batch_size: int | None = None
    dtype: str = "auto"

    def start(self, model: str | None, run: RunOptions) -> tuple[Any, str]:
        """``--dp`` replicas first (this process then waits for them and exits), else the engine on this
        rank's GPUs: ``(engine, model id)``."""
        replicate(self.dp, run.rank, run.world_size, run.overwrite)
        return start_engine(self.engine, model, self.tp, self.max_model_len, self.gpu_memory_utilization,
                           self.batch_size, self.base_url, self.dtype, self.max_num_seqs, pp=self.pp,
                           api_key=self.api_key, max_concurrency=self.max_concurrency,
                           served_model=self.served_model_name, api=self.openai_api, json_format=self.json_format)


_GROUPS: dict[str, tuple[type, dict[str, Any]]] = {
    "run": (RunOptions, {"rank": Rank, "world_size": WorldSize, "overwrite": Overwrite, "progress": Progress}),
    "engine": (EngineOptions, {
        "engine": Engine, "base_url": BaseUrl, "tp": TP, "pp": PP, "dp": DP, "api_key": ApiKey,
        "max_concurrency": MaxConcurrency, "served_model_name": ServedModelName, "openai_api": OpenAIApi,
        "json_format": JsonFormat, "max_model_len": MaxModelLen, "gpu_memory_utilization": GpuMemory,
        "max_num_seqs": MaxNumSeqs, "batch_size": BatchSize, "dtype": DType}),
}


def register_group(name: str, cls: type, fields: dict[str, Any]) -> None:
    """A command module's own option group: ``cls`` a dataclass whose fields are the options, ``fields``
    their ``Annotated`` declarations."""
    _GROUPS[name] = (cls, fields)


def options(*groups: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the options of ``groups`` (``"run"``, ``"engine"``), declared once here: they are
    added to its signature for Typer, and the command receives them gathered, as ``run:
    RunOptions`` / ``engine: EngineOptions`` keyword arguments."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name not in groups]
        added = {}
        for g in groups:
            cls, fields = _GROUPS[g]
            defaults = {f.name: f.default for f in dataclasses.fields(cls)}
            added.update({name: (g, ann, defaults[name]) for name, ann in fields.items()})

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            gathered = {g: {} for g in groups}
            for name, (g, _, _) in added.items():
                gathered[g][name] = kwargs.pop(name)
            for g in groups:
                kwargs[g] = _GROUPS[g][0](**gathered[g])
            return fn(*args, **kwargs)

        params = own + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
                        for n, (_, a, d) in added.items()]
        run.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params} | {"return": sig.return_annotation}
        return run

    return deco
