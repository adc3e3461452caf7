"""The training loop: one function that reads top to bottom (nanoGPT's shape, torchtitan's parts).

Why our own loop and not ``transformers.Trainer``/TRL: the three things this project needs most are
where those trainers are weakest for packed pre-tokenized shards on FSDP2 — (1) the data position is
the step number, so a killed job resumes at the same sample without replaying a dataloader; (2) the
loss is averaged over the loss tokens of the *whole global batch* (all ranks, all micro batches),
which needs the global count before the first backward; (3) a checkpoint holds model, optimizer,
scheduler, RNG and data position as one DCP directory written by every rank in parallel, also on
SIGTERM. Everything else comes from the libraries: models and loss from transformers, sharding from
``torch.distributed.fsdp.fully_shard``, checkpoints from ``torch.distributed.checkpoint``.

A *task* supplies what differs between text SFT and the multimodal model (:mod:`.text`, :mod:`.mllm`):
how to build the model, which blocks to shard and what to freeze, how to turn row indices into a
batch and a batch into a loss, and how to export.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from lrpipe.training import checkpoint as ckpt
from lrpipe.training.backends import BACKENDS
from lrpipe.training.config import TrainConfig
from lrpipe.training.data import Layout, StepSampler
from lrpipe.training.metrics import RunLog, dense_params, peak_tflops
from lrpipe.training.parallel import (
    Env,
    all_sum,
    init_distributed,
    shutdown,
)


class Task(Protocol):
    name: str
    n_rows: int
    seq_len: int

    def build(self, meta: bool) -> torch.nn.Module: ...
    def prepare(self, model: torch.nn.Module) -> list[torch.nn.Module]: ...
    def batch(self, rows: list[int]) -> dict[str, Any]: ...
    def loss_tokens(self, batch: dict[str, Any]) -> int: ...
    def forward(self, model: torch.nn.Module, batch: dict[str, Any], n_items: float) -> torch.Tensor: ...
    def step_flops(self, batches: list[dict[str, Any]], n_dense: int) -> tuple[float, int]: ...
    def export(self, checkpoint: Path, out: Path) -> Path: ...


def lr_lambda(total: int, warmup: int, min_ratio: float):
    """Linear warmup to the peak, then cosine down to ``min_ratio`` × peak at the last step."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def use_bf16(cfg: TrainConfig, env: Env) -> bool:
    if cfg.dtype == "auto":  # bf16 on GPUs; on CPU bf16 is emulated (slow) on most machines
        return env.device.type == "cuda"
    return cfg.dtype == "bf16"


def add_neftune(model: torch.nn.Module, alpha: float, seq_len: int) -> None:
    """NEFTune (Jain et al. 2023): uniform noise of scale α/√(L·d) on the input embeddings, training only."""
    emb = model.get_input_embeddings()

    def hook(mod: torch.nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        if not mod.training:
            return out
        mag = alpha / math.sqrt(seq_len * out.size(-1))
        return out + torch.zeros_like(out).uniform_(-mag, mag)

    emb.register_forward_hook(hook)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train(cfg: TrainConfig, task: Task) -> dict[str, Any]:
    ckpt.die_with_launcher()
    ckpt.install_signal_handlers()  # from the start: a signal during loading stops after the first step
    env = init_distributed()
    run = Path(cfg.out)
    bf16 = use_bf16(cfg, env)
    task.compute_dtype = torch.bfloat16 if bf16 else torch.float32
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # ---- data layout and schedule
    layout = Layout.plan(micro=cfg.micro_batch, world=env.world, seq_len=task.seq_len,
                         tokens_per_step=cfg.tokens_per_step, global_batch=cfg.global_batch)
    sampler = StepSampler(task.n_rows, layout, cfg.seed)
    total = sampler.total_steps(cfg.epochs)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    if total < 1:
        from lrpipe.errors import InputError

        raise InputError(f"{task.n_rows} rows make no full step of {layout.rows_per_step} rows", path=cfg.data)
    warmup = max(1, math.ceil(cfg.warmup_ratio * total))

    # ---- model, optimizer and schedule on the chosen backend (FSDP2: meta build, rank 0's weights
    # broadcast into the shards; DeepSpeed ZeRO-3 through accelerate)
    backend = BACKENDS[cfg.parallel](cfg, task, env, bf16, lr_lambda(total, warmup, cfg.min_lr_ratio), layout.accum)
    model = backend.model
    if cfg.neftune_alpha:
        add_neftune(model, cfg.neftune_alpha, task.seq_len)
    n_dense = dense_params(model)

    # ---- resume
    start = 0
    found = ckpt.latest_checkpoint(run)
    if found is not None:
        start = backend.load(found)["step"]
    elif env.is_main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(cfg.model_dump(), indent=2) + "\n")
    if env.is_main:
        ckpt.clear_stop_file(run)  # a STOP left from an earlier run is not a request to this one
    log = RunLog(run, env.rank, resume=start > 0, report_to=cfg.report_to, config=cfg.model_dump(),
                 project=cfg.wandb_project, name=cfg.run_name, start=start)
    peak = peak_tflops(cfg.peak_tflops)
    if env.is_main:
        log.write({"event": "start" if start == 0 else "resume", "step": start, "total_steps": total,
                   "world": env.world, "accum": layout.accum, "rows_per_step": layout.rows_per_step,
                   "tokens_per_step": layout.rows_per_step * task.seq_len if task.name == "text" else None,
                   "params_dense": n_dense,
                   "bf16": bf16, "device": str(env.device), "parallel": cfg.parallel})
    bar, lines = None, None
    if env.is_main and os.environ.get("PIPE_PROGRESS", "1") != "0":
        if sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=total, initial=start, desc=f"train {task.name}", unit="step", dynamic_ncols=True)
        else:  # a batch job's log: one line every PIPE_LOG_EVERY seconds (and the first step)
            lines = _StepLines(f"train {task.name}", start, total)

    # ---- the loop
    model.train()
    stopped = None
    step = start
    for step in range(start, total):
        t0 = time.perf_counter()
        batches = [task.batch(sampler.rows(step, k, env.rank)) for k in range(layout.accum)]
        (n_items,) = all_sum(sum(task.loss_tokens(b) for b in batches), env=env)  # the global batch's loss tokens
        loss_sum = torch.zeros((), device=env.device)
        for b in batches:
            loss = task.forward(model, _to(b, env.device), max(n_items, 1.0) / env.world)
            backend.backward(loss)
            loss_sum += loss.detach()
        lr = backend.lr
        grad_norm = backend.step()  # clip, optimizer, scheduler, zero the gradients
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        flops, tokens = task.step_flops(batches, n_dense)
        # one collective for the step's figures and the stop flag (any rank signalled: all stop here)
        loss_total, flops, tokens, stops = all_sum(float(loss_sum), flops, tokens,
                                                   ckpt.stop_requested(run) is not None, env=env)
        mean_loss, tokens, stop = loss_total / env.world, int(tokens), stops > 0
        rec = {"step": step + 1, "loss": mean_loss, "grad_norm": grad_norm, "lr": lr,
               "loss_tokens": int(n_items), "tokens": tokens, "tokens_per_s_per_gpu": tokens / dt / env.world,
               "step_time": dt}
        if peak:
            rec["mfu"] = flops / dt / env.world / (peak * 1e12)
        if (step + 1) % cfg.log_every == 0 or step + 1 == total:
            log.write(rec)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{rec['tokens_per_s_per_gpu']:.0f}",
                            **({"mfu": f"{rec['mfu']:.1%}"} if "mfu" in rec else {}))
        if lines is not None:
            lines.update(step + 1, rec)
        if stop or (step + 1) % cfg.save_every == 0 or step + 1 == total:
            backend.save(run, step + 1)
        if stop:
            stopped = ckpt.stop_requested(run) or "peer"
            if env.is_main:
                ckpt.clear_stop_file(run)
            break
    if bar is not None:
        bar.close()

    result: dict[str, Any] = {"run": str(run), "steps": total, "stopped_at": step + 1 if stopped else None}
    if stopped:
        log.write({"event": "preempted", "step": step + 1, "signal": str(stopped)})
    elif env.is_main:
        log.write({"event": "done", "step": total})
    log.close()
    backend.close()
    shutdown()
    if not stopped and cfg.export and env.is_main:
        result["export"] = str(task.export(ckpt.latest_checkpoint(run), run / "final"))
    return result


class _StepLines:
    """Training progress for a log file: step, loss, throughput, MFU, ETA, at most every
    ``PIPE_LOG_EVERY`` seconds (60), so a two-day job's log shows where it is."""

    def __init__(self, desc: str, start: int, total: int) -> None:
        self.desc, self.start, self.total = desc, start, total
        self.t0 = time.time()
        self.last = 0.0
        self.every = float(os.environ.get("PIPE_LOG_EVERY", "60"))

    def update(self, step: int, rec: dict[str, Any]) -> None:
        now = time.time()
        if now - self.last < self.every and step != self.total:
            return
        self.last = now
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else 0.0
        parts = [f"step {step:,}/{self.total:,} ({step / self.total:.1%})", f"loss {rec['loss']:.4f}",
                 f"{rec['tokens_per_s_per_gpu']:,.0f} tok/s/gpu"]
        if "mfu" in rec:
            parts.append(f"mfu {rec['mfu']:.1%}")
        parts.append(f"ETA {int(eta) // 3600}:{int(eta) % 3600 // 60:02d}:{int(eta) % 60:02d}")
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {self.desc}: " + ", ".join(parts), file=sys.stderr,
              flush=True)
