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
    """A JSONL log on rank 0, mirrored to TensorBoard when it is installed."""

    def __init__(self, out: Path, rank: int, resume: bool) -> None:
        self.rank, self.tb = rank, None
        self.fh = None
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            self.fh = open(out / "log.jsonl", "a" if resume else "w")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except Exception:
                self.tb = None

    def write(self, rec: dict[str, Any]) -> None:
        if self.fh is None:
            return
        rec = {"time": round(time.time(), 3), **rec}
        self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()
        if self.tb is not None and "step" in rec:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(f"train/{k}", v, rec["step"])

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
        if self.tb is not None:
            self.tb.close()
