"""Training configuration as validated data.

Defaults are the instruction study's Table 5 (Appendix B): lr 1e-5, cosine to 0.33× of the peak after
10% warmup, weight decay 0.1, AdamW (0.9, 0.95, 1e-8), bf16, micro batch 2 of 8,192-token packed rows,
2M tokens per optimizer step, 4 epochs, gradient checkpointing, seed 33. The two stages of the
multimodal study override what differs (:data:`MLLM_STAGES`). A YAML recipe holds any subset of the
fields; command-line options override the recipe; unknown keys are refused with the file named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # what to train
    model: str = Field(..., description="HF id or folder, or a config.json to start from random weights")
    data: str = Field(..., description="pipe pack output (text) or a pipe mix directory (mllm)")
    out: str = Field(..., description="run folder: checkpoints/, log.jsonl, final/")
    init: Literal["pretrained", "random"] = "pretrained"
    # optimization (Table 5)
    lr: float = 1e-5
    min_lr_ratio: float = 0.33
    warmup_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    epochs: float = 4.0
    max_steps: int | None = Field(None, description="stop after this many optimizer steps (smoke tests)")
    micro_batch: int = 2
    tokens_per_step: int | None = 2 * 1024 * 1024
    global_batch: int | None = Field(None, description="rows per optimizer step (overrides tokens_per_step)")
    seed: int = 33
    neftune_alpha: float | None = Field(None, description="NEFTune noise (the released configs used 5)")
    # numerics and memory
    dtype: Literal["bf16", "fp32", "auto"] = "auto"
    gradient_checkpointing: bool = True
    attn: Literal["auto", "flash", "sdpa", "eager"] = "auto"
    # parallelism
    parallel: Literal["fsdp2", "deepspeed"] = "fsdp2"
    sharding: Literal["full", "hybrid"] = "full"
    hybrid_shard_size: int | None = Field(None, description="ranks per shard group with hybrid sharding "
                                          "(default: the ranks of one node)")
    deepspeed_config: str | None = Field(None, description="DeepSpeed JSON (default training/configs/deepspeed-zero3.json)")
    # checkpoints
    save_every: int = 500
    keep_checkpoints: int = 2
    export: bool = True
    # logging
    log_every: int = 1
    report_to: list[Literal["tensorboard", "wandb"]] | None = Field(
        None, description="trackers beside log.jsonl (default: TensorBoard when it is installed; [] for none)")
    wandb_project: str = "pipe"
    run_name: str | None = Field(None, description="tracker run name (default: the run folder's name)")
    peak_tflops: float | None = Field(None, description="accelerator bf16 dense peak, to override the table")
    # multimodal (pipe train mllm)
    stage: int | None = None
    vision: str | None = Field(None, description="vision encoder (stage 1 from scratch), e.g. CLIP ViT-L/14-336")
    train: Literal["all", "connector", "connector+llm"] = "all"
    max_length: int = 8192
    image_field: str = "image"
    #: the caption prompt table, {language: request} (default: prompts/mllm/caption.yaml)
    caption_prompts: str | None = None


#: The multimodal study's two stages (§3, Appendix C): what each trains and its optimizer settings.
MLLM_STAGES: dict[int, dict[str, Any]] = {
    1: {"train": "connector", "lr": 1e-3, "warmup_ratio": 0.03, "weight_decay": 0.0, "global_batch": 32,
        "tokens_per_step": None, "epochs": 1.0, "min_lr_ratio": 0.0},
    2: {"train": "connector+llm", "lr": 2e-5, "warmup_ratio": 0.03, "weight_decay": 0.01, "global_batch": 128,
        "tokens_per_step": None, "epochs": 1.0, "min_lr_ratio": 0.0},
}


def load_config(recipe: str | Path | None, overrides: dict[str, Any], *, stage: int | None = None) -> TrainConfig:
    """Stage defaults < recipe file < command-line overrides (``None`` values are not overrides)."""
    values: dict[str, Any] = dict(MLLM_STAGES[stage]) if stage else {}
    if stage:
        values["stage"] = stage
    if recipe:
        from lrpipe.config_files import read_yaml

        values.update(read_yaml(recipe, "training recipe"))
    values.update({k: v for k, v in overrides.items() if v is not None})
    from lrpipe.config_files import validate

    return validate(TrainConfig, values, recipe or "command line", "training configuration")
