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
import re
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pyarrow as pa

from lrpipe.errors import InputError
from lrpipe.readers import Parsed, file_kind, read_file
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


# ---------------------------------------------------------------------------------------------- hub
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?(@[\w./%-]+)?$")
_BUILDERS = {"jsonl": "json", "json": "json", "parquet": "parquet", "arrow": "arrow", "csv": "csv"}


def is_hub_spec(spec: str) -> bool:
    """``hf://…``, or a bare ``org/name[:config][@rev]`` that is not a local path (as ``datasets`` and
    ``huggingface-cli`` take it: a folder of that name in the working directory wins)."""
    s = str(spec)
    if s.startswith("hf://"):
        return True
    return bool(_HUB_ID.match(s)) and file_kind(s) is None and not os.path.exists(s.split("@")[0].split(":")[0])


def parse_hub_spec(spec: str) -> tuple[str, str | None, str | None, str | None]:
    """``(repo_id, config, revision, path_in_repo)`` from any of the forms users write:

    * ``org/name``, ``hf://org/name[:config][@revision]`` (pipe's own form), and
    * ``hf://datasets/org/name[@revision][/path/in/repo]``, huggingface_hub's fsspec form, where a
      path (a file, a folder or a glob such as ``eu/*.jsonl.gz``) selects data files in the repo.
      A revision with ``/`` in it is URL-quoted there (``refs%2Fconvert%2Fparquet``), as in HfFileSystem.
    * ``hf:///abs/path``: a local copy of a dataset repo, read by ``datasets`` as the Hub one would be.
    """
    rest = str(spec)
    if rest.startswith("hf://"):
        rest = rest[len("hf://"):]
    if rest.startswith("/"):  # hf:///abs/path: a local copy of a repo (hf download --repo-type dataset),
        return rest, None, None, None  # loaded by datasets the same way (offline clusters)
    if rest.startswith("datasets/"):
        rest = rest[len("datasets/"):]
    parts = rest.split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise InputError("not a Hub dataset id (expected org/name)", path=str(spec))
    org, name = parts[0], parts[1]
    path = parts[2] if len(parts) > 2 and parts[2] else None
    revision = config = None
    if "@" in name:
        name, revision = name.split("@", 1)
        revision = unquote(revision)
    if ":" in name:
        name, config = name.split(":", 1)
    return f"{org}/{name}", config, revision, path


class HubSource(Source):
    """A Hugging Face dataset: ``org/name``, ``hf://org/name[:config][@revision]`` or
    ``hf://datasets/org/name[@revision][/files]``, with a split.

    Downloaded (the default), units are row ranges of the cached Arrow table. **Streaming** reads each
    unit exactly once: the units are the dataset's own shards (data files, and parquet row groups after
    ``IterableDataset.reshard``), each read through ``IterableDataset.shard`` start to end, so a run
    costs one pass over the data whatever its size (``skip(start).take(n)`` would re-read from row 0
    for every unit). Images stay as ``{bytes, path}`` (decoding off), as in downloaded mode: stages
    move bytes, and a PIL object does not fit in an Arrow table.
    """

    def __init__(self, spec: str, split: str = "train", streaming: bool = False, rows_per_unit: int = 1000,
                 id_field: str | None = None) -> None:
        self.spec = str(spec)
        self.hub_id, self.config_name, self.revision, self.path_in_repo = parse_hub_spec(spec)
        self.split = "train" if self.path_in_repo else split
        self.streaming = streaming
        self.rows_per_unit = rows_per_unit
        self.id_field = id_field
        self._ds: Any = None
        self._n: int | None = None

    def where(self) -> str:
        return f"hf://datasets/{self.hub_id}" + (f"/{self.path_in_repo}" if self.path_in_repo else "")

    def _load(self) -> Any:
        if self._ds is None:
            import datasets

            try:
                if self.path_in_repo:  # files inside the repo: their format names the builder
                    kind = file_kind(self.path_in_repo.rstrip("/*")) or file_kind(self.path_in_repo)
                    if kind is None:
                        raise InputError("name files with a known suffix (.jsonl[.gz|.zst], .parquet, .arrow,"
                                         " .csv) or a glob of them", path=self.where())
                    rev = f"@{quote(self.revision, safe='')}" if self.revision else ""
                    files = f"hf://datasets/{self.hub_id}{rev}/{self.path_in_repo}"
                    ds = datasets.load_dataset(_BUILDERS[kind], data_files=files, split="train",
                                               streaming=self.streaming)
                else:
                    ds = datasets.load_dataset(self.hub_id, self.config_name, split=self.split,
                                               revision=self.revision, streaming=self.streaming)
            except InputError:
                raise
            except Exception as e:
                raise InputError(f"cannot load Hugging Face dataset ({type(e).__name__}: {e})",
                                 path=self.where()) from e
            if self.streaming:
                ds = ds.decode(False).reshard()
            self._ds = ds
        return self._ds

    def _num_rows(self) -> int:
        if self._n is None:
            ds = self._load()
            if not self.streaming:
                self._n = len(ds)
            else:  # only for the progress bar: units are shards, their sizes come from reading them
                info = getattr(ds, "info", None)
                split = (info.splits or {}).get(self.split) if info is not None and info.splits else None
                self._n = int(split.num_examples) if split is not None and split.num_examples else 0
        return self._n

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "hub", "hub_id": self.hub_id, "config": self.config_name, "split": self.split,
                             "revision": self.revision, "streaming": self.streaming}
        if self.path_in_repo:
            d["data_files"] = self.path_in_repo
        if self._ds is not None and not self.streaming:
            d["fingerprint"] = getattr(self._ds, "_fingerprint", None)
        return d

    def identity(self) -> dict[str, Any]:
        ident = {k: v for k, v in self.describe().items() if k != "fingerprint"} | {"id_field": self.id_field}
        # streaming units are the dataset's shards; downloaded units are row ranges
        return ident | ({"units": "shards"} if self.streaming else {"rows_per_unit": self.rows_per_unit})

    def units(self) -> list[UnitSpec]:
        if self.streaming:
            ds = self._load()
            n_shards = ds.num_shards
            est = self._num_rows() // max(n_shards, 1)
            return [UnitSpec(index=i, name=f"{self.hub_id}:{self.split}[shard {i}/{n_shards}]",
                             params={"shard": i, "shards": n_shards, "rows": est}) for i in range(n_shards)]
        n = self._num_rows()
        return [UnitSpec(index=i, name=f"{self.hub_id}:{self.split}[{s}:{min(s + self.rows_per_unit, n)}]",
                         params={"start": s, "rows": min(self.rows_per_unit, n - s)})
                for i, s in enumerate(range(0, n, self.rows_per_unit))]

    def read_unit(self, unit: UnitSpec) -> pa.Table:
        ds = self._load()
        if self.streaming:
            part = ds.shard(num_shards=unit.params["shards"], index=unit.params["shard"]).with_format("arrow")
            batches = list(part.iter(batch_size=self.rows_per_unit))
            table = (pa.concat_tables(batches, promote_options="permissive") if batches
                     else ds.features.arrow_schema.empty_table())
        else:
            start, n = unit.params["start"], unit.params["rows"]
            table = ds.with_format("arrow")[start:start + n]
        return with_ids(table, self.id_field)
