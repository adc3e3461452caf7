"""``dedup``: exact duplicates of the normalized text (NFKC, case-folded, whitespace collapsed); the row
with the smallest id wins, so the result does not depend on unit order, on the number of ranks, or on
the run.

Dedup is global, so it runs in three resumable phases under the output directory's ``.work/`` folder
before rows are filtered:

1. **keys** (per input unit, by its owner rank): a 64-bit xxh3 hash of the normalized text of every
   row that survived the filters before ``dedup`` in the chain, written as one Arrow IPC *file* per
   unit with one record batch per hash partition (``hash % partitions``).
2. **resolve** (per partition, partition ``k`` by rank ``k % world_size``): read batch ``k`` of every
   key file, sort by (hash, id), keep the first of each hash; write the losers with their winner.
3. **filter** (per unit): a row is rejected when it is a loser, with the winner's id as detail.

Memory is bounded by one partition in phase 2 and by the number of duplicates in phase 3, not by the
number of rows. Ranks wait for each other between phases (polling the files, which also works across
nodes on a shared filesystem); with one rank there is nothing to wait for.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from lrpipe.filters.base import Filter, register
from lrpipe.filters.text import normalize
from lrpipe.phases import run_phase
from lrpipe.shards import atomic_ipc_file, write_table

log = logging.getLogger(__name__)


def text_hash(values: list[str | None]) -> np.ndarray:
    import xxhash

    return np.fromiter((xxhash.xxh3_64_intdigest(normalize(v).encode()) for v in values), dtype=np.uint64,
                       count=len(values))


KEY_SCHEMA = pa.schema([("hash", pa.uint64()), ("id", pa.string()), ("unit", pa.int32())])
LOSER_SCHEMA = pa.schema([("id", pa.string()), ("unit", pa.int32()), ("winner", pa.string())])


def sorted_groups(t: pa.Table, key: str) -> tuple[pa.Table, np.ndarray]:
    """``t`` sorted by (``key``, ``id``) and, for each row, the index of its group's first row: the
    row that survives its group, the same one on every run and for every rank count."""
    t = t.take(pc.sort_indices(t, sort_keys=[(key, "ascending"), ("id", "ascending")]))
    h = t.column(key).to_numpy()
    first = np.ones(len(h), dtype=bool)
    first[1:] = h[1:] != h[:-1]
    return t, np.maximum.accumulate(np.where(first, np.arange(len(h)), 0))


class GlobalFilter(Filter):
    """A filter whose verdict on a row depends on other rows: ``prepare`` writes, under ``workdir``,
    ``losers/*.arrow`` files with an ``id`` column and a ``detail`` (or ``winner``) column; a row is
    rejected when its id is listed. Ranks coordinate through files only."""

    is_global = True

    def __init__(self, field: str = "instruction", id_field: str = "id", wait_timeout: float = 7 * 24 * 3600,
                 poll_seconds: float = 5.0, **params: Any) -> None:
        super().__init__(field=field, id_field=id_field, **params)
        self.id_field, self.wait_timeout, self.poll_seconds = id_field, wait_timeout, poll_seconds
        self._losers: dict[str, str] | None = None
        self.workdir: Path | None = None

    def prepare(self, workdir: Path, units: list[Any], read_unit: Any, rank: int, world_size: int,
                workers: int = 1) -> None:
        raise NotImplementedError

    def _loser_map(self) -> dict[str, str]:
        """id → reject detail, for every row this filter removes (loaded once per process)."""
        if self._losers is None:
            assert self.workdir is not None, f"{self.name}.prepare() must run before filtering"
            m: dict[str, str] = {}
            for f in sorted((self.workdir / "losers").glob("*.arrow")):
                with pa.memory_map(str(f)) as src:
                    t = ipc.open_file(src).read_all()
                ids = t.column("id").to_pylist()
                if "detail" in t.column_names:
                    m.update(zip(ids, t.column("detail").to_pylist()))
                else:
                    m.update(zip(ids, (f"duplicate of {w}" for w in t.column("winner").to_pylist())))
            self._losers = m
        return self._losers

    def keep_batch(self, table: pa.Table) -> list[tuple[bool, str]]:
        losers = self._loser_map()
        out = []
        for rid in table.column(self.id_field).to_pylist():
            d = losers.get(rid)
            out.append((True, "") if d is None else (False, d))
        return out

    def keep(self, row: dict[str, Any]) -> bool | tuple[bool, str]:
        d = self._loser_map().get(row[self.id_field])
        return True if d is None else (False, d)


@register
class Dedup(GlobalFilter):
    name = "dedup"

    def __init__(self, field: str = "instruction", partitions: int = 64, **params: Any) -> None:
        super().__init__(field=field, partitions=partitions, **params)
        self.partitions = partitions

    # ------------------------------------------------------------------ phases
    def prepare(self, workdir: Path, units: list[Any], read_unit: Any, rank: int, world_size: int,
                workers: int = 1) -> None:
        """Run phases 1 and 2 for this rank (over ``workers`` processes), waiting for the other ranks
        where needed. ``read_unit(unit)`` returns the unit's rows that reach this filter (earlier
        filters applied)."""
        self.workdir = workdir
        opts = {"rank": rank, "world_size": world_size, "workers": workers, "timeout": self.wait_timeout,
                "poll": self.poll_seconds}
        key_files = run_phase(workdir / "keys", units, lambda u: f"{u.part}.arrow",
                              lambda u, f: self._write_keys(f, u, read_unit(u)), what="dedup keys", **opts)
        run_phase(workdir / "losers", range(self.partitions), lambda k: f"p{k:04d}.arrow",
                  lambda k, f: self._resolve(f, k, key_files), what="dedup partitions", **opts)

    def _write_keys(self, path: Path, unit: Any, table: pa.Table) -> None:
        """Phase 1 for one unit: hashes of the normalized text, one record batch per partition."""
        hashes = text_hash(table.column(self.field).to_pylist()) if table.num_rows else np.zeros(0, np.uint64)
        ids = table.column(self.id_field) if table.num_rows else pa.array([], pa.string())
        part = hashes % np.uint64(self.partitions)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.partitions + 1))
        full = pa.table({"hash": pa.array(hashes[order], pa.uint64()),
                         "id": pc.take(ids, pa.array(order, pa.int64())).cast(pa.string()),
                         "unit": pa.array(np.full(len(order), unit.index, np.int32))}, schema=KEY_SCHEMA)
        batches = [full.slice(int(bounds[k]), int(bounds[k + 1] - bounds[k])).to_batches(max_chunksize=None)
                   for k in range(self.partitions)]
        atomic_ipc_file(path, [b[0] if b else pa.RecordBatch.from_pylist([], KEY_SCHEMA) for b in batches],
                        KEY_SCHEMA)

    def _resolve(self, out: Path, k: int, key_files: list[Path]) -> None:
        """Phase 2 for partition ``k``: the smallest id of each hash wins; write the losers."""
        parts = []
        for f in key_files:
            with pa.memory_map(str(f)) as src:
                parts.append(pa.Table.from_batches([ipc.open_file(src).get_batch(k)]))
        t = pa.concat_tables(parts) if parts else KEY_SCHEMA.empty_table()
        if t.num_rows:
            t, group_start = sorted_groups(t, "hash")
            losers = np.flatnonzero(group_start != np.arange(len(group_start)))
            ids = t.column("id")
            res = pa.table({"id": pc.take(ids, pa.array(losers, pa.int64())),
                            "unit": pc.take(t.column("unit"), pa.array(losers, pa.int64())),
                            "winner": pc.take(ids, pa.array(group_start[losers], pa.int64()))},
                           schema=LOSER_SCHEMA)
        else:
            res = LOSER_SCHEMA.empty_table()
        write_table(out, res)
