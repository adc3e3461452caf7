"""Reading local files into Arrow: JSON lines (also compressed), JSON documents, parquet, Arrow, CSV.

A row that cannot be read does not stop a file: JSON lines that are not JSON, not objects, or hold a
value whose type conflicts with the rest of its column are set aside with the file, line and field
(:class:`Parsed`), and the sources turn them into rejected rows. Only faults that make a whole file
unreadable raise :class:`~lrpipe.errors.InputError`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from lrpipe.errors import InputError
from lrpipe.shards import read_arrow

SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
COMPRESSIONS = (".gz", ".zst", ".bz2", ".lz4")


def file_kind(path: str) -> str | None:
    """jsonl / json / parquet / arrow / csv, also behind a compression suffix (``.jsonl.gz``)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return SUFFIXES.get(suffixes[-1]) if suffixes else None


# ---------------------------------------------------------------------------------------------- files
class Parsed:
    """One file read: its good rows as a table, and the rows that could not be read, each with the
    number of good rows before it (which places it in a unit)."""

    def __init__(self, table: pa.Table, bad: list[tuple[int, str, str]] | None = None) -> None:
        self.table = table
        self.bad = bad or []  # (good rows before it, raw text, detail)


def read_file(path: str) -> Parsed:
    kind = file_kind(path)
    if kind is None:
        raise InputError(f"unsupported file type (use {', '.join(SUFFIXES)}, optionally compressed: "
                         f"{', '.join(COMPRESSIONS)})", path=path)
    if not os.path.exists(path):
        raise InputError("file not found", path=path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return _valid_text(pq.read_table(path), path)
        if kind == "arrow":
            return _valid_text(read_arrow(Path(path)), path)
        if kind == "csv":
            import pyarrow.csv as pcsv

            # check_utf8=False: with the check on, a column holding one non-UTF-8 value silently
            # becomes binary; off, it stays text and the rows that are not UTF-8 are set aside
            return _valid_text(pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(check_utf8=False)), path)
        if kind == "json" and not path.endswith(".jsonl"):
            data = _json_document(path)
            if data is not None:
                return _document_rows(data, path)
        try:  # Arrow's multithreaded reader (any compression); what it refuses goes the precise way below
            import pyarrow.json as pjson

            table = pjson.read_json(pa.input_stream(path))
            # it turns ISO-8601 strings into timestamps (keep the text as written instead), and it does
            # not check that strings are UTF-8: a table that fails validation is read line by line
            if "timestamp" not in str(table.schema) and _is_valid(table):
                return Parsed(table)
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
    parsed = read_file(str(path))
    if parsed.bad:
        raise InputError(parsed.bad[0][2])  # "<file>, row N[, field 'x']: what is wrong"
    return parsed.table


def _json_document(path: str) -> list[Any] | None:
    """A ``.json`` file holding one document (a list of rows, or an object with one list); None when
    the file is JSON lines after all. Bytes that are not UTF-8 are kept as lone surrogates
    (``surrogateescape``) so that :func:`_document_rows` can set their rows aside one by one."""
    with pa.input_stream(path) as fh:
        raw = fh.read()
    try:
        data = json.loads(raw.decode("utf-8", "surrogateescape"))
    except json.JSONDecodeError:
        return None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise InputError("a JSON object must hold exactly one list of rows", path=path)
        data = lists[0]
    if not isinstance(data, list):
        raise InputError("expected a JSON list of objects", path=path)
    return data


def _document_rows(data: list[Any], path: str) -> Parsed:
    """The rows of a JSON document; a row holding text that was not UTF-8 in the file is a bad row."""
    rows, bad = [], []
    for i, r in enumerate(data):
        raw = json.dumps(r, ensure_ascii=False, default=str)
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            raw = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            bad.append((i, raw[:2000], f"{path}, row {i}{_bad_field(r)}: not UTF-8 text"))
            continue
        rows.append((i, raw, r))
    return _rows_to_table(rows, path, bad)


def _bad_field(row: Any) -> str:
    """``, field 'x'`` for the first top-level field of ``row`` holding a lone surrogate."""
    if isinstance(row, dict):
        for k, v in row.items():
            try:
                json.dumps(v, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                return f", field '{k}'"
    return ""


# ---------------------------------------------------------------------------------------------- UTF-8
def _is_valid(table: pa.Table) -> bool:
    """Whether every string in ``table`` is UTF-8 (Arrow's full validation; a slice checks its rows)."""
    try:
        table.validate(full=True)
        return True
    except pa.ArrowInvalid:
        return False


def _valid_text(table: pa.Table, path: str) -> Parsed:
    """``table`` without the rows that hold a string that is not UTF-8, and those rows as bad rows.

    Parquet, Arrow and CSV readers take string bytes as they are, and a table with one invalid string
    is written fine but cannot be read back (``to_pylist``, ``datasets``, the next stage). The rows are
    found by halving: k bad rows cost O(k log n) validations, a valid table one."""
    if _is_valid(table):
        return Parsed(table)
    bad_rows: list[int] = []

    def walk(lo: int, hi: int) -> None:
        if _is_valid(table.slice(lo, hi - lo)):
            return
        if hi - lo == 1:
            bad_rows.append(lo)
            return
        mid = (lo + hi) // 2
        walk(lo, mid)
        walk(mid, hi)

    walk(0, table.num_rows)
    bad = []
    for k, i in enumerate(bad_rows):
        row = table.slice(i, 1)
        fields = [c for c in row.column_names if not _is_valid(row.select([c]))]
        shown = {c: (row.column(c).cast(pa.binary())[0].as_py() or b"").decode("utf-8", "replace")
                 if c in fields and pa.types.is_string(row.schema.field(c).type) else
                 "<not UTF-8>" if c in fields else row.column(c)[0].as_py() for c in row.column_names}
        detail = f"{path}, row {i}, field '{fields[0] if fields else '?'}': not UTF-8 text"
        bad.append((i - k, json.dumps(shown, ensure_ascii=False, default=str)[:2000], detail))
    keep = pa.array(sorted(set(range(table.num_rows)) - set(bad_rows)), pa.int64())
    return Parsed(table.take(keep), bad)


def _read_json_lines(path: str) -> Parsed:
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
                   bad: list[tuple[int, str, str]] | None = None) -> Parsed:
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
    return Parsed(table, [(bisect.bisect_left(good, line), raw, detail) for line, raw, detail in sorted(bad)])


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
