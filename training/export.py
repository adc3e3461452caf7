"""Checkpoint → Hugging Face folder, streamed shard by shard.

A sharded checkpoint of an 8B model holds 32 GB of fp32 weights (280 GB for 70B); consolidating it
into one in-memory model before ``save_pretrained`` needs that much host memory on the one process
that exports (twice that on DeepSpeed, whose ``zero_to_fp32`` builds a full state dict first). Here
the weights go straight from the checkpoint to safetensors files: the tensors of one output shard
(``max_shard_size``, 5 GB by default, as ``save_pretrained``) are read, cast to the export dtype and
written, then freed, so the peak is about one shard, whatever the model's size. The folder is what
``save_pretrained`` writes: ``model.safetensors`` (or ``model-0000k-of-0000n.safetensors`` with
``model.safetensors.index.json``), ``config.json`` with the dtype, no duplicate of tied weights.

Reading one shard's tensors: from DCP (FSDP2) with a partial ``dcp.load`` of exactly those keys; from
DeepSpeed with ``zero_to_fp32``'s lazy mode, which materializes one tensor at a time.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lrpipe.errors import InputError

DEFAULT_SHARD_BYTES = 5 * 1000**3


def tensor_plan(model: torch.nn.Module) -> list[tuple[str, torch.Size]]:
    """(name, shape) of every tensor ``save_pretrained`` would write: the state dict without the second
    name of a tied weight (the embedding is kept, ``lm_head`` dropped)."""
    seen: set[int] = set()
    out = []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        out.append((name, t.shape))
    return out


def shard_plan(plan: list[tuple[str, torch.Size]], itemsize: int, max_bytes: int) -> list[list[tuple[str, torch.Size]]]:
    """Consecutive groups of tensors of at most ``max_bytes`` (a larger tensor is a shard of its own)."""
    shards: list[list[tuple[str, torch.Size]]] = [[]]
    size = 0
    for name, shape in plan:
        n = itemsize * max(1, int(torch.Size(shape).numel()))
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    return [s for s in shards if s]


def _dcp_reader(ckpt: Path) -> Any:
    import torch.distributed.checkpoint as dcp

    def read(names: list[tuple[str, torch.Size]]) -> dict[str, torch.Tensor]:
        state = {"model": {n: torch.empty(shape, dtype=torch.float32) for n, shape in names}}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(ckpt),
                     planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
        return state["model"]

    return read


def _deepspeed_reader(ckpt: Path) -> Any:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    lazy = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="deepspeed", lazy_mode=True)

    def read(names: list[tuple[str, torch.Size]]) -> dict[str, torch.Tensor]:
        out = {}
        for n, shape in names:
            if n not in lazy:
                raise InputError(f"checkpoint has no tensor '{n}'", path=str(ckpt))
            out[n] = lazy[n].contiguous().reshape(shape)
        return out

    return read


def checkpoint_shards(ckpt: Path, plan: list[list[tuple[str, torch.Size]]]) -> Iterator[dict[str, torch.Tensor]]:
    """The fp32 tensors of each planned shard, one shard at a time."""
    if not (ckpt / ".complete").exists():
        raise InputError("not a complete checkpoint", path=str(ckpt))
    read = _deepspeed_reader(ckpt) if (ckpt / "deepspeed").is_dir() else _dcp_reader(ckpt)
    for names in plan:
        yield read(names)


def export_streaming(model: torch.nn.Module, ckpt: Path, out: Path, dtype: torch.dtype,
                     max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write ``ckpt``'s weights for ``model`` (built on the meta device: only names and shapes are
    used) into ``out`` as ``dtype`` safetensors shards, plus ``config.json``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    itemsize = torch.empty((), dtype=dtype).element_size()
    plan = shard_plan(tensor_plan(model), itemsize, max_shard_bytes)
    files = (["model.safetensors"] if len(plan) == 1 else
             [f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors" for k in range(len(plan))])
    weight_map: dict[str, str] = {}
    total = 0
    for fname, tensors in zip(files, checkpoint_shards(ckpt, plan)):
        cast = {n: t.to(dtype).contiguous() for n, t in tensors.items()}
        del tensors
        save_file(cast, str(out / fname), metadata={"format": "pt"})
        for n, t in cast.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
        del cast
    if len(files) > 1:
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    config = model.config
    config.dtype = dtype
    config.save_pretrained(out)
    return out
