"""Sources a stage reads: a shard directory, local files, or a Hugging Face dataset (SPEC §1).

Every source cuts itself into deterministic units (input part, or file × row range) so the runner can
partition, resume and account for them, and returns each unit as an Arrow table whose conversations,
if any, are normalized to the messages form in a column ``conversation``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from lrpipe.chat import normalize_conversation
from lrpipe.errors import InputError
from lrpipe.shards import ShardDir, UnitSpec, read_arrow

SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
CONVERSATION_COLUMNS = ("conversation", "conversations", "messages")
MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


class Source:
    """Interface: ``describe``, ``units``, ``read_unit``; ``require`` checks columns early."""

    rows_per_unit: int = 1000

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What a downstream config depends on (no fingerprint that changes while upstream runs)."""
        return self.describe()

    def units(self) -> list[UnitSpec]:
        raise NotImplementedError

    def read_unit(self, unit: UnitSpec) -> pa.Table:
        raise NotImplementedError

    def columns(self) -> list[str]:
        units = self.units()
        return self.read_unit(units[0]).column_names if units else []

    def require(self, columns: list[str]) -> None:
        have = self.columns()
        missing = [c for c in columns if c not in have]
        if missing:
            d = self.describe()
            raise InputError(f"missing column(s) {missing}; the input has {have}",
                             path=d.get("path") or d.get("hub_id"), field=missing[0])


def normalize_table(table: pa.Table, path: str, row_offset: int = 0) -> pa.Table:
    """Turn a ShareGPT ``conversations`` or ``messages`` column into a messages-form ``conversation``."""
    col = next((c for c in CONVERSATION_COLUMNS if c in table.column_names), None)
    if col is None:
        return table
    if col == "conversation" and table.schema.field(col).type == MESSAGE_TYPE:
        return table
    values = table.column(col).to_pylist()
    norm = [normalize_conversation(v, path=path, row=row_offset + i, field=col) for i, v in enumerate(values)]
    table = table.drop_columns([col])
    return table.append_column("conversation", pa.array(norm, MESSAGE_TYPE))


# ---------------------------------------------------------------------------------------------- shards
class ShardSource(Source):
    """A shard directory written by an earlier stage. Units mirror the upstream units one to one (same
    index, so a rank finds the upstream units it produced itself)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.shard = ShardDir.open(path)
        self.path = str(path)
        self._header = self.shard.header()

    def describe(self) -> dict[str, Any]:
        recs = self.shard.records()
        fp = hashlib.sha256("".join(r.checksum for _, r in sorted(recs.items())).encode()).hexdigest()[:16]
        return {"kind": "shards", "path": self.path, "stage": self._header.get("stage"),
                "config_hash": self._header.get("config_hash"), "fingerprint": fp}

    def identity(self) -> dict[str, Any]:
        """What a downstream config depends on: stable while the upstream stage is still running."""
        return {"kind": "shards", "path": os.path.abspath(self.path), "stage": self._header.get("stage"),
                "config_hash": self._header.get("config_hash")}

    def units(self) -> list[UnitSpec]:
        plan = self._header.get("plan")
        if plan is None:  # a directory without plan (copied manifest only): its data files
            return [UnitSpec(index=int(f.name[5:10]), name=f.stem, params={"file": f.name})
                    for f in self.shard.data_files()]
        recs = self.shard.records()
        return [UnitSpec(index=u["index"], name=u["name"],
                         params={"file": u["file"], "rows": recs[u["index"]].rows_out if u["index"] in recs else 0})
                for u in plan]

    def read_unit(self, unit: UnitSpec) -> pa.Table:
        f = self.shard.data_dir / unit.params["file"]
        if unit.index not in self.shard.done_indices():
            raise InputError(f"upstream unit {unit.name} is not finished: finish the '{self._header.get('stage')}' "
                             "step first (run the same command again)", path=str(f))
        return normalize_table(read_arrow(f), str(f))


# ---------------------------------------------------------------------------------------------- files
def _read_file(path: str) -> pa.Table:
    kind = SUFFIXES.get(Path(path).suffix.lower())
    if kind is None:
        raise InputError(f"unsupported file type (use {', '.join(SUFFIXES)})", path=path)
    if not os.path.exists(path):
        raise InputError("file not found", path=path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if kind == "arrow":
            return read_arrow(Path(path))
        if kind == "csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(path)
        if kind == "json":
            data = json.loads(Path(path).read_text())
            if isinstance(data, dict):
                lists = [v for v in data.values() if isinstance(v, list)]
                if len(lists) != 1:
                    raise InputError("a JSON object must hold exactly one list of rows", path=path)
                data = lists[0]
            if not isinstance(data, list):
                raise InputError("expected a JSON list of objects", path=path)
            return _rows_to_table(data, path)
        try:  # Arrow's multithreaded reader; anything it refuses goes through the precise path below
            import pyarrow.json as pjson

            table = pjson.read_json(path)
            # it turns ISO-8601 strings into timestamps: keep the text as written instead
            if "timestamp" not in str(table.schema):
                return table
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
        rows = []
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"invalid JSON ({e.msg} at column {e.colno})", path=path, row=i) from e
        return _rows_to_table(rows, path)
    except InputError:
        raise
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"cannot read ({e})", path=path) from e


def _rows_to_table(rows: list[Any], path: str) -> pa.Table:
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise InputError(f"expected an object, got {type(r).__name__}", path=path, row=i)
    # every key of every row (from_pylist alone would take the first row's keys and drop the rest)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    try:
        return pa.table({k: pa.array([r.get(k) for r in rows]) for k in keys})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        # Mixed types in a column: find the first offending row for the message.
        for k in keys:
            try:
                pa.array([r.get(k) for r in rows])
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                first = type(next(r.get(k) for r in rows if r.get(k) is not None)).__name__
                for i, r in enumerate(rows):
                    if r.get(k) is not None and type(r.get(k)).__name__ != first:
                        raise InputError(f"type {type(r.get(k)).__name__} differs from {first} in earlier rows",
                                         path=path, row=i, field=k) from e
        raise InputError(f"cannot build a table ({e})", path=path) from e


class FileSource(Source):
    """Local jsonl / json / parquet / arrow / csv files (a list, a glob, or a folder of them)."""

    def __init__(self, paths: list[str], rows_per_unit: int = 1000) -> None:
        self.paths = paths
        self.rows_per_unit = rows_per_unit
        self._cache: tuple[str, pa.Table] | None = None
        self._units: list[UnitSpec] | None = None

    def _table(self, path: str) -> pa.Table:
        if self._cache is None or self._cache[0] != path:
            self._cache = (path, _read_file(path))
        return self._cache[1]

    def describe(self) -> dict[str, Any]:
        h = hashlib.sha256()
        for p in self.paths:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}:{st.st_size}:{int(st.st_mtime)}".encode())
        return {"kind": "files", "path": self.paths[0] if len(self.paths) == 1 else os.path.commonpath(self.paths),
                "files": self.paths, "fingerprint": h.hexdigest()[:16]}

    def identity(self) -> dict[str, Any]:
        return {"kind": "files", "files": [os.path.abspath(p) for p in self.paths], "rows_per_unit": self.rows_per_unit}

    def units(self) -> list[UnitSpec]:
        if self._units is None:
            units = []
            for p in self.paths:
                n = self._table(p).num_rows
                for start in range(0, max(n, 1), self.rows_per_unit):
                    count = min(self.rows_per_unit, n - start)
                    units.append(UnitSpec(index=len(units), name=f"{Path(p).name}[{start}:{start + count}]",
                                          params={"path": p, "start": start, "rows": count}))
            self._units = units
        return self._units

    def read_unit(self, unit: UnitSpec) -> pa.Table:
        p, start, n = unit.params["path"], unit.params["start"], unit.params["rows"]
        return normalize_table(self._table(p).slice(start, n), p, row_offset=start)


# ---------------------------------------------------------------------------------------------- hub
class HubSource(Source):
    """``hf://org/name[:config][@revision]`` with a split; streaming reads only each unit's rows
    (the row count comes from the dataset's metadata, so units are known before reading)."""

    def __init__(self, spec: str, split: str = "train", streaming: bool = False, rows_per_unit: int = 1000) -> None:
        rest = spec[len("hf://"):]
        self.revision = None
        self.config_name = None
        if "@" in rest:
            rest, self.revision = rest.split("@", 1)
        if ":" in rest:
            rest, self.config_name = rest.split(":", 1)
        self.hub_id = rest
        self.split = split
        self.streaming = streaming
        self.rows_per_unit = rows_per_unit
        self._ds: Any = None
        self._n: int | None = None

    def _load(self) -> Any:
        if self._ds is None:
            import datasets

            try:
                self._ds = datasets.load_dataset(self.hub_id, self.config_name, split=self.split,
                                                 revision=self.revision, streaming=self.streaming)
            except Exception as e:
                raise InputError(f"cannot load Hugging Face dataset ({type(e).__name__}: {e})",
                                 path=f"hf://{self.hub_id}") from e
        return self._ds

    def _num_rows(self) -> int:
        if self._n is None:
            ds = self._load()
            if not self.streaming:
                self._n = len(ds)
            else:
                info = getattr(ds, "info", None)
                split = (info.splits or {}).get(self.split) if info is not None else None
                if split is None or not split.num_examples:
                    raise InputError("streaming needs the split's row count in the dataset metadata; "
                                     "drop --streaming to download it instead", path=f"hf://{self.hub_id}")
                self._n = int(split.num_examples)
        return self._n

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "hub", "hub_id": self.hub_id, "config": self.config_name, "split": self.split,
                             "revision": self.revision, "streaming": self.streaming}
        if self._ds is not None and not self.streaming:
            d["fingerprint"] = getattr(self._ds, "_fingerprint", None)
        return d

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in self.describe().items() if k != "fingerprint"} | {"rows_per_unit": self.rows_per_unit}

    def units(self) -> list[UnitSpec]:
        n = self._num_rows()
        return [UnitSpec(index=i, name=f"{self.hub_id}:{self.split}[{s}:{min(s + self.rows_per_unit, n)}]",
                         params={"start": s, "rows": min(self.rows_per_unit, n - s)})
                for i, s in enumerate(range(0, n, self.rows_per_unit))]

    def read_unit(self, unit: UnitSpec) -> pa.Table:
        ds = self._load()
        start, n = unit.params["start"], unit.params["rows"]
        if self.streaming:
            table = pa.Table.from_pylist(list(ds.skip(start).take(n)))
        else:
            table = ds.with_format("arrow")[start:start + n]
        return normalize_table(table, f"hf://{self.hub_id}", row_offset=start)


def open_source(spec: str | os.PathLike[str], *, split: str = "train", streaming: bool = False,
                rows_per_unit: int = 1000) -> Source:
    """Open whatever the user passed as ``--input``."""
    s = str(spec)
    if s.startswith("hf://"):
        return HubSource(s, split=split, streaming=streaming, rows_per_unit=rows_per_unit)
    if os.path.isdir(s):
        if ShardDir.is_shard_dir(s):
            return ShardSource(s)
        files = sorted(str(p) for p in Path(s).rglob("*") if p.suffix.lower() in SUFFIXES)
        if not files:
            raise InputError("folder holds no shard directory and no jsonl/json/parquet/arrow/csv files", path=s)
        return FileSource(files, rows_per_unit)
    files = sorted(glob.glob(s)) if any(c in s for c in "*?[") else [s]
    if not files or not all(os.path.exists(f) for f in files):
        raise InputError("no such file or directory", path=s)
    return FileSource(files, rows_per_unit)
