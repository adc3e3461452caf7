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


@register
class Length(Filter):
    """Text shorter than ``min_chars`` or longer than ``max_chars`` (characters after stripping)."""

    name = "length"

    def __init__(self, field: str = "instruction", min_chars: int = 1, max_chars: int = 100_000, **params: Any) -> None:
        super().__init__(field=field, min_chars=min_chars, max_chars=max_chars, **params)
        self.min_chars, self.max_chars = min_chars, max_chars

    def keep(self, row: dict[str, Any]) -> Verdict:
        n = len(text_of(row, self.field).strip())
        if n < self.min_chars:
            return False, f"{n} chars < {self.min_chars}"
        if n > self.max_chars:
            return False, f"{n} chars > {self.max_chars}"
        return True


@register
class LengthRatio(Filter):
    """Target/source length ratio (characters) outside ``[min_ratio, max_ratio]``: a translation much
    shorter or longer than its source usually lost or invented content."""

    name = "length-ratio"

    def __init__(self, field: str = "translation", source_field: str = "instruction", min_ratio: float = 0.5,
                 max_ratio: float = 2.0, **params: Any) -> None:
        super().__init__(field=field, source_field=source_field, min_ratio=min_ratio, max_ratio=max_ratio, **params)
        self.source_field, self.min_ratio, self.max_ratio = source_field, min_ratio, max_ratio

    def keep(self, row: dict[str, Any]) -> Verdict:
        src = len(text_of(row, self.source_field).strip())
        tgt = len(text_of(row, self.field).strip())
        if src == 0:
            return (False, "empty source") if tgt else True
        r = tgt / src
        if not self.min_ratio <= r <= self.max_ratio:
            return False, f"length ratio {r:.2f} outside [{self.min_ratio}, {self.max_ratio}] ({tgt}/{src} chars)"
        return True
