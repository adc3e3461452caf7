"""Throughput, MFU and the run log.

MFU counts the FLOPs a training token costs, ``6·N`` for the dense weights (forward + backward) plus
attention, ``12·L·d·c`` per token where ``c`` is the mean causal context length the token attends to
(for packed rows, within its document: ``c = Σ n_i² / (2·S)``), over the accelerator's dense bf16 peak.
Gradient checkpointing's recomputation is not counted (as in PaLM's definition: it is overhead, not
model FLOPs). The peak table lives here and nowhere else.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lrpipe.errors import InputError

#: Dense bf16 peak TFLOP/s per accelerator (vendor datasheets, without sparsity).
PEAK_TFLOPS: dict[str, float] = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "MI300X": 1307.0,
    "MI250X": 383.0,
}


def peak_tflops(override: float | None = None) -> float | None:
    """The current accelerator's peak from the table (longest matching name), or ``override``."""
    if override:
        return override
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name()
    except Exception:  # pragma: no cover
        return None
    hits = [k for k in PEAK_TFLOPS if k.lower() in name.lower()]
    return PEAK_TFLOPS[max(hits, key=len)] if hits else None


def dense_params(model: Any) -> int:
    """Parameters that cost 2 FLOPs per token each way: all but the input embedding table (a lookup)."""
    emb = model.get_input_embeddings()
    skip = {id(p) for p in emb.parameters()} if emb is not None else set()
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = out_emb is not None and emb is not None and out_emb.weight is emb.weight
    def numel(p: Any) -> int:  # DeepSpeed ZeRO-3 keeps the full size beside the (empty) local partition
        return int(getattr(p, "ds_numel", p.numel()))

    n = sum(numel(p) for p in model.parameters() if id(p) not in skip)
    if tied:
        n += numel(emb.weight)
    return n


def attention_flops_per_token(n_layers: int, hidden: int, seq_lens: list[list[int]], seq_len: int) -> float:
    """12·L·d·c with c the mean attended context of a token in these packed rows (causal, per document)."""
    if not seq_lens:
        return 0.0
    ctx = sum(sum(n * n for n in lens) for lens in seq_lens) / (2.0 * seq_len * len(seq_lens))
    return 12.0 * n_layers * hidden * ctx


class RunLog:
    """The run's log on rank 0: ``log.jsonl`` always (the record every tool here reads), mirrored to the
    trackers of ``report_to``: TensorBoard (``RUN/tensorboard``) and Weights & Biases.

    W&B keeps one run across restarts: its id is stored in ``RUN/wandb_id`` and a resumed job (a Slurm
    requeue) continues that run. Without ``WANDB_API_KEY``/``WANDB_MODE`` (a compute node with no
    network) W&B runs offline into ``RUN/wandb/``; ``wandb sync RUN/wandb/offline-run-*`` uploads it
    later. ``report_to=None`` keeps the old default: TensorBoard when it is installed.
    """

    def __init__(self, out: Path, rank: int, resume: bool, *, report_to: list[str] | None = None,
                 config: dict[str, Any] | None = None, project: str = "pipe", name: str | None = None,
                 start: int = 0) -> None:
        self.rank, self.tb, self.wandb = rank, None, None
        self.fh = None
        if rank != 0:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.fh = open(out / "log.jsonl", "a" if resume else "w")
        wanted = set(report_to or [])
        if report_to is None or "tensorboard" in wanted:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except Exception as e:  # not installed: an error only when asked for
                if report_to is not None:
                    raise InputError(f"--report-to tensorboard needs the tensorboard package ({e}); "
                                     "pip install tensorboard") from e
        if "wandb" in wanted:
            self.wandb = _wandb_run(out, resume, config or {}, project, name or out.resolve().name)
            if resume:
                self._replay(out / "log.jsonl", start)

    def _replay(self, path: Path, upto: int) -> None:
        """Send W&B the steps up to the checkpoint this restart resumes from, from ``log.jsonl``. A job
        killed outright loses what W&B's service had not written yet (its log is buffered; ``log.jsonl``
        is flushed line by line); steps W&B already has are ignored by it."""
        last: dict[int, dict[str, Any]] = {}
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if "step" in rec and "event" not in rec and rec["step"] <= upto:
                last[rec["step"]] = rec
        for step in sorted(last):
            self._mirror(last[step], tb=False)

    def write(self, rec: dict[str, Any]) -> None:
        if self.fh is None:
            return
        rec = {"time": round(time.time(), 3), **rec}
        self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()
        if "step" in rec:
            self._mirror(rec)

    def _mirror(self, rec: dict[str, Any], tb: bool = True) -> None:
        scalars = {k: v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k not in ("step", "time")}
        if self.tb is not None and tb:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}", v, rec["step"])
            self.tb.flush()  # a step takes seconds: the events file is never more than one step behind
        if self.wandb is not None:
            if "event" in rec:  # start, resume, preempted, done: a note in the run's summary, not a curve
                self.wandb.summary[f"event/{rec['event']}"] = rec["step"]
            else:
                self.wandb.log({f"train/{k}": v for k, v in scalars.items()}, step=rec["step"])

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_run(out: Path, resume: bool, config: dict[str, Any], project: str, name: str) -> Any:
    """Start (or continue, after a restart) the W&B run of this run folder."""
    import os
    import secrets

    try:
        import wandb
    except ImportError as e:
        raise InputError("--report-to wandb needs the wandb package: pip install wandb") from e
    if not (os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY")):
        os.environ["WANDB_MODE"] = "offline"
        print(f"pipe train: W&B runs offline (no WANDB_API_KEY); upload later with: wandb sync "
              f"{out}/wandb/offline-run-*", flush=True)
    id_file = out / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)  # W&B's id form
    id_file.write_text(run_id + "\n")
    return wandb.init(project=os.environ.get("WANDB_PROJECT", project), name=name, id=run_id, resume="allow",
                      dir=str(out), config=config)
