"""``pipe train text``: causal-LM SFT (or continued pre-training) on ``pipe pack`` shards.

The loss is transformers' own (shifted cross-entropy summed over label tokens) divided by the number of
loss tokens in the global batch, passed as ``num_items_in_batch``; attention stays inside documents
(:func:`lrpipe.training.data.collate`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from lrpipe.errors import InputError
from lrpipe.training.config import TrainConfig
from lrpipe.training.data import IGNORE, PackedShards, additive_mask, collate
from lrpipe.training.metrics import attention_flops_per_token

log = logging.getLogger(__name__)


def attn_implementation(choice: str) -> str:
    """``flash`` (varlen over flattened micro batches) when flash-attn is installed on a GPU, else SDPA
    with the block mask."""
    if choice == "flash":
        return "flash_attention_2"
    if choice != "auto":
        return choice
    import importlib.util

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def model_config(path: str) -> Any:
    """A model id/folder, or a config.json file (random init from a config)."""
    from transformers import AutoConfig

    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        return AutoConfig.from_pretrained(str(p.parent)) if p.name == "config.json" else \
            AutoConfig.for_model(**json.loads(p.read_text()))
    return AutoConfig.from_pretrained(path)


def pack_tokenizer(data: str) -> str | None:
    """The tokenizer ``pipe pack`` used (from its header), if the data is still there."""
    from lrpipe.errors import PipeError
    from lrpipe.shards import ShardDir

    try:
        return (ShardDir.open(data).header().get("config") or {}).get("tokenizer")
    except (PipeError, OSError):  # not a shard directory (any more): the model's own tokenizer is used
        return None


def save_tokenizer_and_generation(model_path: str, fallback_tokenizer: str | None, out: Path, config: Any) -> None:
    """Tokenizer (with its chat template) and generation config beside the exported weights."""
    from transformers import AutoTokenizer, GenerationConfig

    src = Path(model_path).parent if Path(model_path).is_file() else model_path
    tok = None
    for cand in (str(src), fallback_tokenizer):
        if not cand:
            continue
        try:
            tok = AutoTokenizer.from_pretrained(cand)
            break
        except (OSError, ValueError) as e:  # no tokenizer files there: the next candidate
            log.info("no tokenizer in %s (%s)", cand, e)
    if tok is not None:
        tok.save_pretrained(out)
    else:
        log.warning("exported %s without a tokenizer: none found in %s or %s", out, src, fallback_tokenizer)
    try:
        gen = GenerationConfig.from_pretrained(str(src))
    except OSError:  # the checkpoint has no generation_config.json: derive one from the model config
        gen = GenerationConfig.from_model_config(config)
    gen.save_pretrained(out)


class TextTask:
    name = "text"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.data = PackedShards(cfg.data)
        self.n_rows, self.seq_len = len(self.data), self.data.seq_len
        self.attn = attn_implementation(cfg.attn)
        self.flatten = self.attn == "flash_attention_2"
        self.compute_dtype = torch.float32  # set by the loop (bf16 under mixed precision)
        self.config = model_config(cfg.model)
        self.config.use_cache = False
        self.tokenizer = (self.data.header.get("config") or {}).get("tokenizer")

    # ---- model
    def build(self, meta: bool, keep_dtype: bool = False) -> torch.nn.Module:
        """The model: on the meta device (``meta``), or with its weights — in fp32 (the masters), or
        with ``keep_dtype`` in the checkpoint's own dtype, for a copy that is only read from (FSDP2's
        rank 0 casts it tensor by tensor into the fp32 shards)."""
        from transformers import AutoModelForCausalLM

        if meta:
            with torch.device("meta"):
                return AutoModelForCausalLM.from_config(self.config, attn_implementation=self.attn,
                                                        dtype=torch.float32)
        if self.cfg.init == "random" or Path(self.cfg.model).suffix == ".json":
            torch.manual_seed(self.cfg.seed)
            return AutoModelForCausalLM.from_config(self.config, attn_implementation=self.attn, dtype=torch.float32)
        return AutoModelForCausalLM.from_pretrained(self.cfg.model, attn_implementation=self.attn,
                                                    dtype="auto" if keep_dtype else torch.float32)

    def prepare(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base = getattr(model, "model", model)
        if not hasattr(base, "layers"):
            raise InputError(f"cannot find the transformer blocks of {type(model).__name__} (model.layers)",
                             path=self.cfg.model)
        return list(base.layers)

    # ---- data
    def batch(self, rows: list[int]) -> dict[str, Any]:
        recs = [self.data.row(i) for i in rows]
        b = collate(recs, flatten=self.flatten)
        b["_seq_lens"] = [[int(n) for n in r["seq_lens"]] for r in recs]
        return b

    def loss_tokens(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"][..., 1:] != IGNORE).sum())

    def forward(self, model: torch.nn.Module, batch: dict[str, Any], n_items: float) -> torch.Tensor:
        kw = {k: v for k, v in batch.items() if not k.startswith("_")}
        if self.attn == "eager" and "attention_mask" in kw:
            kw["attention_mask"] = additive_mask(kw["attention_mask"], self.compute_dtype).to(kw["input_ids"].device)
        return model(**kw, num_items_in_batch=n_items).loss

    def step_flops(self, batches: list[dict[str, Any]], n_dense: int) -> tuple[float, int]:
        c = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        flops, tokens = 0.0, 0
        for b in batches:
            n = int(b["input_ids"].numel())
            attn = attention_flops_per_token(c.num_hidden_layers, c.hidden_size, b["_seq_lens"], self.seq_len)
            flops += n * (6.0 * n_dense + attn)
            tokens += n
        return flops, tokens

    # ---- export
    def export(self, checkpoint: Path, out: Path) -> Path:
        return export_causal_lm(self.cfg, checkpoint, out, self.tokenizer)


def export_causal_lm(cfg: TrainConfig, checkpoint: Path, out: Path, tokenizer: str | None,
                     max_shard_bytes: int | None = None) -> Path:
    """Checkpoint → HF folder (safetensors in the training dtype, tokenizer, chat template, generation
    config), streamed shard by shard (:mod:`lrpipe.training.export`): the exporting process never holds
    more than about one output shard of weights."""
    from transformers import AutoModelForCausalLM

    from lrpipe.training.export import DEFAULT_SHARD_BYTES, export_streaming

    config = model_config(cfg.model)
    config.use_cache = True
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dtype = torch.bfloat16 if cfg.dtype == "bf16" or (cfg.dtype == "auto" and torch.cuda.is_available()) \
        else torch.float32
    export_streaming(model, checkpoint, out, dtype, max_shard_bytes or DEFAULT_SHARD_BYTES)
    save_tokenizer_and_generation(cfg.model, tokenizer, out, config)
    return out
