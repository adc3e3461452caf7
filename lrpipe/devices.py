"""Which GPUs a generation rank uses.

A node runs several ranks (``torchrun --nproc_per_node 8``, or ``srun --ntasks-per-node 8``), each with
its own engine: eight replicas of an 8B model, or two replicas of a 70B model at ``--tp 4``. Nothing in
vLLM picks a GPU by rank: every engine would start on GPU 0. So before an engine starts, a rank narrows
``CUDA_VISIBLE_DEVICES`` to its own block of ``tp × pp`` GPUs: the ``local_rank``-th block of the GPUs
the node makes visible. Slurm tasks started with ``--gpus-per-task`` already see exactly their block,
which is then kept as it is.
"""

from __future__ import annotations

import logging
import os

from lrpipe.errors import PipeError

log = logging.getLogger(__name__)


def local_rank() -> int | None:
    """This process's index among the ranks of its node (torchrun, then an ``srun`` task), or None."""
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        if var == "SLURM_LOCALID" and not ("SLURM_STEP_ID" in os.environ or "SLURM_STEPID" in os.environ):
            continue  # the batch script itself is not a task
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return None


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every GPU torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch build with CUDA here: no GPUs to split
        return []


def gpus_for_rank(per_replica: int, rank: int | None = None, gpus: list[str] | None = None) -> list[str] | None:
    """The GPUs of this rank's replica (``per_replica`` = tp × pp), or None when there is nothing to
    choose (no GPUs, or no launcher rank). Raises when the node has too few GPUs for its ranks."""
    rank = local_rank() if rank is None else rank
    gpus = visible_gpus() if gpus is None else gpus
    if rank is None or not gpus:
        return None
    if len(gpus) == per_replica:  # already narrowed to this rank (srun --gpus-per-task, a wrapper)
        return gpus
    start = rank * per_replica
    if start + per_replica > len(gpus):
        raise PipeError(f"local rank {rank} needs GPUs {start}..{start + per_replica - 1} of this node "
                        f"({per_replica} per replica = tp × pp), but only {len(gpus)} are visible "
                        f"({','.join(gpus)}): start fewer ranks per node, or lower --tp/--pp")
    return gpus[start:start + per_replica]


def bind_rank_gpus(tp: int = 1, pp: int = 1) -> list[str] | None:
    """Narrow ``CUDA_VISIBLE_DEVICES`` to this rank's GPUs (before the engine starts); returns them."""
    mine = gpus_for_rank(max(1, tp) * max(1, pp))
    if mine is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
        log.info("local rank %s uses GPUs %s", local_rank(), ",".join(mine))
    return mine


def spawn_replicas(dp: int, rank: int | None = None, world_size: int | None = None,
                   argv: list[str] | None = None) -> int:
    """Run this command as ``dp`` engine replicas on this node (data parallelism), and wait for them.

    vLLM's offline API runs one replica per process (``LLM(data_parallel_size=N)`` refuses to run in
    one process), so ``--dp N`` starts N copies of the command, as torchrun would: replica ``i`` gets
    ``LOCAL_RANK=i`` (so :func:`bind_rank_gpus` gives it its own ``tp × pp`` GPUs) and the rank
    ``r × N + i`` of ``w × N``, where ``r``/``w`` is this node's place among the launcher's ranks (a
    Slurm array task, ``--rank``): the ranks split the work units, never the same one twice.

    A replica that fails does not stop the others (their units do not depend on it); the return code
    is the first non-zero one, and running the same command again finishes the failed replica's
    units. SIGTERM/SIGINT are passed on to every replica.
    """
    import signal
    import subprocess
    import sys

    from lrpipe.runner import resolve_rank

    r, w = resolve_rank(rank, world_size)
    argv = list(sys.argv[1:] if argv is None else argv)
    procs = []
    for i in range(dp):
        env = dict(os.environ, LOCAL_RANK=str(i), PIPE_RANK=str(r * dp + i), PIPE_WORLD_SIZE=str(w * dp),
                   PIPE_REPLICA="1")
        procs.append(subprocess.Popen([sys.executable, "-m", "lrpipe", *argv], env=env))
    log.info("started %d replicas: ranks %d..%d of %d", dp, r * dp, r * dp + dp - 1, w * dp)

    def relay(sig: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    old = {s: signal.signal(s, relay) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    for i, c in failed:
        print(f"pipe: replica {i} (rank {r * dp + i} of {w * dp}) exited with code {c}; its finished units "
              f"are kept: run the same command again to do the rest", file=sys.stderr)
    return failed[0][1] if failed else 0


def is_replica() -> bool:
    """Whether this process is one of the replicas :func:`spawn_replicas` started."""
    return os.environ.get("PIPE_REPLICA") == "1"
