"""Packed token shards for training: random access, a resumable global order, document masks.

``pipe pack`` writes Arrow IPC files of fixed-length rows (``input_ids``, ``labels``, ``position_ids``,
``seq_lens``). They are memory-mapped, so a rank touches only the rows it trains on and the page cache
is shared by the ranks of a node; nothing is loaded up front.

**Order.** The sample stream is the concatenation of one seeded permutation of all rows per epoch.
Optimizer step ``s`` takes stream positions ``[s·G, (s+1)·G)`` with ``G`` rows per step, split into
micro batches and ranks in a fixed layout. The position in the data is therefore the step number
alone: a resumed run (any number of times, after any kill) reads exactly the rows the uninterrupted run
would have read. No row is dropped at epoch ends (the stream runs on into the next permutation); only
the last partial step of the whole run is left out.

**Documents apart.** Packed rows hold several documents. The loss never predicts a document's first
token from the previous document (its label is masked here), and attention never crosses documents:
either a boolean block-diagonal causal mask built from ``seq_lens`` (SDPA, eager, CPU) or, for
FlashAttention, the micro batch flattened into one row whose restarting ``position_ids`` give the
varlen kernel its ``cu_seqlens`` (transformers' packed-sequence path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lrpipe.errors import InputError

IGNORE = -100
COLUMNS = ("input_ids", "labels", "position_ids", "seq_lens")


class MappedShards:
    """Row-addressable view of a shard directory (memory-mapped Arrow files, opened on first use)."""

    what = "a shard directory"

    def __init__(self, path: str | Path) -> None:
        from lrpipe.shards import ShardDir

        self.path = Path(path)
        if not ShardDir.is_shard_dir(self.path):
            raise InputError(f"not a shard directory (expected {self.what})", path=str(self.path))
        sd = ShardDir.open(self.path)
        self.header = sd.header()
        self.files = sd.data_files()
        if not self.files:
            raise InputError("no rows", path=str(self.path))
        self._tables: list[pa.Table | None] = [None] * len(self.files)
        self._maps: list[Any] = []
        counts = [self._table(k).num_rows for k in range(len(self.files))]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def columns(self) -> list[str]:
        """Every column any data file has (units can differ: a mixture's text-only units lack images)."""
        return list(dict.fromkeys(c for k in range(len(self.files)) for c in self._table(k).column_names))

    def _table(self, k: int) -> pa.Table:
        """File ``k`` memory-mapped: its buffers point into the page cache (zero copy), so the ranks of a
        node share one copy of the data and a rank's memory does not grow with the dataset."""
        t = self._tables[k]
        if t is None:
            src = pa.memory_map(str(self.files[k]), "r")
            self._maps.append(src)  # kept open: the table's buffers live in this mapping
            try:
                t = pa.ipc.open_stream(src).read_all()
            except pa.ArrowInvalid:
                src.seek(0)
                t = pa.ipc.open_file(src).read_all()
            self._tables[k] = t
        return t

    def locate(self, i: int) -> tuple[int, int]:
        """(file, row in file) of global row ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return k, i - int(self.offsets[k])

    def record(self, i: int) -> dict[str, Any]:
        k, j = self.locate(i)
        return self._table(k).slice(j, 1).to_pylist()[0]


class PackedShards(MappedShards):
    """``pipe pack`` output: fixed-length rows of token columns, read without Python lists."""

    what = "pipe pack output"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        # units with no rows (a mixture unit that kept none) leave empty files: look past them
        k = next((k for k in range(len(self.files)) if self._table(k).num_rows), None)
        if k is None:
            raise InputError("no packed rows (every data file is empty)", path=str(self.path))
        first = self._table(k)
        missing = [c for c in COLUMNS if c not in first.column_names]
        if missing:
            raise InputError(f"missing columns {missing} (is this pipe pack output?)", path=str(self.files[k]))
        self.seq_len = int(self.header.get("config", {}).get("seq_len") or len(first.column("input_ids")[0]))

    def row(self, i: int) -> dict[str, np.ndarray]:
        k, j = self.locate(i)
        t = self._table(k)
        out = {}
        for c in COLUMNS:
            col, jj = t.column(c), j
            for arr in col.chunks:  # no combine_chunks: that would copy the mapped buffers
                if jj < len(arr):
                    break
                jj -= len(arr)
            start, end = arr.offsets[jj].as_py(), arr.offsets[jj + 1].as_py()
            out[c] = arr.values.slice(start, end - start).to_numpy(zero_copy_only=False)
        if len(out["input_ids"]) != self.seq_len:
            raise InputError(f"row has {len(out['input_ids'])} tokens, expected {self.seq_len}",
                             path=str(self.files[k]), row=j, field="input_ids")
        return out


@dataclass(frozen=True)
class Layout:
    """How one optimizer step's rows are split: ``accum`` micro batches of ``micro`` rows per rank."""

    micro: int
    world: int
    accum: int

    @property
    def rows_per_step(self) -> int:
        return self.micro * self.world * self.accum

    @classmethod
    def plan(cls, *, micro: int, world: int, seq_len: int, tokens_per_step: int | None,
             global_batch: int | None) -> Layout:
        """Gradient accumulation that reaches the requested rows (or tokens) per step on this many ranks;
        rounded up to whole micro batches, so the realized step is never smaller than asked."""
        rows = global_batch if global_batch else max(1, -(-(tokens_per_step or seq_len) // seq_len))
        accum = max(1, -(-rows // (micro * world)))
        return cls(micro=micro, world=world, accum=accum)


class StepSampler:
    """Stream positions → row indices: epoch ``e`` is ``permutation(seed, e)``, concatenated."""

    def __init__(self, n_rows: int, layout: Layout, seed: int) -> None:
        self.n, self.layout, self.seed = n_rows, layout, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        p = self._perms.get(epoch)
        if p is None:
            p = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perms = {epoch: p, **{e: q for e, q in self._perms.items() if e >= epoch - 1}}
        return p

    def total_steps(self, epochs: float) -> int:
        return int(epochs * self.n) // self.layout.rows_per_step

    def rows(self, step: int, micro_index: int, rank: int) -> list[int]:
        lay = self.layout
        base = step * lay.rows_per_step + micro_index * lay.micro * lay.world + rank * lay.micro
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(base, base + lay.micro)]


def document_mask(seq_lens: list[np.ndarray], seq_len: int) -> np.ndarray:
    """Boolean ``[B, 1, S, S]`` mask: token i attends to j iff j ≤ i and both are in the same document."""
    out = np.zeros((len(seq_lens), 1, seq_len, seq_len), dtype=bool)
    for b, lens in enumerate(seq_lens):
        s = 0
        for n in lens:
            n = int(n)
            out[b, 0, s:s + n, s:s + n] = np.tril(np.ones((n, n), dtype=bool))
            s += n
    return out


def additive_mask(mask: Any, dtype: Any) -> Any:
    """The boolean mask as 0 / most-negative additive bias. Eager attention adds the mask to the scores,
    so a boolean mask there would mask nothing (True adds 1); SDPA takes the boolean mask as is."""
    import torch

    return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)


def collate(rows: list[dict[str, np.ndarray]], *, flatten: bool) -> dict[str, Any]:
    """Tensors for one micro batch. ``flatten``: one row of B·S tokens and no mask (FlashAttention
    varlen from position ids); otherwise ``[B, S]`` with the block mask."""
    import torch

    ids = np.stack([r["input_ids"] for r in rows]).astype(np.int64)
    labels = np.stack([r["labels"] for r in rows]).astype(np.int64)
    pos = np.stack([r["position_ids"] for r in rows]).astype(np.int64)
    for b, r in enumerate(rows):  # a document's first token is not predicted from the previous document
        starts = np.concatenate([[0], np.cumsum(r["seq_lens"])[:-1]]).astype(np.int64)
        labels[b, starts] = IGNORE
    batch: dict[str, Any] = {"labels": torch.from_numpy(labels)}
    if flatten:
        batch["input_ids"] = torch.from_numpy(ids.reshape(1, -1))
        batch["position_ids"] = torch.from_numpy(pos.reshape(1, -1))
        batch["labels"] = batch["labels"].reshape(1, -1)
    else:
        batch["input_ids"] = torch.from_numpy(ids)
        batch["position_ids"] = torch.from_numpy(pos)
        batch["attention_mask"] = torch.from_numpy(document_mask([r["seq_lens"] for r in rows], ids.shape[1]))
    return batch
