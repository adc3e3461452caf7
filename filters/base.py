"""Filter base: a filter is a named predicate with a reason string.

Write one method, ``keep(row)``, returning ``True`` to keep the row, or ``False`` / ``(False, detail)``
to drop it; the chain (:mod:`lrpipe.pipelines.filter`) owns counting, writing rejected rows with their
``reject_reason`` and ``reject_detail``, and the manifest. Filters that gain from vectorization
override ``keep_batch``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa

Verdict = bool | tuple[bool, str]


class Filter:
    name: ClassVar[str] = "filter"

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

    def keep(self, row: dict[str, Any]) -> Verdict:
        raise NotImplementedError

    def keep_batch(self, table: pa.Table) -> list[tuple[bool, str]]:
        out = []
        for row in table.to_pylist():
            v = self.keep(row)
            out.append((v, "") if isinstance(v, bool) else (bool(v[0]), str(v[1])))
        return out


REGISTRY: dict[str, type[Filter]] = {}


def register(cls: type[Filter]) -> type[Filter]:
    REGISTRY[cls.name] = cls
    return cls


def build_filter(spec: str | dict[str, Any]) -> Filter:
    """``"unfinished"`` or ``{"name": "unfinished", "field": "instruction", ...}``."""
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name")
    if name not in REGISTRY:
        raise ValueError(f"unknown filter '{name}'; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**spec)


def text_of(row: dict[str, Any], field: str) -> str:
    """The field as text: missing or null is the empty string."""
    v = row.get(field)
    return "" if v is None else v if isinstance(v, str) else str(v)
