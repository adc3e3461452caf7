"""Process group, device mesh and FSDP2 sharding, applied around the model (torchtitan's shape).

The launcher is torchrun or ``accelerate launch`` (they set ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``);
a plain ``pipe train`` without them runs as a one-process group, through the same code path.

**Sharding.** ``full``: one mesh dimension over all ranks (ZeRO-3-like; the study's 70B run).
``hybrid``: a 2-D mesh ``(replicate = nodes, shard = GPUs of a node)``: parameters are sharded inside a
node and replicated across nodes, so the all-gathers stay on NVLink (the study's 8B runs). Every
transformer block is its own FSDP unit, then the root; parameters keep fp32 master copies and compute
in bf16 with fp32 gradient reduction.

**Loading without N copies.** Only rank 0 reads the pretrained weights (on CPU); the other ranks build
the model on the meta device. After sharding, every rank allocates only its shards and the weights are
broadcast from rank 0 into them (``set_model_state_dict(..., broadcast_from_rank0=True)``). Buffers that
are not in the state dict (rotary frequencies) are broadcast too.
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


def materialize(build: Callable[[bool], torch.nn.Module], prepare: Callable[[torch.nn.Module], list[torch.nn.Module]],
                env: Env, mesh: Any, bf16: bool) -> torch.nn.Module:
    """Build (rank 0 real, others meta), prepare (freeze, checkpointing; returns the blocks), shard,
    allocate shards on the device and broadcast rank 0's weights and buffers into them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    model = build(not env.is_main)
    full_sd = model.state_dict() if env.is_main else {}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()} if env.is_main else {}
    blocks = prepare(model)
    shard_model(model, blocks, mesh, bf16)
    if env.is_main:
        model.to(env.device)
    else:
        model.to_empty(device=env.device)
    set_model_state_dict(model, full_sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for name, buf in model.named_buffers():
        if env.is_main:
            buf.data.copy_(buffers[name].to(env.device))
        if env.world > 1:
            dist.broadcast(buf.data, src=0)
    del full_sd, buffers
    return model


def all_sum(*xs: float | int, env: Env) -> list[float]:
    """Sums over all ranks of a few numbers, in one collective."""
    t = torch.tensor([float(x) for x in xs], dtype=torch.float64, device=env.device)
    if env.world > 1:
        dist.all_reduce(t)
    return t.tolist()
