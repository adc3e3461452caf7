"""Filter base: a filter is a named predicate with a reason string.

Write one method, ``keep(row)``, returning ``True`` to keep the row, or ``False`` / ``(False, detail)``
to drop it; the chain (:mod:`lrpipe.pipelines.filter`) owns counting, writing rejected rows with their
``reject_reason`` and ``reject_detail``, and the manifest. Filters that gain from vectorization
override ``keep_batch``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

Verdict = bool | tuple[bool, str]


class Filter:
    name: ClassVar[str] = "filter"
    #: the filter must see the whole input before judging a row (exact / near dedup): it has a
    #: ``prepare`` pass over every unit, across ranks, before the chain runs
    is_global: ClassVar[bool] = False
    #: the filter asks a model (quality): the chain gets an engine
    needs_engine: ClassVar[bool] = False

    def __init__(self, field: str = "instruction", **params: Any) -> None:
        self.field = field
        self.params = params

    @property
    def reason(self) -> str:
        return self.name

    def config(self) -> dict[str, Any]:
        """What determines the filter's verdicts (operational knobs such as polling are left out)."""
        skip = {"poll_seconds", "wait_timeout"}
        return {"name": self.name, "field": self.field, **{k: v for k, v in self.params.items() if k not in skip}}

    def reads(self) -> list[str]:
        """Input columns the filter needs (checked before a run starts, so a typo fails at once)."""
        fields = getattr(self, "fields", None) or [self.field]
        return [*fields, *(v for k, v in self.params.items() if k.endswith("_field") and isinstance(v, str))]

    def keep(self, row: dict[str, Any]) -> Verdict:
        raise NotImplementedError

    def keep_batch(self, table: pa.Table) -> list[tuple[bool, str]]:
        out = []
        for row in table.to_pylist():
            v = self.keep(row)
            out.append((v, "") if isinstance(v, bool) else (bool(v[0]), str(v[1])))
        return out


REGISTRY: dict[str, type[Filter]] = {}
BUILTIN_MODULES = ("basic", "dedup", "neardup", "repetition", "span_repetition", "language", "quality")


def registry() -> dict[str, type[Filter]]:
    """Every registered filter, the built-in ones imported on first use (so importing one filter
    module does not pull in the others' dependencies)."""
    import importlib

    for m in BUILTIN_MODULES:
        importlib.import_module(f"lrpipe.filters.{m}")
    return REGISTRY


def register(cls: type[Filter]) -> type[Filter]:
    REGISTRY[cls.name] = cls
    return cls


def build_filter(spec: str | dict[str, Any] | Filter) -> Filter:
    """``"unfinished"`` or ``{"name": "unfinished", "field": "instruction", ...}`` (a built filter is
    returned as is)."""
    if isinstance(spec, Filter):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name")
    known = registry()
    if name not in known:
        raise ValueError(f"unknown filter '{name}'; available: {', '.join(sorted(known))}")
    return known[name](**spec)


def text_of(row: dict[str, Any], field: str) -> str:
    """The field as text: missing or null is the empty string; a conversation (a list of messages
    with ``content``) is its messages' contents joined by blank lines."""
    v = row.get(field)
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, list) and all(isinstance(m, dict) for m in v):
        return "\n\n".join(str(m.get("content") or "") for m in v)
    return str(v)


def text_column(table: pa.Table, field: str) -> pa.Array:
    """A column as a string array for vectorized filters, with :func:`text_of`'s conventions (a
    missing column reads as empty texts)."""
    if field not in table.column_names:
        return pa.array([""] * table.num_rows, pa.string())
    col = table.column(field).combine_chunks()
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return pc.fill_null(col.cast(pa.string()), "")
    return pa.array([text_of({field: v}, field) for v in col.to_pylist()], pa.string())
