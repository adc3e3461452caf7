"""Process group, device mesh and FSDP2 sharding, applied around the model (torchtitan's shape).

The launcher is torchrun or ``accelerate launch`` (they set ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``);
a plain ``pipe train`` without them runs as a one-process group, through the same code path.

**Sharding.** ``full``: one mesh dimension over all ranks (ZeRO-3-like; the study's 70B run).
``hybrid``: a 2-D mesh ``(replicate = nodes, shard = GPUs of a node)``: parameters are sharded inside a
node and replicated across nodes, so the all-gathers stay on NVLink (the study's 8B runs). Every
transformer block is its own FSDP unit, then the root; parameters keep fp32 master copies and compute
in bf16 with fp32 gradient reduction.

**Loading without N copies, masters in fp32.** Every rank builds the model on the meta device, shards
it and allocates only its fp32 shards. Rank 0 alone reads the pretrained weights, on CPU and in the
checkpoint's own dtype (bf16 for every released model); they are cast to fp32 and broadcast one tensor
at a time, each rank keeping its slice (:func:`load_from_rank0`), so the masters are fp32 on every
rank whatever the checkpoint's dtype, and no rank holds a second full copy. Buffers that are not in
the state dict (rotary frequencies) are broadcast the same way.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Env:
    rank: int
    world: int
    local_rank: int
    local_world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_OWN_ENV: dict[str, str] = {}


def init_distributed() -> Env:
    """Join (or, alone, create) the process group: NCCL on GPUs, gloo on CPU."""
    if "RANK" not in os.environ:
        _OWN_ENV.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())})
        os.environ.update(_OWN_ENV)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return Env(rank, world, local_rank, local_world, device)


def shutdown() -> None:
    """Leave the process group; a one-process run also takes back the launcher variables it set, so
    the same Python process can go on (benchmarks, notebooks) as if it had never trained."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    for k in _OWN_ENV:
        os.environ.pop(k, None)
    _OWN_ENV.clear()


def mesh_shape(world: int, local_world: int, sharding: str, shard_size: int | None = None) -> dict[str, int]:
    """Mesh dimensions: ``{"shard": world}`` for full sharding; for hybrid, shard groups of
    ``shard_size`` ranks (default: the ranks of one node) replicated ``world / shard_size`` times."""
    size = shard_size or local_world
    if sharding == "hybrid" and 0 < size < world and world % size == 0:
        return {"replicate": world // size, "shard": size}
    return {"shard": world}


def make_mesh(env: Env, sharding: str, shard_size: int | None = None) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    dims = mesh_shape(env.world, env.local_world, sharding, shard_size)
    return init_device_mesh(env.device.type, tuple(dims.values()), mesh_dim_names=tuple(dims))


def shard_model(model: torch.nn.Module, blocks: list[torch.nn.Module], mesh: Any, bf16: bool) -> None:
    """FSDP2: each block its own unit, then the root (embeddings, norms, head, connector)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else \
        MixedPrecisionPolicy()
    for i, block in enumerate(blocks):
        # the last block's parameters are needed again at once by backward: keep them gathered
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)


def materialize(build: Callable[..., torch.nn.Module], prepare: Callable[[torch.nn.Module], list[torch.nn.Module]],
                env: Env, mesh: Any, bf16: bool) -> torch.nn.Module:
    """Build on the meta device on every rank, prepare (freeze, checkpointing; returns the blocks), shard,
    allocate the shards (fp32 masters), then fill them from rank 0's copy of the weights.

    Rank 0 reads the weights in the checkpoint's own dtype (bf16 for released models: half the host
    memory of fp32) and :func:`load_from_rank0` casts them to the masters' dtype one tensor at a time,
    so no rank ever holds a second full copy and every rank's masters are fp32 whatever the checkpoint."""
    model = build(True)
    blocks = prepare(model)
    shard_model(model, blocks, mesh, bf16)
    model.to_empty(device=env.device)
    source = build(False, keep_dtype=True) if env.is_main else None
    load_from_rank0(model, source, env)
    del source
    return model


def load_from_rank0(model: torch.nn.Module, source: torch.nn.Module | None, env: Env) -> None:
    """Copy ``source``'s weights (rank 0 only; any dtype, CPU) into the sharded ``model`` on every rank:
    per tensor, rank 0 casts it to the shard's dtype on the device, it is broadcast, and each rank keeps
    its slice. Non-persistent buffers (rotary frequencies) follow the same way."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    src = dict(source.state_dict(keep_vars=True)) if source is not None else {}
    if source is not None:
        src.update({n: b for n, b in source.named_buffers() if n not in src})
    targets = dict(model.state_dict(keep_vars=True))
    targets.update({n: b for n, b in model.named_buffers() if n not in targets})
    for name, local in targets.items():
        if env.is_main:
            if name not in src:
                raise KeyError(f"{name}: not in the loaded weights")
            full = src[name].detach().to(device=env.device, dtype=local.dtype)
        else:
            full = torch.empty(local.shape, dtype=local.dtype, device=env.device)
        if env.world > 1:
            dist.broadcast(full, src=0)
        with torch.no_grad():
            if isinstance(local, DTensor):
                shape, offset = compute_local_shape_and_global_offset(full.shape, local.device_mesh,
                                                                      local.placements)
                local.to_local().copy_(full[tuple(slice(o, o + n) for n, o in zip(shape, offset))])
            else:
                local.data.copy_(full)
        del full


def all_sum(*xs: float | int, env: Env) -> list[float]:
    """Sums over all ranks of a few numbers, in one collective."""
    t = torch.tensor([float(x) for x in xs], dtype=torch.float64, device=env.device)
    if env.world > 1:
        dist.all_reduce(t)
    return t.tolist()
