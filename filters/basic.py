"""Cheap per-row filters: unfinished instructions and empty text."""

from __future__ import annotations

from typing import Any

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


@register
class Empty(Filter):
    """Empty or whitespace-only text."""

    name = "empty"

    def keep(self, row: dict[str, Any]) -> Verdict:
        return (False, "empty or whitespace only") if not text_of(row, self.field).strip() else True
