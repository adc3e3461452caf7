"""``pipe train text|mllm|export``: options become a validated training config; the loop does the rest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from lrpipe.cli.common import (
    cli_errors,
    fail,
    train_app,
)
from lrpipe.errors import PipeError


def _train_overrides(**kw: Any) -> dict[str, Any]:
    kw = {k: v for k, v in kw.items() if v is not None}
    if "betas" in kw:
        kw["betas"] = tuple(float(x) for x in kw["betas"].split(","))
    if "report_to" in kw:  # "wandb,tensorboard"; "none" for log.jsonl only
        kw["report_to"] = [x.strip() for x in kw["report_to"].split(",") if x.strip() and x.strip() != "none"]
    return kw


T = {
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
    from lrpipe.models import DEFAULT_MODEL, resolve_model
    from lrpipe.training.config import load_config

    if overrides.get("model") in ("embedded", DEFAULT_MODEL):  # the embedded model, as every command names it
        overrides = dict(overrides, model=resolve_model(overrides["model"]))
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
        fail(e)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(json.dumps(res))


@train_app.command("text")
@cli_errors
def train_text(
    data: str = T["data"], model: str = T["model"], out: str = T["out"], recipe: Path | None = T["recipe"],
    init: str | None = T["init"], lr: float | None = T["lr"], min_lr_ratio: float | None = T["min_lr_ratio"],
    warmup_ratio: float | None = T["warmup_ratio"], weight_decay: float | None = T["weight_decay"],
    betas: str | None = T["betas"], epochs: float | None = T["epochs"], max_steps: int | None = T["max_steps"],
    micro_batch: int | None = T["micro_batch"], tokens_per_step: int | None = T["tokens_per_step"],
    global_batch: int | None = T["global_batch"], seed: int | None = T["seed"],
    neftune_alpha: float | None = T["neftune_alpha"], dtype: str | None = T["dtype"], attn: str | None = T["attn"],
    sharding: str | None = T["sharding"], parallel: str | None = T["parallel"],
    hybrid_shard_size: int | None = T["hybrid_shard_size"],
    deepspeed_config: str | None = T["deepspeed_config"], save_every: int | None = T["save_every"],
    keep_checkpoints: int | None = T["keep_checkpoints"], gradient_checkpointing: bool | None = T["gradient_checkpointing"],
    export: bool | None = T["export"], log_every: int | None = T["log_every"],
    peak_tflops: float | None = T["peak_tflops"], report_to: str | None = T["report_to"],
    run_name: str | None = T["run_name"], wandb_project: str | None = T["wandb_project"],
) -> None:
    """Text SFT on pipe pack shards. Defaults: the instruction study's Table 5. Resumes from the run
    folder's latest checkpoint by itself. Multi-GPU: torchrun --nproc_per_node 8 --no-python pipe train text ..."""
    ov = _train_overrides(**{k: v for k, v in locals().items() if k != "recipe"})
    _run_training("text", recipe, None, ov)


@train_app.command("mllm")
@cli_errors
def train_mllm(
    stage: int = typer.Option(..., help="1: connector only on captions; 2: connector + LLM on instructions."),
    data: str = T["data"], model: str = T["model"], out: str = T["out"], recipe: Path | None = T["recipe"],
    vision: str | None = typer.Option(None, help="Stage 1 from parts: the vision encoder (CLIP ViT-L/14-336); "
                                      "--model is then the LLM."),
    max_length: int | None = typer.Option(None, help="Longest sample in tokens (image tokens included)."),
    image_field: str | None = typer.Option(None, help="Column with the image."),
    caption_prompts: str | None = typer.Option(None, help="YAML of caption requests per language ({eu: ..., "
                                               "en: ...}; default: prompts/mllm/caption.yaml). A caption row in a "
                                               "language the table lacks stops the run before it starts."),
    lr: float | None = T["lr"], warmup_ratio: float | None = T["warmup_ratio"],
    weight_decay: float | None = T["weight_decay"], epochs: float | None = T["epochs"],
    max_steps: int | None = T["max_steps"], micro_batch: int | None = T["micro_batch"],
    global_batch: int | None = T["global_batch"], seed: int | None = T["seed"], dtype: str | None = T["dtype"],
    attn: str | None = T["attn"], sharding: str | None = T["sharding"], parallel: str | None = T["parallel"],
    deepspeed_config: str | None = T["deepspeed_config"], save_every: int | None = T["save_every"],
    keep_checkpoints: int | None = T["keep_checkpoints"],
    gradient_checkpointing: bool | None = T["gradient_checkpointing"], export: bool | None = T["export"],
    log_every: int | None = T["log_every"], peak_tflops: float | None = T["peak_tflops"],
    report_to: str | None = T["report_to"], run_name: str | None = T["run_name"],
    wandb_project: str | None = T["wandb_project"],
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
@cli_errors
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
        fail(e)
    except FileNotFoundError as e:
        fail(PipeError(f"{e.filename}: not found (is this a pipe train run folder?)"))
    typer.echo(f"{path}: exported from {ck}")
