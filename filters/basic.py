"""Cheap per-row filters: unfinished instructions and empty text."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lrpipe.filters.base import Filter, Verdict, register, text_of


@register
class Unfinished(Filter):
    """The study noticed instructions ending in ':' were cut before their content (a list, a text
    to translate) and removed them."""

    name = "unfinished"

    def keep(self, row: dict[str, Any]) -> Verdict:
        text = text_of(row, self.field).strip()
        if text.endswith(":"):
            return False, f"ends with ':' ({text[-40:]!r})"
        return True

    def keep_batch(self, table: pa.Table) -> list[tuple[bool, str]]:
        stripped = pc.utf8_rtrim_whitespace(pc.fill_null(table.column(self.field), ""))
        bad = pc.ends_with(stripped, ":").to_numpy(zero_copy_only=False)
        if not bad.any():
            return [(True, "")] * table.num_rows
        tails = stripped.to_pylist()
        return [(False, f"ends with ':' ({t[-40:]!r})") if b else (True, "") for b, t in zip(bad, tails)]


@register
class Empty(Filter):
    """Empty or whitespace-only text."""

    name = "empty"

    def keep(self, row: dict[str, Any]) -> Verdict:
        return (False, "empty or whitespace only") if not text_of(row, self.field).strip() else True

    def keep_batch(self, table: pa.Table) -> list[tuple[bool, str]]:
        trimmed = pc.utf8_trim_whitespace(pc.fill_null(table.column(self.field), ""))
        bad = pc.equal(pc.utf8_length(trimmed), 0).to_numpy(zero_copy_only=False)
        return [(False, "empty or whitespace only") if b else (True, "") for b in bad]
