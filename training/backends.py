"""The two ways the loop's model is sharded: FSDP2 (native, default) and DeepSpeed ZeRO-3 (through
accelerate, as the multimodal study trained). The loop sees one small surface: ``model``,
``backward(loss)``, ``step() -> grad norm``, ``save``/``load``.

**FSDP2** (:mod:`.parallel`): meta-device build, rank 0's weights broadcast into the shards, a plain
``torch.optim.AdamW`` over the sharded parameters, DCP checkpoints.

**DeepSpeed ZeRO-3**: the model is built and loaded under ``deepspeed.zero.Init`` (accelerate's
plugin tells transformers), so every rank holds only its partition, in fp32 whatever the checkpoint's
dtype; only the multimodal model (assembled and its connector folded as it is built) and random inits
are built whole on CPU first and partitioned by ``accelerate.prepare``. The DeepSpeed config is
``training/configs/deepspeed-zero3.json`` (or ``deepspeed_config``), with its ``auto`` values filled in
from the run (micro batch, accumulation, clipping, bf16). DeepSpeed divides each micro batch's loss by
the accumulation steps; the loop's loss is already normalized over the global batch, so it is scaled
back. Checkpoints are DeepSpeed's own sharded ones (``engine.save_checkpoint``), in the same atomic
``step_XXXXXXXX`` directories; export reads them with ``zero_to_fp32``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lrpipe.training import checkpoint as ckpt
from lrpipe.training.config import TrainConfig
from lrpipe.training.parallel import Env, make_mesh, materialize

DEFAULT_DS_CONFIG = Path(__file__).parent / "configs" / "deepspeed-zero3.json"


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, env: Env) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norm weights (1-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            # a ZeRO-3 partitioned parameter is flat here: its real shape is ds_shape
            ndim = len(getattr(p, "ds_shape", p.shape))
            (decay if ndim >= 2 else no_decay).append(p)
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=env.device.type == "cuda")


class FSDP2:
    name = "fsdp2"

    def __init__(self, cfg: TrainConfig, task: Any, env: Env, bf16: bool, lr_lambda: Any, accum: int) -> None:
        self.cfg, self.env = cfg, env
        mesh = make_mesh(env, cfg.sharding, cfg.hybrid_shard_size)
        self.model = materialize(task.build, task.prepare, env, mesh, bf16)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optim = make_optimizer(self.model, cfg, env)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.optim, lr_lambda)

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        self.optim.step()
        self.sched.step()
        self.optim.zero_grad(set_to_none=True)
        return float(norm)

    def close(self) -> None:
        pass

    def save(self, run: Path, step: int) -> Path:
        return ckpt.save(run, step, self.model, self.optim, self.sched, self.env.rank, self.cfg.keep_checkpoints)

    def load(self, path: Path) -> dict[str, Any]:
        return ckpt.load(path, self.model, self.optim, self.sched, self.env.rank)


def deepspeed_config(cfg: TrainConfig, accum: int, bf16: bool) -> dict[str, Any]:
    path = Path(cfg.deepspeed_config) if cfg.deepspeed_config else DEFAULT_DS_CONFIG
    ds = json.loads(path.read_text())
    fill = {"train_micro_batch_size_per_gpu": cfg.micro_batch, "gradient_accumulation_steps": accum,
            "gradient_clipping": cfg.max_grad_norm}
    for k, v in fill.items():
        if ds.get(k, "auto") == "auto":
            ds[k] = v
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
    ds.setdefault("bf16", {})
    if ds["bf16"].get("enabled", "auto") == "auto":
        ds["bf16"]["enabled"] = bf16
    return ds


@contextmanager
def _zero3_init(plugin: Any, enable: bool) -> Iterator[None]:
    """Models built inside are partitioned as they are built (``enable``), or built whole: transformers
    decides by the DeepSpeed config it holds, which accelerate installs with the plugin, so it is taken
    away for the build and put back after."""
    if enable:
        yield
        return
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


class DeepSpeedZeRO3:
    name = "deepspeed"

    def __init__(self, cfg: TrainConfig, task: Any, env: Env, bf16: bool, lr_lambda: Any, accum: int) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DeepSpeedPlugin

        self.cfg, self.env, self.accum = cfg, env, accum
        torch.manual_seed(cfg.seed)
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(cfg, accum, bf16))
        self.acc = Accelerator(deepspeed_plugin=plugin, mixed_precision="bf16" if bf16 else "no",
                               gradient_accumulation_steps=accum)
        # With the plugin in place, transformers builds and loads under ``deepspeed.zero.Init``: each rank
        # holds only its partition (fp32 masters, cast from the checkpoint's dtype as it is read), never a
        # full copy. The multimodal model is rebuilt as it is loaded (stage 1 from a vision encoder and an
        # LLM; its projector folded into one linear map), which partitions cannot take piece by piece, and
        # a random init must draw the same numbers as on FSDP2 (zero.Init draws them partition by
        # partition): both are built whole on CPU first.
        whole = task.name == "mllm" or cfg.init == "random"
        with _zero3_init(plugin, enable=not whole):
            model = task.build(False)
        task.prepare(model)
        optim = make_optimizer(model, cfg, env)
        # Our scheduler steps the wrapped optimizer's parameter groups; DeepSpeed is not given one, so
        # nothing steps it twice.
        self.sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda)
        self.model, self.optim = self.acc.prepare(model, optim)
        self.engine = self.model

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed divides by the accumulation steps; the loop's loss is already a share of the global
        # batch's mean, so undo it. The engine's own API, not accelerate's backward: outside an
        # ``accumulate()`` block that one marks every micro batch as a boundary and steps the optimizer
        # each time. ``engine.step()`` updates only at the accumulation boundary, by its own count.
        self.engine.backward(loss * self.accum)
        self.engine.step()

    def step(self) -> float:
        self.sched.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def close(self) -> None:
        """Forget the global ZeRO-3 switch transformers keeps, so the export builds a plain model."""
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()

    def save(self, run: Path, step: int) -> Path:
        def write(tmp: Path) -> None:
            self.engine.save_checkpoint(str(tmp), tag="deepspeed")

        return ckpt.save_with(run, step, write, self.sched, self.env.rank, self.cfg.keep_checkpoints)

    def load(self, path: Path) -> dict[str, Any]:
        self.engine.load_checkpoint(str(path), tag="deepspeed", load_lr_scheduler_states=False)
        return ckpt.load_extra(path, self.sched, self.env.rank)


BACKENDS = {"fsdp2": FSDP2, "deepspeed": DeepSpeedZeRO3}
