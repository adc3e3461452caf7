"""Sharded checkpoints (``torch.distributed.checkpoint``), preemption, and export to a HF folder.

A checkpoint is ``RUN/checkpoints/step_XXXXXXXX/``: the DCP shards of model and optimizer (every rank
writes its own, in parallel; DeepSpeed's own sharded checkpoint under ``deepspeed/`` on that backend), plus one small ``extra_rank{r}.pt`` per rank with the scheduler, the step
(which is the data position, see :mod:`lrpipe.training.data`) and that rank's RNG states. It is written
under a ``.tmp`` name, marked ``.complete`` and renamed once every rank has finished, so a kill at any moment leaves either
the previous checkpoint or the new one, never half of one; ``latest`` names the newest.

SIGTERM (Slurm preemption, ``scancel``) and SIGUSR1 (``#SBATCH --signal=USR1@120`` before the time
limit) only raise a flag, and so does a ``STOP`` file in the run folder; the loop checks them on every
rank after each step (one all-reduce), saves and exits, so the ranks never disagree on where they
stopped. A rank whose launcher dies gets SIGTERM from the kernel (:func:`die_with_launcher`), so even a
launcher killed outright leaves a checkpoint and no orphan. README "Preemption" says which launcher
flags let the signal through.

Export loads a checkpoint on CPU in one process (DCP reads any sharding into a plain model) and writes
``save_pretrained`` safetensors, the tokenizer with its chat template, and the generation config.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from lrpipe.errors import InputError

_STOP: dict[str, Any] = {"signal": None}
COMPLETE = ".complete"
STOP_FILE = "STOP"


def install_signal_handlers() -> None:
    def handler(signum: int, _frame: Any) -> None:
        _STOP["signal"] = signum

    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, handler)


def die_with_launcher(sig: int = signal.SIGTERM) -> None:
    """Under a launcher (torchrun, accelerate launch), have the kernel send ``sig`` to this rank when
    the launcher dies. A launcher killed outright (``kill -USR1`` on a torchrun that does not handle it
    dies at once) then leaves no rank training as an orphan: each rank gets SIGTERM, checkpoints at the
    step in progress with the others and exits. Linux only; elsewhere a no-op."""
    if sys.platform != "linux" or "LOCAL_RANK" not in os.environ or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)
    if os.getppid() == 1:  # the launcher died before we asked
        os.kill(os.getpid(), sig)


def stop_requested(run: Path | None = None) -> str | None:
    """Why this rank should checkpoint and stop now: a signal it received, or a ``STOP`` file in the
    run folder (what the Slurm script writes when the job is about to end: it reaches every rank on every
    node through the shared filesystem, whatever the launcher did with the signal)."""
    if _STOP["signal"] is not None:
        return signal.Signals(_STOP["signal"]).name
    if run is not None and (Path(run) / STOP_FILE).exists():
        return STOP_FILE
    return None


def clear_stop_file(run: Path) -> None:
    """Rank 0, once the request is served (or at the start: a new run obeys no old request)."""
    with contextlib.suppress(FileNotFoundError):
        (Path(run) / STOP_FILE).unlink()


def rng_state() -> dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def ckpt_dir(run: Path) -> Path:
    return Path(run) / "checkpoints"


def list_checkpoints(run: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a ``.tmp`` directory is an interrupted save)."""
    d = ckpt_dir(run)
    if not d.exists():
        return []
    return sorted(p for p in d.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / COMPLETE).exists())


def latest_checkpoint(run: Path) -> Path | None:
    found = list_checkpoints(run)
    return found[-1] if found else None


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def save_with(run: Path, step: int, write: Any, sched: Any, rank: int, keep: int,
              extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically: every rank writes into ``step_N.tmp`` (``write(tmp)``: the sharded
    state, and our per-rank extra file), rank 0 marks it complete and renames it, then prunes old ones."""
    final = ckpt_dir(run) / f"step_{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    write(tmp)
    torch.save({"step": step, "sched": sched.state_dict(), "rng": rng_state(), **(extra or {})},
               tmp / f"extra_rank{rank}.pt")
    _barrier()
    if rank == 0:
        (tmp / COMPLETE).write_text(f"{step}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        (ckpt_dir(run) / "latest.tmp").write_text(final.name + "\n")
        os.replace(ckpt_dir(run) / "latest.tmp", ckpt_dir(run) / "latest")
        for old in list_checkpoints(run)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def save(run: Path, step: int, model: torch.nn.Module, optim: torch.optim.Optimizer, sched: Any,
         rank: int, keep: int, extra: dict[str, Any] | None = None) -> Path:
    """A DCP checkpoint of model and optimizer (FSDP2: every rank writes its own shards in parallel)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    def write(tmp: Path) -> None:
        msd, osd = get_state_dict(model, optim)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp))

    return save_with(run, step, write, sched, rank, keep, extra)


def load_extra(path: Path, sched: Any, rank: int) -> dict[str, Any]:
    """Scheduler and this rank's RNG from a checkpoint; returns the extra record (``step``…)."""
    f = path / f"extra_rank{rank}.pt"
    if not f.exists():  # resumed on more ranks than saved: scheduler and step are the same on every rank
        f = path / "extra_rank0.pt"
    extra = torch.load(f, weights_only=False)
    sched.load_state_dict(extra["sched"])
    if f.name == f"extra_rank{rank}.pt":
        set_rng_state(extra["rng"])
    return extra


def load(path: Path, model: torch.nn.Module, optim: torch.optim.Optimizer, sched: Any, rank: int) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG; returns the extra record (``step``…)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optim)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return load_extra(path, sched, rank)


def load_model_weights(path: Path, model: torch.nn.Module) -> None:
    """Model weights of a checkpoint (DCP from FSDP2, or DeepSpeed ZeRO-3) into a plain model."""
    import warnings

    if not (path / COMPLETE).exists():
        raise InputError("not a complete checkpoint", path=str(path))
    if (path / "deepspeed").is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(path), tag="deepspeed")
        missing, unexpected = model.load_state_dict(sd, strict=False)
        tied = {k for k in missing if k.endswith("lm_head.weight")}  # tied to the embedding: saved once
        if set(missing) - tied or unexpected:
            raise InputError(f"checkpoint does not fit the model (missing {sorted(missing)[:3]}, unexpected "
                             f"{sorted(unexpected)[:3]})", path=str(path))
        return
    sd = model.state_dict()
    state = {"model": sd}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])


def resolve_checkpoint(run_or_ckpt: str | Path) -> Path:
    p = Path(run_or_ckpt)
    if (p / COMPLETE).exists():
        return p
    found = latest_checkpoint(p)
    if found is None:
        raise InputError("no complete checkpoint here", path=str(p))
    return found
