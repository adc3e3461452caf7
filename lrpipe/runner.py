"""The runner: owns partitioning, resume, progress, writing and accounting, so a stage is only its
transformation (datatrove's split between steps and executors).

Two kinds of stage:

* :class:`MapStage` — ``process(unit)`` returns the unit's kept and rejected rows (filters, format
  conversion).
* :class:`GenerationStage` — ``requests(unit)`` yields engine requests for a unit and
  ``finalize(unit, results)`` turns the results into kept and rejected rows. The runner streams the
  requests of *all* of this rank's pending units into the engine as one lazy iterator and commits each
  unit the moment its last result arrives, so the engine is never drained between units.

A unit is the smallest thing redone after a crash; units are deterministic (input shard × row range,
or Magpie cell × chunk) and rank ``r`` of ``w`` takes units ``index % w == r``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa

from lrpipe.engines.base import WAIT, Engine, GenRequest, GenResult, Wait
from lrpipe.errors import RowError
from lrpipe.parallel import fork_map
from lrpipe.shards import ShardDir, UnitSpec

log = logging.getLogger(__name__)


@dataclass
class UnitOutput:
    kept: pa.Table
    rejected: pa.Table | None
    rows_in: int
    stats: dict[str, Any] = field(default_factory=dict)
    #: many-to-one stages (packing): input rows that went into ``kept``
    rows_consumed: int | None = None


class Stage:
    """Common part of all stages: a name, the config that determines the output, the inputs, a plan."""

    name: str = "stage"
    #: processes for CPU-bound work in ``prepare`` and ``process`` (set by the runner)
    workers: int = 1

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def inputs(self) -> list[dict[str, Any]]:
        return []

    def provenance(self) -> dict[str, Any]:
        return {}

    def plan(self) -> list[UnitSpec]:
        raise NotImplementedError

    def prepare(self, shard: ShardDir, rank: int, world_size: int) -> None:
        """Work that must see the whole input before units are processed (global dedup). Runs after
        the output directory is opened; must be resumable and safe to run on every rank."""

    def unit_size(self, unit: UnitSpec) -> int:
        """Rows (or requests) in a unit, for the progress bar; 0 when unknown."""
        return int(unit.params.get("rows", 0))

    def source_rejects(self, unit: UnitSpec) -> pa.Table | None:
        """Rows of the unit's input that the source could not read (bad JSON lines, conflicting
        types): the runner adds them to the unit's rejected rows, so they are accounted for too."""
        source = getattr(self, "source", None)
        return source.rejects(unit) if source is not None and hasattr(source, "rejects") else None


def with_source_rejects(stage: Stage, unit: UnitSpec, out: UnitOutput) -> UnitOutput:
    """``out`` with the rows the source could not read added to its rejected rows and ``rows_in``."""
    extra = stage.source_rejects(unit)
    if extra is None or extra.num_rows == 0:
        return out
    if out.rejected is None or out.rejected.num_rows == 0:
        out.rejected = extra
    else:
        out.rejected = pa.concat_tables([out.rejected, extra], promote_options="permissive")
    out.rows_in += extra.num_rows
    return out


T = TypeVar("T")


def parse_rows(rows: list[dict[str, Any]], parse: Callable[[dict[str, Any]], T],
               unit: UnitSpec) -> tuple[dict[int, T], dict[int, tuple[str, str]]]:
    """``parse`` over a unit's rows: the parsed values by row index, and the rows it refused (a
    ``ValueError``, :class:`~lrpipe.errors.RowError` included) as ``bad_input`` with the unit and row
    in the detail. A malformed row is a rejected row, never a failed unit."""
    parsed: dict[int, T] = {}
    bad: dict[int, tuple[str, str]] = {}
    for i, row in enumerate(rows):
        try:
            parsed[i] = parse(row)
        except (ValueError, RowError) as e:
            bad[i] = ("bad_input", f"{unit.name} row {i}: {e}")
    return parsed, bad


class Attempts(dict):
    """Retry rounds of a generation stage's items (a translated row, one order of a judged pair):
    ``attempts[key]`` is the item's latest attempt (0: the first try). :meth:`again` starts the next
    one when the item may be asked again (fewer than ``retries`` retries so far, and its last failure
    not final); a stage's ``review`` calls it for each failed item and queues a request with that
    attempt number (which also seeds the request, so a retry samples differently)."""

    def __init__(self, retries: int) -> None:
        super().__init__()
        self.retries = retries

    def start(self, key: Any) -> int:
        self[key] = 0
        return 0

    def again(self, key: Any, final: bool = False) -> int | None:
        if final or self[key] >= self.retries:
            return None
        self[key] += 1
        return self[key]

    def tries(self, key: Any = None) -> int:
        """Requests made: for one item, or for all."""
        return self[key] + 1 if key is not None else sum(a + 1 for a in self.values())


class MapStage(Stage):
    def process(self, unit: UnitSpec) -> UnitOutput:
        raise NotImplementedError


class GenerationStage(Stage):
    def requests(self, unit: UnitSpec) -> tuple[Any, list[GenRequest]]:
        """Return a context (kept until the unit is finalized) and the unit's requests. Request keys
        must be unique within the unit; the runner wraps them with the unit index."""
        raise NotImplementedError

    def review(self, unit: UnitSpec, context: Any, results: dict[Any, GenResult]) -> list[GenRequest]:
        """Called when every request of a unit so far has its result: return more requests for the
        unit (retries of failed rows, with new keys and seeds) or nothing to finalize it. The new
        requests join the engine's stream at once, so retries never stall other units."""
        return []

    def finalize(self, unit: UnitSpec, context: Any, results: dict[Any, GenResult]) -> UnitOutput:
        raise NotImplementedError


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's rank and the number of ranks sharing an output.

    A ``--dp`` replica's rank (set by its parent from the flags) comes first; then explicit flags;
    torchrun's (RANK/WORLD_SIZE); a Slurm array task's; the tasks of an ``srun`` step. Launchers nest: torchrun or ``srun`` tasks inside each task of an
    array job are ranks ``array task × tasks + task`` (every process gets a different rank, however
    the job was laid out)."""
    array = ("SLURM_ARRAY_TASK_ID" in os.environ and "SLURM_ARRAY_TASK_COUNT" in os.environ
             and int(os.environ["SLURM_ARRAY_TASK_COUNT"]) > 1)
    if "PIPE_WORLD_SIZE" in os.environ and "PIPE_RANK" in os.environ:  # a replica of `--dp` (its parent
        r, w = int(os.environ["PIPE_RANK"]), int(os.environ["PIPE_WORLD_SIZE"])  # resolved the flags)
    elif rank is not None or world_size is not None:
        r, w = rank or 0, world_size or 1
    elif "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        r, w = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if array:  # torchrun inside each array task (one node each): ranks are (array task, local rank)
            a = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            r, w = a * w + r, int(os.environ["SLURM_ARRAY_TASK_COUNT"]) * w
    elif "SLURM_ARRAY_TASK_ID" in os.environ and "SLURM_ARRAY_TASK_COUNT" in os.environ:
        r = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        w = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
        tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
        if tasks > 1 and ("SLURM_STEP_ID" in os.environ or "SLURM_STEPID" in os.environ):
            # srun tasks inside each array task (one engine per GPU group): ranks are (array task, task)
            r, w = r * tasks + int(os.environ.get("SLURM_PROCID", "0")), w * tasks
    elif "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ and (
            "SLURM_STEP_ID" in os.environ or "SLURM_STEPID" in os.environ):
        # tasks of an `srun` step; the batch script itself is process 0 of the job but runs alone
        r, w = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    else:
        if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
            log.warning("SLURM_NTASKS=%s but this is the batch script, not an srun task: running as the only "
                        "rank (start the tasks with `srun pipe ...` to split the work)", os.environ["SLURM_NTASKS"])
        r, w = 0, 1
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"invalid rank {r} for world size {w}")
    return r, w


@dataclass
class RunReport:
    out: str
    units_total: int
    units_done_before: int
    units_done_now: int
    rows_out: int
    rows_rejected: int
    complete: bool
    seconds: float
    output_tokens: int = 0


class _Progress:
    """Progress of a stage: a tqdm bar on a terminal; in a batch job (stderr is a file: Slurm, nohup) one
    line every ``PIPE_LOG_EVERY`` seconds (60) — rows done of the total, rows/s, output tokens/s, rows
    rejected by reason, ETA — so a two-day job's log shows where it is; nothing with ``--no-progress``."""

    def __init__(self, total: int, desc: str, mode: str | None) -> None:
        self.t0 = self.last = time.time()
        self.total, self.desc, self.mode = total, desc, mode
        self.rows = self.tokens = 0
        self.rejected: dict[str, int] = {}
        self.every = float(os.environ.get("PIPE_LOG_EVERY", "60"))
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total or None, desc=desc, unit="row", dynamic_ncols=True, mininterval=1.0)

    def update(self, rows: int, tokens: int = 0) -> None:
        self.rows += rows
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(rows)
            dt = max(time.time() - self.t0, 1e-9)
            if self.tokens:
                self.bar.set_postfix_str(f"{self.tokens / dt:,.0f} out tok/s", refresh=False)
        elif self.mode == "lines" and time.time() - self.last >= self.every:
            self.line()

    def add_rejected(self, by_reason: dict[str, int]) -> None:
        for k, v in by_reason.items():
            self.rejected[k] = self.rejected.get(k, 0) + v

    def line(self, final: bool = False) -> None:
        import sys

        self.last = now = time.time()
        dt = max(now - self.t0, 1e-9)
        rate = self.rows / dt
        parts = [f"{self.rows:,}" + (f"/{self.total:,} rows ({self.rows / self.total:.1%})" if self.total else " rows"),
                 f"{rate:,.1f} rows/s"]
        if self.tokens:
            parts.append(f"{self.tokens / dt:,.0f} out tok/s")
        rej = sum(self.rejected.values())
        if rej:
            top = ", ".join(f"{k} {v:,}" for k, v in sorted(self.rejected.items(), key=lambda kv: -kv[1])[:4])
            parts.append(f"rejected {rej:,} ({top})")
        if final:
            parts.append(f"done in {_hms(dt)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {_hms(max(0.0, (self.total - self.rows) / rate))}")
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {self.desc}: " + ", ".join(parts), file=sys.stderr,
              flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "lines" and self.rows:
            self.line(final=True)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_stage(stage: Stage, out: str | os.PathLike[str], *, engine: Engine | None = None,
              rank: int | None = None, world_size: int | None = None, overwrite: bool = False,
              progress: bool | None = None, workers: int = 1) -> RunReport:
    """Run (or resume) ``stage`` into the shard directory ``out`` for this rank.

    ``workers > 1`` runs a :class:`MapStage`'s units in that many forked processes (results are
    still committed one by one, in order, by this process); generation stages ignore it because
    the engine already uses the hardware."""
    r, w = resolve_rank(rank, world_size)
    plan = stage.plan()
    if len({u.index for u in plan}) != len(plan):
        raise ValueError(f"stage {stage.name}: duplicate unit indices in plan")
    shard = ShardDir.create(out, stage=stage.name, config=stage.config(), plan=plan, inputs=stage.inputs(),
                            provenance=stage.provenance(), overwrite=overwrite, world_size=w)
    mine = [u for u in plan if u.index % w == r]
    shard.cleanup_temporaries(owned={u.index for u in mine})
    stage.workers = max(1, workers)
    stage.prepare(shard, r, w)
    done = shard.done_indices()
    todo = [u for u in mine if u.index not in done]
    t0 = time.time()
    mode = ("bar" if os.isatty(2) else "lines") if progress is None else ("bar" if progress else None)
    bar = _Progress(sum(stage.unit_size(u) for u in todo), f"{stage.name} [{r}/{w}]", mode)
    log.info("%s: %d units planned, %d for rank %d/%d, %d already done", stage.name, len(plan), len(mine), r, w,
             len(mine) - len(todo))
    rows_out = rows_rej = 0
    try:
        if isinstance(stage, GenerationStage):
            if engine is None:
                raise ValueError(f"stage {stage.name} needs an engine")
            outputs = _run_generation(stage, todo, engine, bar)
        elif isinstance(stage, MapStage):
            outputs = zip(todo, fork_map(lambda u: with_source_rejects(stage, u, stage.process(u)), todo,
                                         stage.workers))
        else:  # pragma: no cover
            raise TypeError(type(stage))
        for unit, res in outputs:
            rec = shard.write_unit(unit, res.kept, res.rejected, res.rows_in, res.stats, res.rows_consumed, rank=r)
            shard.refresh_manifest()
            rows_out += rec.rows_out
            rows_rej += rec.rows_rejected
            bar.add_rejected(rec.rejected_by_reason)
            if not isinstance(stage, GenerationStage):
                bar.update(res.rows_in)
    finally:
        bar.close()
    manifest = shard.refresh_manifest()
    return RunReport(out=str(out), units_total=len(plan), units_done_before=len(mine) - len(todo),
                     units_done_now=len(todo), rows_out=rows_out, rows_rejected=rows_rej,
                     complete=bool(manifest["complete"]), seconds=time.time() - t0, output_tokens=bar.tokens)


def _run_generation(stage: GenerationStage, units: list[UnitSpec], engine: Engine,
                    bar: _Progress) -> Iterator[tuple[UnitSpec, UnitOutput]]:
    """Stream every unit's requests into one engine call; yield each unit when its last result is in
    and the stage asks for no retries."""
    return _GenerationLoop(stage, units).run(engine, bar)


class _GenerationLoop:
    """The bookkeeping of :func:`_run_generation`: per unit, its context, how many results it expects
    and which have come; retries the stage asks for go to the front of the request stream, so they
    complete units already in flight before new units start."""

    def __init__(self, stage: GenerationStage, units: list[UnitSpec]) -> None:
        self.stage, self.units = stage, units
        self.contexts: dict[int, Any] = {}
        self.expected: dict[int, int] = {}
        self.results: dict[int, dict[Any, GenResult]] = {}
        self.by_index = {u.index: u for u in units}
        self.ready: list[int] = []  # units with no requests at all
        self.retries: deque[GenRequest] = deque()

    @staticmethod
    def wrap(idx: int, q: GenRequest) -> GenRequest:
        return GenRequest(key=(idx, q.key), prompt=q.prompt, sampling=q.sampling, group=idx, images=q.images,
                          messages=q.messages)

    def stream(self) -> Iterator[GenRequest | Wait]:
        for u in self.units:
            ctx, reqs = self.stage.requests(u)
            self.contexts[u.index], self.expected[u.index], self.results[u.index] = ctx, len(reqs), {}
            if not reqs:
                self.ready.append(u.index)
            for q in reqs:
                while self.retries:
                    yield self.retries.popleft()
                yield self.wrap(u.index, q)
        while self.expected:
            if self.retries:
                yield self.retries.popleft()
            elif any(len(self.results[i]) < self.expected[i] for i in self.expected):
                yield WAIT  # results still to come may bring retries
            else:
                break

    def complete(self, idx: int) -> tuple[UnitSpec, UnitOutput] | None:
        """The unit's results are all in: queue its retries, or finalize it."""
        u = self.by_index[idx]
        more = self.stage.review(u, self.contexts[idx], self.results[idx])
        if more:
            self.expected[idx] += len(more)
            self.retries.extend(self.wrap(idx, q) for q in more)
            return None
        out = with_source_rejects(self.stage, u, self.stage.finalize(u, self.contexts.pop(idx),
                                                                     self.results.pop(idx)))
        self.expected.pop(idx)
        return u, out

    def drain_ready(self) -> Iterator[tuple[UnitSpec, UnitOutput]]:
        while self.ready:
            done = self.complete(self.ready.pop())
            if done:
                yield done

    def run(self, engine: Engine, bar: _Progress) -> Iterator[tuple[UnitSpec, UnitOutput]]:
        for res in engine.generate(self.stream()):
            idx, key = res.key
            res.key = key
            self.results[idx][key] = res
            bar.update(1, res.output_tokens)
            yield from self.drain_ready()
            if len(self.results[idx]) == self.expected[idx]:
                done = self.complete(idx)
                if done:
                    yield done
        yield from self.drain_ready()
        if self.expected:
            missing = {self.by_index[i].name: self.expected[i] - len(self.results.get(i, {})) for i in self.expected}
            raise RuntimeError(f"engine returned no result for some requests: {missing}")
