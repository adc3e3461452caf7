"""Per-unit statistics gathered while a stage writes, so that a report never reads the data.

``ShardDir.write_unit`` calls :func:`unit_profile` on the unit's kept and rejected tables and writes
the result to ``profile/part-NNNNN.json`` *before* the unit's record (the commit point), so a
committed unit always has its profile and a redone unit overwrites it. ``pipe report`` on a
million-row chain then reads one small JSON per unit: counts per facet (Magpie's category and
temperature, a mixture's source and language, ...), length histograms on fixed bins (so units add
up), the translation length ratio, retries, and a few rows of each kind to show. Everything here is
Arrow compute on columns already in memory: milliseconds per unit, measured by ``bench/report.py``.

The bins are fixed, not fitted to the data, because units are profiled independently (by several
ranks on several hosts) and summed afterwards.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

PROFILE_DIR = "profile"
VERSION = 1
# Columns whose values group rows, when a table has them (and they take few values).
FACETS = ("category", "temperature", "language", "source", "task", "criterion", "split", "detected_language")
# Histograms are also kept per value of these facets (Magpie's 5 system prompts x 10 temperatures).
SPLIT_FACETS = ("category", "temperature")
MAX_FACET_VALUES = 64
SAMPLE_KEPT = 8
SAMPLE_PER_REASON = 4
TEXT_CHARS = 700
TURNS = 6
THUMB_PX = 128
# Length bins: 0, 1, 2-3, 4-7, ... (powers of two up to 2**17, then one open bin).
LENGTH_EDGES = [0, 1] + [2 ** k for k in range(1, 18)]
RATIO_EDGES = [round(0.1 * k, 1) for k in range(0, 31)]  # 0.0 .. 3.0, then one open bin
SKIP_TEXT = {"id", "reject_reason", "reject_detail", "system_prompt", "model", "instruction_finish_reason",
             "response_finish_reason"}


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_conversation(t: pa.DataType) -> bool:
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return False
    v = t.value_type
    return pa.types.is_struct(v) and {"role", "content"} <= {v.field(i).name for i in range(v.num_fields)}


def _is_image(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields))


def _hist(values: pa.Array, edges: list[float]) -> list[int]:
    """Counts in ``[edges[i], edges[i+1])`` plus one open bin past the last edge (nulls skipped)."""
    vals = pc.drop_null(values)
    if len(vals) == 0:
        return [0] * len(edges)
    import numpy as np

    arr = np.asarray(vals.to_numpy(zero_copy_only=False), dtype="float64")
    idx = np.searchsorted(np.asarray(edges, dtype="float64"), arr, side="right") - 1
    idx = np.clip(idx, 0, len(edges) - 1)
    return np.bincount(idx, minlength=len(edges)).astype(int).tolist()


def _chars(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Characters, not words: exact, and 100x cheaper than splitting (tokens come from the stages
    that count them, ``*_tokens``)."""
    return pc.utf8_length(pc.fill_null(col, ""))


def _key(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "∅" if v is None else str(v)


def facet_keys(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A facet column as the strings the profile counts by: floats to 6 decimals (``0.8``, not
    ``0.8000000000000002``; ``1``, not ``1.0``), nulls as ``∅``."""
    if pa.types.is_floating(col.type):
        return pc.fill_null(pc.cast(pc.round(col, 6), pa.string()), "∅")
    return pc.fill_null(pc.cast(col, pa.string()), "∅")


def _facets(table: pa.Table) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name in FACETS:
        if name not in table.column_names or table.num_rows == 0:
            continue
        col = table.column(name)
        if not (_is_text(col.type) or pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            continue
        counts = pc.value_counts(facet_keys(col).combine_chunks())
        if len(counts) > MAX_FACET_VALUES:
            continue
        out[name] = {d["values"]: int(d["counts"]) for d in counts.to_pylist()}
    if "category" in out and "temperature" in out:
        joined = pc.binary_join_element_wise(facet_keys(table.column("category")),
                                             facet_keys(table.column("temperature")), "|")
        out["category|temperature"] = {d["values"]: int(d["counts"])
                                       for d in pc.value_counts(joined.combine_chunks()).to_pylist()}
    return out


def _lengths(table: pa.Table) -> dict[str, dict[str, list[int]]]:
    """``{measure: {"all": counts, "category=math": counts, ...}}`` for token-count columns
    (``*_tokens``), characters of text columns, turns of conversations."""
    measures: dict[str, pa.Array] = {}
    for f in table.schema:
        col = table.column(f.name)
        if f.name.endswith("_tokens") and pa.types.is_integer(f.type):
            measures[f"{f.name[:-len('_tokens')]} (tokens)"] = col.combine_chunks()
        elif _is_text(f.type) and f.name not in SKIP_TEXT and f.name not in FACETS:
            measures[f"{f.name} (chars)"] = _chars(col.combine_chunks())
        elif _is_conversation(f.type):
            measures[f"{f.name} (turns)"] = pc.list_value_length(col.combine_chunks())
    out: dict[str, dict[str, list[int]]] = {}
    splits = {}
    for name in SPLIT_FACETS:
        if name in table.column_names:
            keys = facet_keys(table.column(name)).combine_chunks()
            distinct = sorted(pc.unique(keys).to_pylist())
            if len(distinct) <= 16:
                splits[name] = (keys, distinct)
    for m, arr in measures.items():
        h = {"all": _hist(arr, LENGTH_EDGES)}
        for name, (keys, distinct) in splits.items():
            for d in distinct:
                h[f"{name}={d}"] = _hist(pc.filter(arr, pc.equal(keys, d)), LENGTH_EDGES)
        out[m] = h
    return out


def _target_pairs(table: pa.Table) -> list[tuple[str, str]]:
    """(source, translation) text columns: ``instruction`` and ``instruction_eu``, ``caption`` and
    ``caption_gl``: the naming every translating stage uses."""
    names = set(table.column_names)
    pairs = []
    for f in table.schema:
        if not _is_text(f.type) or "_" not in f.name:
            continue
        base, _, suffix = f.name.rpartition("_")
        if base in names and 2 <= len(suffix) <= 3 and suffix.isalpha() and _is_text(table.schema.field(base).type):
            pairs.append((base, f.name))
    return pairs


def _ratios(table: pa.Table) -> dict[str, list[int]]:
    out = {}
    for src, tgt in _target_pairs(table):
        a = pc.utf8_length(pc.fill_null(table.column(src), ""))
        b = pc.utf8_length(pc.fill_null(table.column(tgt), ""))
        ok = pc.greater(a, 0)
        ratio = pc.divide(pc.cast(pc.filter(b, ok), pa.float64()), pc.cast(pc.filter(a, ok), pa.float64()))
        out[f"{tgt} / {src}"] = _hist(ratio, RATIO_EDGES)
    return out


def _counts(table: pa.Table) -> dict[str, dict[str, int]]:
    out = {}
    for f in table.schema:
        if f.name.endswith("_attempts") and pa.types.is_integer(f.type) and table.num_rows:
            counts = pc.value_counts(table.column(f.name).combine_chunks()).to_pylist()
            out[f.name] = {_key(d["values"]): int(d["counts"]) for d in counts}
    return out


def thumbnail(data: bytes | None) -> str | None:
    """A JPEG data URI at most ``THUMB_PX`` on a side (a few kB), or None for bytes that are not an
    image."""
    if not data:
        return None
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=70)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:  # noqa: BLE001 - a sample that cannot be shown is shown as text
        return None


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + f"… (+{len(text) - TEXT_CHARS} chars)"


def display_row(row: dict[str, Any], schema: pa.Schema) -> dict[str, Any]:
    """A row as a person reads it: long text cut, conversations as turns, images as thumbnails,
    token ids as their count."""
    out: dict[str, Any] = {}
    for f in schema:
        v = row.get(f.name)
        if v is None:
            out[f.name] = None
        elif _is_conversation(f.type):
            turns = [{"role": t.get("role"), "content": _cut(str(t.get("content") or ""))} for t in v[:TURNS]]
            if len(v) > TURNS:
                turns.append({"role": "…", "content": f"{len(v) - TURNS} more turns"})
            out[f.name] = {"turns": turns}
        elif _is_image(f.type):
            data = v.get("bytes") if isinstance(v, dict) else v
            uri = thumbnail(data)
            out[f.name] = {"image": uri} if uri else f"<{len(data or b'')} bytes>"
        elif isinstance(v, str):
            out[f.name] = _cut(v)
        elif isinstance(v, list):
            out[f.name] = v if len(v) <= 8 and all(isinstance(x, str) for x in v) else f"<{len(v)} values>"
        elif isinstance(v, float):
            out[f.name] = v if math.isfinite(v) else str(v)
        elif isinstance(v, (int, bool)):
            out[f.name] = v
        else:
            out[f.name] = _cut(str(v))
    return out


def _spread(n: int, k: int) -> list[int]:
    """``k`` row indices spread evenly over ``n`` rows (the whole unit, not its head)."""
    if n <= k:
        return list(range(n))
    return sorted({int(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


def _sample(table: pa.Table, k: int) -> list[dict[str, Any]]:
    if table.num_rows == 0:
        return []
    idx = _spread(table.num_rows, k)
    rows = table.take(pa.array(idx)).to_pylist()
    return [display_row(r, table.schema) for r in rows]


def unit_profile(kept: pa.Table, rejected: pa.Table | None) -> dict[str, Any]:
    """The statistics and samples of one unit (see the module docstring)."""
    prof: dict[str, Any] = {"version": VERSION, "kept": {}, "rejected": {}, "samples": {"kept": [], "rejected": {}}}
    prof["kept"] = {"facets": _facets(kept), "lengths": _lengths(kept), "ratios": _ratios(kept),
                    "counts": _counts(kept)}
    prof["samples"]["kept"] = _sample(kept, SAMPLE_KEPT)
    if rejected is not None and rejected.num_rows:
        data_cols = [c for c in rejected.column_names if c not in ("reject_reason", "reject_detail")]
        body = rejected.select(data_cols)
        prof["rejected"] = {"facets": _facets(body), "lengths": _lengths(body)}
        reasons = rejected.column("reject_reason")
        by_reason = {}
        for reason in sorted(set(reasons.to_pylist())):
            sub = rejected.filter(pc.equal(reasons, reason))
            by_reason[str(reason)] = _sample(sub, SAMPLE_PER_REASON)
            prof["rejected"].setdefault("facets_by_reason", {})[str(reason)] = _facets(sub)
        prof["samples"]["rejected"] = by_reason
    return prof


def safe_profile(kept: pa.Table, rejected: pa.Table | None, what: str) -> dict[str, Any]:
    """:func:`unit_profile`, but a statistic that cannot be computed never fails the unit: the
    profile then says why it is missing and the report shows that."""
    try:
        return unit_profile(kept, rejected)
    except Exception as e:  # noqa: BLE001 - statistics are never worth a lost unit
        log.warning("%s: no profile (%s: %s)", what, type(e).__name__, e)
        return {"version": VERSION, "error": f"{type(e).__name__}: {e}"}
