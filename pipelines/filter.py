"""Filter chain stage: one unit per input part, each row kept or rejected with the first failing
filter's reason (filters run in the order given)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

import lrpipe.filters.basic  # noqa: F401  (registers the built-in filters)
from lrpipe.filters.base import Filter, build_filter
from lrpipe.runner import MapStage, UnitOutput
from lrpipe.shards import REJECT_DETAIL, REJECT_REASON, UnitSpec
from lrpipe.sources import Source


class FilterStage(MapStage):
    name = "filter"

    def __init__(self, source: Source, filters: list[str | dict[str, Any]] | list[Filter]) -> None:
        self.source = source
        self.filters = [f if isinstance(f, Filter) else build_filter(f) for f in filters]

    def config(self) -> dict[str, Any]:
        return {"filters": [f.config() for f in self.filters], "input": self.source.identity()}

    def inputs(self) -> list[dict[str, Any]]:
        return [self.source.describe()]

    def plan(self) -> list[UnitSpec]:
        return self.source.units()

    def process(self, unit: UnitSpec) -> UnitOutput:
        table = self.source.read_unit(unit)
        alive = list(range(table.num_rows))
        reasons: dict[int, tuple[str, str]] = {}
        for f in self.filters:
            if not alive:
                break
            sub = table.take(pa.array(alive, pa.int64()))
            verdicts = f.keep_batch(sub)
            nxt = []
            for i, (ok, detail) in zip(alive, verdicts):
                if ok:
                    nxt.append(i)
                else:
                    reasons[i] = (f.reason, detail)
            alive = nxt
        kept = table.take(pa.array(alive, pa.int64()))
        rej_idx = sorted(reasons)
        rejected = table.take(pa.array(rej_idx, pa.int64()))
        rejected = rejected.append_column(REJECT_REASON, pa.array([reasons[i][0] for i in rej_idx], pa.string()))
        rejected = rejected.append_column(REJECT_DETAIL, pa.array([reasons[i][1] for i in rej_idx], pa.string()))
        return UnitOutput(kept=kept, rejected=rejected, rows_in=table.num_rows)
