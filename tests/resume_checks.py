"""What a resumed generation run must equal, and what it need not (README: "Resume", "Reproducible").

A unit committed before the kill is never rewritten, and it equals the reference run's unit byte for
byte: both ran in the same batches from the start. A unit run after the resume shares its batches with
other requests than it would have, so on some CPUs (AMX, AVX-512) its sampled text differs in places;
what must hold for it is everything that does not come from sampling: the ids (each exactly once), the
seeds, the cell (category, temperature, system prompt, source row) each id was generated from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lrpipe.shards import ShardDir


def committed(path: Path) -> dict[int, tuple[str, str | None]]:
    """Unit index → (data checksum, rejected checksum) of every unit committed in ``path`` now."""
    return {i: (r.checksum, r.rejected_checksum) for i, r in ShardDir.open(path).records().items()}


def all_rows(sd: ShardDir) -> list[dict[str, Any]]:
    rows = []
    for rejected in (False, True):
        t = sd.read_all(rejected=rejected)
        rows += t.to_pylist() if t.num_rows else []
    return rows


def assert_resumed(ref: Path, resumed: Path, before_kill: dict[int, tuple[str, str | None]],
                   stable: tuple[str, ...], key: str = "id") -> None:
    """``resumed`` (killed, then rerun) against ``ref`` (uninterrupted): see the module docstring.
    ``stable``: the columns that do not come from sampling."""
    a, b = ShardDir.open(ref), ShardDir.open(resumed)
    rows_a, rows_b = all_rows(a), all_rows(b)
    ids_b = [r[key] for r in rows_b]
    assert len(ids_b) == len(set(ids_b)), f"duplicated ids in {resumed}"
    assert sorted(r[key] for r in rows_a) == sorted(ids_b), f"lost or extra ids in {resumed}"
    assert b.manifest()["complete"] and b.manifest()["totals"]["balanced"]
    now, ref_units = committed(resumed), committed(ref)
    for i, sums in before_kill.items():
        assert now[i] == sums, f"unit {i} of {resumed} was rewritten by the resume"
        assert sums == ref_units[i], f"unit {i} of {resumed}, run in the same batches, differs from the reference"
    by_id = {r[key]: r for r in rows_a}
    for r in rows_b:
        want = by_id[r[key]]
        for col in stable:
            if col in r and col in want:
                assert r[col] == want[col], (r[key], col, r[col], want[col])
