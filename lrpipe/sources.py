"""Sources a stage reads: a shard directory, local files, or a Hugging Face dataset (README: "What a run
leaves behind").

Every source cuts itself into deterministic units (input part, or file × row range) so the runner can
partition, resume and account for them, and returns each unit as an Arrow table with the input's own
columns, **unchanged**, plus a string ``id`` column:

* **Columns keep their names.** A source never renames or rewrites a column: a ``conversations``
  column in ShareGPT form stays one, and a ``messages`` column of plain strings (PixMo-CapQA) is just
  a list of strings. Stages read conversations where they need them (:func:`lrpipe.chat.conversation_of`),
  so a recipe written from a dataset card names the card's columns.
* **Stable ids.** ``id`` is the row's id: the ``id_field`` column when one is named (``uuid``,
  ``question_id``), else the first of :data:`ID_COLUMNS` the input has, as text; where the input has
  none (CC3M, PixMo-AMA) or a row's id is null, it is derived from the row's content:
  ``h`` + 20 hex digits of xxh3-128 over every column except binary data (image bytes) and
  translated versions of a column (``caption_eu`` beside ``caption``), with
  ``~k`` appended to the k-th repeat of an identical row in the same unit. Two stages reading the same
  dataset therefore give the same ids, whatever the unit layout or the copy (Hub or local file), and a
  parallel mixture pairs a translation with its source.
* **Bad rows are rows.** A JSON-lines row that cannot be parsed, is not an object, or has a value of a
  type that conflicts with the rest of its column does not stop the job: it goes to the stage's
  ``rejected/`` as ``bad_input`` with the file, line and field (:meth:`Source.rejects`, merged by the
  runner). Only faults that make a whole input unreadable raise :class:`InputError`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from lrpipe.chat import MESSAGE_TYPE  # noqa: F401  (re-exported: older imports)
from lrpipe.errors import InputError
from lrpipe.readers import COMPRESSIONS, SUFFIXES, Parsed, file_kind, read_file, read_table  # noqa: F401
from lrpipe.shards import REJECT_DETAIL, REJECT_REASON, ShardDir, UnitSpec, part_index, read_arrow

ID_COLUMNS = ("id", "uuid", "conversation_id", "question_id")
#: schema of rows a source could not read (merged into a stage's rejected rows by the runner)
BAD_SCHEMA = pa.schema([("raw_row", pa.string()), (REJECT_REASON, pa.string()), (REJECT_DETAIL, pa.string())])


# ---------------------------------------------------------------------------------------------- ids
def _hashable(table: pa.Table) -> pa.Table:
    """The columns an id is derived from: structs flattened, binary data (image bytes) and other
    languages' versions of a column (``caption_eu`` beside ``caption``) left out, so a translation made
    elsewhere still has its source row's id."""
    from lrpipe.languages import NAMES, translated_columns

    versions = [c for cols in translated_columns(table.column_names, list(NAMES)).values() for c in cols]
    if versions:
        table = table.drop_columns(versions)
    while any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()
    keep = [f.name for f in table.schema if not _has_binary(f.type)]
    return table.select(keep)


def _has_binary(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _has_binary(t.value_type)
    if pa.types.is_struct(t):
        return any(_has_binary(t.field(i).type) for i in range(t.num_fields))
    return False


def content_ids(table: pa.Table) -> list[str]:
    """One id per row from its content (see the module docstring); identical rows in ``table`` get
    ``~2``, ``~3``... in order, so ids are unique within a unit."""
    import xxhash

    rows = _hashable(table).to_pylist()
    out, seen = [], Counter()
    for r in rows:
        blob = json.dumps(r, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
        h = "h" + xxhash.xxh3_128_hexdigest(blob.encode())[:20]
        seen[h] += 1
        out.append(h if seen[h] == 1 else f"{h}~{seen[h]}")
    return out


def with_ids(table: pa.Table, id_field: str | None = None) -> pa.Table:
    """``table`` with a string ``id`` column (see the module docstring); the id column itself is cast
    to text in place, every other column is left as it is."""
    col = id_field if id_field and id_field in table.column_names else (
        None if id_field else next((c for c in ID_COLUMNS if c in table.column_names), None))
    if col == "id" and pa.types.is_string(table.schema.field("id").type) and table.column("id").null_count == 0:
        return table  # the usual case downstream of a pipe stage: nothing to do
    values = None
    if col is not None:
        values = [None if v is None else str(v) for v in table.column(col).to_pylist()]
        if any(v is None for v in values):
            derived = content_ids(table)
            values = [v if v is not None else d for v, d in zip(values, derived)]
    else:
        values = content_ids(table)
    arr = pa.array(values, pa.string())
    if "id" in table.column_names:
        if col not in (None, "id"):  # the named id column wins; the input's own `id` is kept beside it
            table = table.rename_columns([("orig_id" if c == "id" else c) for c in table.column_names])
            return table.append_column("id", arr)
        return table.set_column(table.column_names.index("id"), "id", arr)
    return table.append_column("id", arr)


# ---------------------------------------------------------------------------------------------- base
class Source:
    """Interface: ``describe``, ``units``, ``read_unit``; ``require`` checks columns early;
    ``rejects`` gives a unit's unreadable rows."""

    rows_per_unit: int = 1000
    id_field: str | None = None

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What a downstream config depends on (no fingerprint that changes while upstream runs)."""
        return self.describe()

    def units(self) -> list[UnitSpec]:
        raise NotImplementedError

    def read_unit(self, unit: UnitSpec) -> pa.Table:
        raise NotImplementedError

    def rejects(self, unit: UnitSpec) -> pa.Table | None:
        """Rows of ``unit`` the source could not read (schema :data:`BAD_SCHEMA`), or None."""
        return None

    def where(self) -> str | None:
        d = self.describe()
        return d.get("path") or d.get("hub_id")

    def columns(self) -> list[str]:
        for u in self.units():
            t = self.read_unit(u)
            if t.num_rows or u is self.units()[-1]:
                return t.column_names
        return []

    def require(self, columns: list[str]) -> None:
        have = self.columns()
        missing = [c for c in columns if c not in have]
        if missing:
            raise InputError(f"missing column(s) {missing}; the input has {have}", path=self.where(),
                             field=missing[0])


# ---------------------------------------------------------------------------------------------- shards
class ShardSource(Source):
    """A shard directory written by an earlier stage. Units mirror the upstream units one to one (same
    index, so a rank finds the upstream units it produced itself)."""

    def __init__(self, path: str | os.PathLike[str], id_field: str | None = None) -> None:
        self.shard = ShardDir.open(path)
        self.path = str(path)
        self.id_field = id_field
        self._header = self.shard.header()

    def describe(self) -> dict[str, Any]:
        recs = self.shard.records()
        fp = hashlib.sha256("".join(r.checksum for _, r in sorted(recs.items())).encode()).hexdigest()[:16]
        return {"kind": "shards", "path": self.path, "stage": self._header.get("stage"),
                "config_hash": self._header.get("config_hash"), "fingerprint": fp}

    def identity(self) -> dict[str, Any]:
        """What a downstream config depends on: stable while the upstream stage is still running."""
        return {"kind": "shards", "path": os.path.abspath(self.path), "stage": self._header.get("stage"),
                "config_hash": self._header.get("config_hash"), "id_field": self.id_field}

    def header(self) -> dict[str, Any]:
        return self._header

    def units(self) -> list[UnitSpec]:
        plan = self._header.get("plan")
        if plan is None:  # a directory without plan (copied manifest only): its data files
            return [UnitSpec(index=part_index(f.name), name=f.stem, params={"file": f.name})
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
        return with_ids(read_arrow(f), self.id_field)


class FileSource(Source):
    """Local jsonl / json / parquet / arrow / csv files, optionally compressed (a list, a glob, or a
    folder of them)."""

    def __init__(self, paths: list[str], rows_per_unit: int = 1000, id_field: str | None = None) -> None:
        self.paths = paths
        self.rows_per_unit = rows_per_unit
        self.id_field = id_field
        self._cache: tuple[str, Parsed] | None = None
        self._units: list[UnitSpec] | None = None

    def _parsed(self, path: str) -> Parsed:
        if self._cache is None or self._cache[0] != path:
            self._cache = (path, read_file(path))
        return self._cache[1]

    def describe(self) -> dict[str, Any]:
        h = hashlib.sha256()
        for p in self.paths:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}:{st.st_size}:{int(st.st_mtime)}".encode())
        return {"kind": "files", "path": self.paths[0] if len(self.paths) == 1 else os.path.commonpath(self.paths),
                "files": self.paths, "fingerprint": h.hexdigest()[:16]}

    def identity(self) -> dict[str, Any]:
        return {"kind": "files", "files": [os.path.abspath(p) for p in self.paths], "rows_per_unit": self.rows_per_unit,
                "id_field": self.id_field}

    def units(self) -> list[UnitSpec]:
        if self._units is None:
            units = []
            for p in self.paths:
                n = self._parsed(p).table.num_rows
                for start in range(0, max(n, 1), self.rows_per_unit):
                    count = min(self.rows_per_unit, n - start)
                    units.append(UnitSpec(index=len(units), name=f"{Path(p).name}[{start}:{start + count}]",
                                          params={"path": p, "start": start, "rows": count,
                                                  "last": start + self.rows_per_unit >= n}))
            self._units = units
        return self._units

    def read_unit(self, unit: UnitSpec) -> pa.Table:
        p, start, n = unit.params["path"], unit.params["start"], unit.params["rows"]
        return with_ids(self._parsed(p).table.slice(start, n), self.id_field)

    def rejects(self, unit: UnitSpec) -> pa.Table | None:
        p, start, n = unit.params["path"], unit.params["start"], unit.params["rows"]
        last = unit.params.get("last", True)
        bad = [b for b in self._parsed(p).bad if start <= b[0] < start + n or (last and b[0] >= start + n)]
        if not bad:
            return None
        return pa.table({"raw_row": [b[1] for b in bad], REJECT_REASON: ["bad_input"] * len(bad),
                         REJECT_DETAIL: [b[2] for b in bad]}, schema=BAD_SCHEMA)


def open_source(spec: str | os.PathLike[str], *, split: str = "train", streaming: bool = False,
                rows_per_unit: int = 1000, id_field: str | None = None) -> Source:
    """Open whatever the user passed as ``--input``: a shard directory, files (globs, folders,
    compressed JSON lines), or a Hub dataset (:func:`is_hub_spec`)."""
    s = str(spec)
    if is_hub_spec(s):
        return HubSource(s, split=split, streaming=streaming, rows_per_unit=rows_per_unit, id_field=id_field)
    if os.path.isdir(s):
        if ShardDir.is_shard_dir(s):
            return ShardSource(s, id_field=id_field)
        files = sorted(str(p) for p in Path(s).rglob("*") if p.is_file() and file_kind(str(p)))
        if not files:
            raise InputError("folder holds no shard directory and no jsonl/json/parquet/arrow/csv files", path=s)
        return FileSource(files, rows_per_unit, id_field)
    files = sorted(glob.glob(s)) if any(c in s for c in "*?[") else [s]
    if not files or not all(os.path.exists(f) for f in files):
        raise InputError("no such file or directory", path=s)
    return FileSource(files, rows_per_unit, id_field)


# the Hub source lives in its own module; imported here, after Source exists, so both import paths work
from lrpipe.hub_source import HubSource, is_hub_spec, parse_hub_spec  # noqa: E402, F401
