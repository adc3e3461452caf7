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

from lrpipe.chat import MESSAGE_TYPE  # noqa: F401  (re-exported: older imports)
from lrpipe.errors import InputError
from lrpipe.shards import REJECT_DETAIL, REJECT_REASON, ShardDir, UnitSpec, part_index, read_arrow

SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
COMPRESSIONS = (".gz", ".zst", ".bz2", ".lz4")
#: columns used as the id when no ``id_field`` is named, in this order
ID_COLUMNS = ("id", "uuid", "conversation_id", "question_id")
#: schema of rows a source could not read (merged into a stage's rejected rows by the runner)
BAD_SCHEMA = pa.schema([("raw_row", pa.string()), (REJECT_REASON, pa.string()), (REJECT_DETAIL, pa.string())])


def file_kind(path: str) -> str | None:
    """jsonl / json / parquet / arrow / csv, also behind a compression suffix (``.jsonl.gz``)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return SUFFIXES.get(suffixes[-1]) if suffixes else None


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


# ---------------------------------------------------------------------------------------------- files
class _Parsed:
    """One file read: its good rows as a table, and the rows that could not be read, each with the
    number of good rows before it (which places it in a unit)."""

    def __init__(self, table: pa.Table, bad: list[tuple[int, str, str]] | None = None) -> None:
        self.table = table
        self.bad = bad or []  # (good rows before it, raw text, detail)


def _read_file(path: str) -> _Parsed:
    kind = file_kind(path)
    if kind is None:
        raise InputError(f"unsupported file type (use {', '.join(SUFFIXES)}, optionally compressed: "
                         f"{', '.join(COMPRESSIONS)})", path=path)
    if not os.path.exists(path):
        raise InputError("file not found", path=path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return _Parsed(pq.read_table(path))
        if kind == "arrow":
            return _Parsed(read_arrow(Path(path)))
        if kind == "csv":
            import pyarrow.csv as pcsv

            return _Parsed(pcsv.read_csv(path))
        if kind == "json" and not path.endswith(".jsonl"):
            data = _json_document(path)
            if data is not None:
                return _rows_to_table([(i, json.dumps(r, ensure_ascii=False, default=str), r)
                                       for i, r in enumerate(data)], path)
        try:  # Arrow's multithreaded reader (any compression); what it refuses goes the precise way below
            import pyarrow.json as pjson

            table = pjson.read_json(pa.input_stream(path))
            # it turns ISO-8601 strings into timestamps: keep the text as written instead
            if "timestamp" not in str(table.schema):
                return _Parsed(table)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
        return _read_json_lines(path)
    except InputError:
        raise
    except (pa.ArrowInvalid, OSError, ValueError) as e:
        raise InputError(f"cannot read ({e})", path=path) from e


def read_table(path: str | os.PathLike[str]) -> pa.Table:
    """A whole local file as one table, for small inputs read at once (evaluation files, judge
    questions): here an unreadable row is an error naming the file and row, not a rejected row."""
    parsed = _read_file(str(path))
    if parsed.bad:
        raise InputError(parsed.bad[0][2])  # "<file>, row N[, field 'x']: what is wrong"
    return parsed.table


def _json_document(path: str) -> list[Any] | None:
    """A ``.json`` file holding one document (a list of rows, or an object with one list); None when
    the file is JSON lines after all."""
    with pa.input_stream(path) as fh:
        raw = fh.read()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=path) from e
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise InputError("a JSON object must hold exactly one list of rows", path=path)
        data = lists[0]
    if not isinstance(data, list):
        raise InputError("expected a JSON list of objects", path=path)
    return data


def _read_json_lines(path: str) -> _Parsed:
    """The precise path: line by line; every line that cannot be a row becomes a bad row."""
    rows: list[tuple[int, str, Any]] = []
    bad: list[tuple[int, str, str]] = []  # (line, raw, detail)
    with pa.input_stream(path) as fh:
        data = fh.read()
    for i, raw in enumerate(data.split(b"\n")):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad.append((i, raw.decode("utf-8", "replace")[:2000],
                        f"{path}, row {i}: not UTF-8 text ({e.reason} at byte {e.start})"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            bad.append((i, text[:2000], f"{path}, row {i}: invalid JSON ({e.msg} at column {e.colno})"))
            continue
        rows.append((i, text, obj))
    return _rows_to_table(rows, path, bad)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return {"str": "string", "dict": "object"}.get(type(v).__name__, type(v).__name__)


def _rows_to_table(rows: list[tuple[int, str, Any]], path: str,
                   bad: list[tuple[int, str, str]] | None = None) -> _Parsed:
    """Rows (line, raw text, object) → a table with every key of every row (``from_pylist`` alone would
    take the first row's keys). A row that is not an object, or whose value cannot share its column's
    type (the type most rows agree with), is left out and reported with its line and field."""
    import bisect

    bad = list(bad or [])
    for line, raw, r in rows:
        if not isinstance(r, dict):
            bad.append((line, raw[:2000], f"{path}, row {line}: expected an object, got {_kind(r)}"))
    rows = [x for x in rows if isinstance(x[2], dict)]
    keys = list(dict.fromkeys(k for _, _, r in rows for k in r))
    while True:
        try:
            table = pa.table({k: pa.array([r.get(k) for _, _, r in rows]) for k in keys})
            break
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
        for k in keys:  # the first column that cannot be built: drop its outliers, then try again
            vals = [r.get(k) for _, _, r in rows]
            try:
                pa.array(vals)
                continue
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                out = set(_type_outliers(vals))
            for j in sorted(out):
                line, raw, r = rows[j]
                bad.append((line, raw[:2000], f"{path}, row {line}, field '{k}': {_kind(r.get(k))} value where "
                                              "the column's other rows have another type"))
            rows = [x for j, x in enumerate(rows) if j not in out]
            break
    if not keys:
        table = pa.table({})
        table = table.append_column("_", pa.nulls(len(rows))).drop_columns(["_"]) if rows else table
    good = [line for line, _, _ in rows]
    return _Parsed(table, [(bisect.bisect_left(good, line), raw, detail) for line, raw, detail in sorted(bad)])


def _type_outliers(values: list[Any]) -> list[int]:
    """Indices of the values whose Arrow type cannot be unified with the most common type."""
    types: list[pa.DataType | None] = []
    for v in values:
        try:
            types.append(None if v is None else pa.array([v]).type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            types.append(pa.binary(0))  # a value Arrow cannot hold at all: always an outlier
    counts = Counter(str(t) for t in types if t is not None and t != pa.binary(0))
    if not counts:
        return [j for j, t in enumerate(types) if t is not None]
    major_s = counts.most_common(1)[0][0]
    major = next(t for t in types if t is not None and str(t) == major_s)
    out = []
    for j, t in enumerate(types):
        if t is None or str(t) == major_s:
            continue
        try:
            unified = pa.unify_schemas([pa.schema([("x", major)]), pa.schema([("x", t)])],
                                       promote_options="permissive").field("x").type
            pa.array([values[j]], unified)
            pa.array([v for v in values if v is not None][:1000], unified)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            out.append(j)
    # types that unify pairwise with the majority but not all together: keep the majority only
    return out or [j for j, t in enumerate(types) if t is not None and str(t) != major_s]


class FileSource(Source):
    """Local jsonl / json / parquet / arrow / csv files, optionally compressed (a list, a glob, or a
    folder of them)."""

    def __init__(self, paths: list[str], rows_per_unit: int = 1000, id_field: str | None = None) -> None:
        self.paths = paths
        self.rows_per_unit = rows_per_unit
        self.id_field = id_field
        self._cache: tuple[str, _Parsed] | None = None
        self._units: list[UnitSpec] | None = None

    def _parsed(self, path: str) -> _Parsed:
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
