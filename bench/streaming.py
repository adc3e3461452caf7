"""Streaming a Hub dataset: each unit read once (ours) against ``skip(start).take(n)`` per unit (before).

A parquet dataset shaped like the Hub's (2 files, row groups of ``--group`` rows) is written locally and
read through :class:`lrpipe.sources.HubSource` with ``streaming=True``, as ``pipe translate --streaming``
reads it: ours cuts the stream into the dataset's own shards (row groups, ``IterableDataset.reshard``)
and reads each through ``IterableDataset.shard``; the baseline is the previous implementation, units of
``--group`` rows each read with ``skip(start).take(n)``, which restarts the stream from row 0 for every
unit. Both must return the same ids in the same order.

What it showed (2-core CPU, datasets 5.2): on parquet, ``skip`` jumps over whole row groups, so the
baseline stays linear and the gain is reading Arrow batches instead of Python dicts; on JSON lines,
``skip`` decodes every earlier row, so the baseline grows faster than the data (4x the rows took
6.5x the time). Ours reads each row once in both.

    python bench/streaming.py [--rows 200000] [--group 10000] [--format parquet|jsonl] [--files 2]

Last line: ``RESULT streaming ratio=<ours/baseline rows/s> target=2 ...``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def make_dataset(folder: Path, rows: int, group: int, fmt: str, files: int) -> None:
    (folder / "data").mkdir(parents=True)
    per = rows // files
    for f in range(files):
        t = pa.table({"question_id": [f"q{f}-{i:07d}" for i in range(per)],
                      "caption": [f"A photo number {i} of file {f}: a red bicycle leans against a stone wall."
                                  for i in range(per)]})
        name = folder / "data" / f"train-{f:05d}-of-{files:05d}"
        if fmt == "parquet":
            pq.write_table(t, f"{name}.parquet", row_group_size=group)
        else:
            with open(f"{name}.jsonl", "w") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in t.to_pylist())


def read_ours(folder: Path, group: int) -> tuple[list[str], float, int]:
    from lrpipe.sources import HubSource

    src = HubSource("me/bench", streaming=True, rows_per_unit=group)
    src.hub_id = str(folder)  # a local copy of the repo: load_dataset takes a folder where a Hub id goes
    t0 = time.perf_counter()
    units = src.units()
    ids = [i for u in units for i in src.read_unit(u).column("id").to_pylist()]
    return ids, time.perf_counter() - t0, len(units)


def read_baseline(folder: Path, group: int, rows: int) -> tuple[list[str], float]:
    import datasets

    t0 = time.perf_counter()
    ds = datasets.load_dataset(str(folder), split="train", streaming=True)
    ids: list[str] = []
    for start in range(0, rows, group):
        table = pa.Table.from_pylist(list(ds.skip(start).take(group)))
        ids += table.column("question_id").to_pylist()
    return ids, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--group", type=int, default=10_000, help="parquet row group = baseline unit size")
    ap.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    ap.add_argument("--files", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "repo"
        make_dataset(folder, a.rows, a.group, a.format, a.files)
        base_ids, base_s = read_baseline(folder, a.group, a.rows)
        ours_ids, ours_s, ours_units = read_ours(folder, a.group)
    assert ours_ids == base_ids and len(ours_ids) == a.rows, "the two readers disagree"
    units = a.rows // a.group
    print(f"baseline: {a.rows} rows in {base_s:.1f}s ({a.rows / base_s:,.0f} rows/s, {units} units), ours: "
          f"{ours_s:.1f}s ({a.rows / ours_s:,.0f} rows/s, {ours_units} units)")
    print(f"RESULT streaming ratio={base_s / ours_s:.2f} target=2 format={a.format} rows={a.rows} "
          f"baseline_units={units} units={ours_units} ours_rows_s={a.rows / ours_s:.0f} "
          f"baseline_rows_s={a.rows / base_s:.0f}")


if __name__ == "__main__":
    main()
