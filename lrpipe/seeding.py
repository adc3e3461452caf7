"""Per-request seeds: a pure function of the run's seed and what the request is (category and index,
row id and attempt, pair and order), so a request gets the same seed whatever the batching, the rank
that runs it, or a resume; a retry (another attempt) gets a new one."""

from __future__ import annotations

import hashlib
from typing import Any


def seed_for(base: int, *parts: Any) -> int:
    """A 31-bit seed from ``(base, *parts)`` (SHA-256: stable across Python versions and processes)."""
    h = hashlib.sha256(":".join(str(p) for p in (base, *parts)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF
