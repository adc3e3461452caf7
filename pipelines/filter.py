"""Filter chain stage: one unit per input unit; each row is kept or rejected with the reason of the
first filter (in chain order) that removes it. Global filters (``dedup``) first run their own
resumable pre-pass over the whole input (``prepare``), seeing only rows that survive the filters
before them in the chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from lrpipe.engines.base import Engine, GenRequest, GenResult
from lrpipe.filters.base import Filter, build_filter
from lrpipe.runner import GenerationStage, MapStage, UnitOutput
from lrpipe.shards import REJECT_DETAIL, REJECT_REASON, ShardDir, UnitSpec
from lrpipe.sources import Source


def load_chain(path: str | Path, default_field: str | None = None) -> list[dict[str, Any]]:
    """Read a YAML chain (``filters:`` list of names or mappings), validated with errors naming the file."""

    from lrpipe.errors import InputError
    from lrpipe.filters.base import registry

    REGISTRY = registry()

    from lrpipe.config_files import read_yaml

    doc = read_yaml(path, "filter chain")
    items = doc.get("filters")
    if not isinstance(items, list) or not items:
        raise InputError("expected a non-empty 'filters:' list", path=str(path), field="filters")
    chain = []
    for i, item in enumerate(items):
        spec = {"name": item} if isinstance(item, str) else dict(item) if isinstance(item, dict) else None
        if spec is None or spec.get("name") not in REGISTRY:
            raise InputError(f"filters[{i}]: unknown filter {item!r}; available: {', '.join(sorted(REGISTRY))}",
                             path=str(path), field="filters")
        if default_field:
            spec.setdefault("field", default_field)
        chain.append(spec)
    return chain


def apply_chain(table: pa.Table, filters: list[Filter]) -> tuple[list[int], dict[int, tuple[str, str]]]:
    """Indices of surviving rows, and (reason, detail) of every removed row."""
    alive = list(range(table.num_rows))
    reasons: dict[int, tuple[str, str]] = {}
    for f in filters:
        if not alive:
            break
        sub = table if len(alive) == table.num_rows else table.take(pa.array(alive, pa.int64()))
        verdicts = f.keep_batch(sub)
        nxt = []
        for i, (ok, detail) in zip(alive, verdicts):
            if ok:
                nxt.append(i)
            else:
                reasons[i] = (f.reason, detail)
        alive = nxt
    return alive, reasons


def split_rows(table: pa.Table, alive: list[int], reasons: dict[int, tuple[str, str]]) -> UnitOutput:
    kept = table.take(pa.array(alive, pa.int64()))
    rej_idx = sorted(reasons)
    rejected = table.take(pa.array(rej_idx, pa.int64()))
    rejected = rejected.append_column(REJECT_REASON, pa.array([reasons[i][0] for i in rej_idx], pa.string()))
    rejected = rejected.append_column(REJECT_DETAIL, pa.array([reasons[i][1] for i in rej_idx], pa.string()))
    return UnitOutput(kept=kept, rejected=rejected, rows_in=table.num_rows)


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

    def prepare(self, shard: ShardDir, rank: int, world_size: int) -> None:
        for j, f in enumerate(self.filters):
            if not f.is_global:
                continue
            before = self.filters[:j]

            def survivors(unit: UnitSpec, before: list[Filter] = before) -> pa.Table:
                table = self.source.read_unit(unit)
                alive, _ = apply_chain(table, before)
                return table.take(pa.array(alive, pa.int64()))

            f.prepare(Path(shard.path) / ".work" / f"{j:02d}-{f.name}", self.plan(), survivors, rank, world_size,
                      workers=self.workers)

    def process(self, unit: UnitSpec) -> UnitOutput:
        table = self.source.read_unit(unit)
        alive, reasons = apply_chain(table, self.filters)
        return split_rows(table, alive, reasons)


class EngineFilterStage(GenerationStage):
    """A chain with one engine filter (``quality``): the filters before it run on the unit, the
    survivors' rating requests stream into the engine with every other unit's, and the filters after
    it run when the ratings are in. Global filters before it are prepared as in :class:`FilterStage`.

    A *global* filter after the engine filter (``quality`` then ``dedup``) must see which rows the
    judge kept across the whole input before any unit can be decided. Then the ratings are a
    resumable pre-pass (``prepare``): each rank rates its units into ``.work/NN-quality-ratings/``
    (one file per unit, so a crash redoes only unfinished units), the ranks meet on those files, the
    later global filters prepare on the survivors, and units are then decided from the stored
    ratings without further engine calls."""

    name = "filter"

    def __init__(self, source: Source, filters: list[str | dict[str, Any]] | list[Filter], engine: Engine) -> None:
        self.base = FilterStage(source, filters)
        self.source, self.filters, self.engine = source, self.base.filters, engine
        idx = [i for i, f in enumerate(self.filters) if f.needs_engine]
        if len(idx) != 1:
            raise ValueError("a filter chain may hold at most one engine filter")
        self.j = idx[0]
        self.judge = self.filters[self.j]
        self.two_phase = any(f.is_global for f in self.filters[self.j + 1:])
        self.ratings: Path | None = None

    def config(self) -> dict[str, Any]:
        return self.base.config()

    def inputs(self) -> list[dict[str, Any]]:
        return self.base.inputs()

    def provenance(self) -> dict[str, Any]:
        return {"engine": self.engine.describe()}

    def plan(self) -> list[UnitSpec]:
        return self.base.plan()

    # ---------------------------------------------------------------- prepare
    def prepare(self, shard: ShardDir, rank: int, world_size: int) -> None:
        self.base.workers = self.workers
        if not self.two_phase:
            self.base.prepare(shard, rank, world_size)
            return
        from lrpipe.parallel import wait_for_files

        work = Path(shard.path) / ".work"
        plan = self.plan()
        self.ratings = work / f"{self.j:02d}-{self.judge.name}-ratings"
        self.ratings.mkdir(parents=True, exist_ok=True)
        for k, f in enumerate(self.filters):
            if k == self.j:
                todo = [u for u in plan if u.index % world_size == rank and not self._ratings_file(u).exists()]
                self._rate(todo)
                wait_for_files([self._ratings_file(u) for u in plan], f"{self.judge.name} ratings")
            elif f.is_global:
                f.prepare(work / f"{k:02d}-{f.name}", plan, lambda u, k=k: self._survivors(u, k), rank, world_size,
                          workers=self.workers)

    def _ratings_file(self, unit: UnitSpec) -> Path:
        assert self.ratings is not None
        return self.ratings / f"{unit.part}.arrow"

    def _rate(self, units: list[UnitSpec]) -> None:
        """Rate the rows of ``units`` that survive the filters before the judge; one file per unit as
        soon as its last rating is in (the engine is fed every unit's requests as one stream)."""
        from lrpipe.shards import write_table

        expected: dict[int, int] = {}
        got: dict[int, dict[tuple[int, str], GenResult]] = {}
        by_index = {u.index: u for u in units}

        def stream() -> Any:
            for u in units:
                table = self.source.read_unit(u)
                alive, _ = apply_chain(table, self.filters[:self.j])
                reqs = self._requests(table, alive)
                expected[u.index], got[u.index] = len(reqs), {}
                if not reqs:
                    write_table(self._ratings_file(u), self._rating_table({}))
                for q in reqs:
                    yield GenRequest(key=(u.index, q.key), prompt=q.prompt, sampling=q.sampling, group=u.index)

        for res in self.engine.generate(stream()):
            ui, key = res.key
            got[ui][key] = res
            if len(got[ui]) == expected[ui]:
                write_table(self._ratings_file(by_index[ui]), self._rating_table(got.pop(ui)))

    def _rating_table(self, results: dict[tuple[int, str], GenResult]) -> pa.Table:
        rows = sorted(results)
        return pa.table({"row": pa.array([i for i, _ in rows], pa.int64()),
                         "field": pa.array([f for _, f in rows], pa.string()),
                         "label": pa.array([self.judge.parse(results[k]) for k in rows], pa.string()),
                         "detail": pa.array([f"{results[k].finish_reason} {(results[k].error or results[k].text)[:200]!r}"
                                             for k in rows], pa.string())})

    def _stored(self, unit: UnitSpec) -> dict[tuple[int, str], tuple[str | None, str]]:
        from lrpipe.shards import read_arrow

        t = read_arrow(self._ratings_file(unit)).to_pylist()
        return {(r["row"], r["field"]): (r["label"], r["detail"]) for r in t}

    def _survivors(self, unit: UnitSpec, k: int) -> pa.Table:
        """The unit's rows that survive the chain before filter ``k`` (> the judge), ratings included."""
        table = self.source.read_unit(unit)
        alive, reasons = apply_chain(table, self.filters[:self.j])
        alive = self._judged(alive, reasons, self._stored(unit))
        sub = table.take(pa.array(alive, pa.int64()))
        keep, _ = apply_chain(sub, self.filters[self.j + 1:k])
        return sub.take(pa.array(keep, pa.int64()))

    # ---------------------------------------------------------------- units
    def _requests(self, table: pa.Table, alive: list[int]) -> list[GenRequest]:
        rows = table.to_pylist()
        reqs = []
        for i in alive:
            for field, ids, sampling in self.judge.requests(rows[i], self.engine.tokenizer):
                reqs.append(GenRequest(key=(i, field), prompt=ids, sampling=sampling))
        return reqs

    def requests(self, unit: UnitSpec) -> tuple[Any, list[GenRequest]]:
        table = self.source.read_unit(unit)
        alive, reasons = apply_chain(table, self.filters[:self.j])
        if self.two_phase:  # rated in prepare: decided from the stored ratings
            return (table, alive, reasons), []
        return (table, alive, reasons), self._requests(table, alive)

    def _judged(self, alive: list[int], reasons: dict[int, tuple[str, str]],
                labels: dict[tuple[int, str], tuple[str | None, str]]) -> list[int]:
        """Rows of ``alive`` the judge keeps; the others get their reason in ``reasons``."""
        survivors = []
        for i in alive:
            verdict = None
            for f in self.judge.fields:
                label, detail = labels[(i, f)]
                if label is None and verdict is None:
                    verdict = ("quality_error", f"{f}: {detail}")
                elif label in self.judge.reject_labels and verdict is None:
                    verdict = ("quality", f"{f} rated {label!r}")
            if verdict:
                reasons[i] = verdict
            else:
                survivors.append(i)
        return survivors

    def finalize(self, unit: UnitSpec, context: Any, results: dict[Any, GenResult]) -> UnitOutput:
        table, alive, reasons = context
        if self.two_phase:
            labels = self._stored(unit)
        else:
            labels = {k: (self.judge.parse(r), f"{r.finish_reason} {(r.error or r.text)[:200]!r}")
                      for k, r in results.items()}
        survivors = self._judged(alive, reasons, labels)
        for f in self.judge.fields:
            col = self.judge.column(f)
            values = [None] * table.num_rows
            for (i, field), (label, _) in labels.items():
                if field == f:
                    values[i] = label
            if col in table.column_names:
                table = table.drop_columns([col])
            table = table.append_column(col, pa.array(values, pa.string()))
        rest = self.filters[self.j + 1:]
        if rest and survivors:
            sub = table.take(pa.array(survivors, pa.int64()))
            keep_local, more = apply_chain(sub, rest)
            for local, why in more.items():
                reasons[survivors[local]] = why
            survivors = [survivors[k] for k in keep_local]
        out = split_rows(table, survivors, reasons)
        out.stats = {"output_tokens": sum(r.output_tokens for r in results.values())}
        return out


def make_filter_stage(source: Source, filters: list[str | dict[str, Any] | Filter], engine: Engine | None = None
                      ) -> FilterStage | EngineFilterStage:
    """The plain stage, or the engine-driven one when the chain holds an engine filter."""
    built = [build_filter(f) for f in filters]
    if any(f.needs_engine for f in built):
        if engine is None:
            raise ValueError("the chain holds an engine filter (quality): pass a model/engine")
        return EngineFilterStage(source, built, engine)
    return FilterStage(source, built)
