"""Shard directories: the data contract between every stage (README: "What a run leaves behind").

Layout::

    out/<name>/
      manifest.json            # derived: header + every unit's record + totals (rewritten under a lock)
      stage.json               # header: stage, resolved config and hash, version, inputs, plan
      units/part-00000.json    # one record per finished unit: the commit point of that unit
      data/part-00000.arrow    # Arrow IPC stream, one file per unit (what ``datasets`` reads)
      rejected/part-00000.arrow
      profile/part-00000.json  # statistics and a few rows of the unit, for ``pipe report`` (lrpipe.profile)

Why unit records live in their own files: N processes (``--rank r --world-size N``, Slurm arrays)
write into one directory without a coordinator. Each unit belongs to exactly one rank
(``index % world_size == rank``), so each unit file has one writer; ``manifest.json`` is only a
view derived from them, regenerated under an advisory lock after each unit, and ``pipe show``
recomputes it anyway. A unit is committed by renaming its record into ``units/`` *after* its data
and rejected files are renamed into place, so a kill -9 at any moment leaves either a committed
unit or one that is redone from scratch — never a half unit and never a duplicate row.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from lrpipe import __version__
from lrpipe.errors import AccountingError, ConfigMismatchError, InputError
from lrpipe.profile import PROFILE_DIR, safe_profile

MANIFEST = "manifest.json"
HEADER = "stage.json"
REJECT_REASON = "reject_reason"
REJECT_DETAIL = "reject_detail"


def config_hash(config: dict[str, Any]) -> str:
    """Stable hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def part_name(index: int) -> str:
    """``part-00042``: five digits, more past 99,999 units (names still sort within one width)."""
    return f"part-{index:05d}"


_PART = re.compile(r"^\.?part-(\d+)")


def part_index(name: str) -> int:
    """The unit index in a part file's name (``part-00042.arrow``, ``part-123456.json``, or a
    temporary ``.part-00042.arrow.tmp...``)."""
    m = _PART.match(name)
    if m is None:
        raise ValueError(f"not a part file name: {name}")
    return int(m.group(1))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a private temporary name, fsync, then rename: readers see all or nothing."""
    # Unique per host, process and call: ranks may share a filesystem, a pid, or (threads) a process.
    tmp = path.with_name(f".{path.name}.tmp.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def atomic_ipc_file(path: Path, batches: list[pa.RecordBatch], schema: pa.Schema) -> None:
    """Write an Arrow IPC *file* (random access to batches) under a temporary name, then rename."""
    tmp = path.with_name(f".{path.name}.tmp.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, schema) as w:
        for b in batches:
            w.write_batch(b)
    os.replace(tmp, path)


def write_table(path: Path, table: pa.Table) -> None:
    """``table`` as an Arrow IPC file at ``path``, atomically; an empty table keeps its schema."""
    batches = table.to_batches() or [pa.RecordBatch.from_pylist([], table.schema)]
    atomic_ipc_file(path, batches, table.schema)


def table_to_ipc_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def read_arrow(path: Path) -> pa.Table:
    """Read one Arrow IPC stream file (or, for robustness, an IPC file), naming it on failure."""
    try:
        with pa.memory_map(str(path), "r") as src:
            try:
                return ipc.open_stream(src).read_all()
            except pa.ArrowInvalid:
                src.seek(0)
                return ipc.open_file(src).read_all()
    except FileNotFoundError as e:
        raise InputError("file not found", path=str(path)) from e
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"not a readable Arrow shard ({e})", path=str(path)) from e


@dataclass
class UnitSpec:
    """One deterministic work unit of a stage: its index (which fixes its file name and its rank) and
    a description the stage uses to do the work (input file and row range, or Magpie cell and chunk)."""

    index: int
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def part(self) -> str:
        return part_name(self.index)


@dataclass
class UnitRecord:
    index: int
    name: str
    status: str
    file: str
    rows_in: int
    rows_out: int
    rows_rejected: int
    rejected_by_reason: dict[str, int]
    checksum: str
    rejected_file: str | None = None
    rejected_checksum: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    finished_at: float = 0.0
    host: str = ""
    # many-to-one stages (packing): input rows that went into the kept output rows
    rows_consumed: int | None = None
    # the rank (of the world size in the header) that wrote the unit: which task to rerun when one died
    rank: int | None = None


class ShardDir:
    """A stage's output directory. Open it with :meth:`create` (to write) or :meth:`open` (to read)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.data_dir = self.path / "data"
        self.rejected_dir = self.path / "rejected"
        self.units_dir = self.path / "units"
        self.profile_dir = self.path / PROFILE_DIR
        self._records: dict[int, UnitRecord] = {}

    # ------------------------------------------------------------------ opening
    @classmethod
    def is_shard_dir(cls, path: str | os.PathLike[str]) -> bool:
        p = Path(path)
        return p.is_dir() and ((p / HEADER).exists() or (p / MANIFEST).exists())

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ShardDir:
        sd = cls(path)
        if not sd.path.exists():
            raise InputError("no such shard directory", path=str(sd.path))
        if not cls.is_shard_dir(sd.path):
            raise InputError(f"not a shard directory (no {HEADER} or {MANIFEST})", path=str(sd.path))
        return sd

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, stage: str, config: dict[str, Any],
               plan: list[UnitSpec], inputs: list[dict[str, Any]] | None = None,
               provenance: dict[str, Any] | None = None, overwrite: bool = False,
               world_size: int = 1) -> ShardDir:
        """Open ``path`` for writing ``stage`` with ``config``.

        Resuming with the same config continues; a different config is refused unless ``overwrite``
        (which deletes the previous contents; refused with several ranks, which would delete each
        other's work)."""
        sd = cls(path)
        if sd.path.exists() and not sd.path.is_dir():
            raise InputError("--out names an existing file, not a folder: choose another --out", path=str(sd.path))
        chash = config_hash(config)
        header_path = sd.path / HEADER
        if header_path.exists():
            old = sd.header()
            if old.get("config_hash") != chash or old.get("stage") != stage:
                if not overwrite:
                    diff = _config_diff(old.get("config", {}), config)
                    raise ConfigMismatchError(
                        f"{sd.path} already holds stage '{old.get('stage')}' made with another config "
                        f"(hash {old.get('config_hash')} vs {chash}; differs in: {diff}). Use another --out, "
                        "or pass --overwrite to delete it and start again.")
                if world_size > 1:
                    raise ConfigMismatchError(
                        f"--overwrite with --world-size {world_size} would let ranks delete each other's "
                        f"work; delete {sd.path} once, then start the ranks.")
                sd.clear()
        elif overwrite and sd.path.exists() and any(sd.path.iterdir()) and world_size == 1:
            sd.clear()
        for d in (sd.path, sd.data_dir, sd.rejected_dir, sd.units_dir):
            d.mkdir(parents=True, exist_ok=True)
        if not header_path.exists():
            header = {
                "stage": stage,
                "config": config,
                "config_hash": chash,
                "version": __version__,
                "inputs": inputs or [],
                "provenance": provenance or {},
                "plan": [{"index": u.index, "name": u.name, "file": f"{u.part}.arrow"} for u in plan],
                "created_at": time.time(),
            }
            # Several ranks may race here with identical content: any winner is correct.
            _atomic_write_json(header_path, header)
        return sd

    def clear(self) -> None:
        for name in ("data", "rejected", "units", PROFILE_DIR, ".work"):
            shutil.rmtree(self.path / name, ignore_errors=True)
        for name in (HEADER, MANIFEST, ".lock"):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        self._records.clear()

    def header(self) -> dict[str, Any]:
        p = self.path / HEADER
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            # A directory written by an older layout or copied without its header: the manifest has it.
            try:
                return json.loads((self.path / MANIFEST).read_text())
            except FileNotFoundError as e:
                raise InputError("no header or manifest", path=str(self.path)) from e
            except json.JSONDecodeError as e:
                raise InputError(f"corrupt manifest ({e}); delete it and run the stage again",
                                 path=str(self.path / MANIFEST)) from e
        except json.JSONDecodeError as e:
            raise InputError(f"corrupt header ({e})", path=str(p)) from e

    # ------------------------------------------------------------------ units
    def records(self) -> dict[int, UnitRecord]:
        """All committed unit records (reads only the record files not seen before)."""
        if self.units_dir.exists():
            for f in self.units_dir.iterdir():
                if not (f.name.startswith("part-") and f.name.endswith(".json")):
                    continue
                idx = part_index(f.name)
                if idx in self._records:
                    continue
                try:
                    self._records[idx] = UnitRecord(**json.loads(f.read_text()))
                except (json.JSONDecodeError, TypeError) as e:
                    raise InputError(f"corrupt unit record ({e})", path=str(f)) from e
        return self._records

    def done_indices(self) -> set[int]:
        """Units that are committed and whose files are still there with their recorded size."""
        done = set()
        for idx, rec in self.records().items():
            if rec.status == "done" and (self.data_dir / rec.file).exists():
                done.add(idx)
        return done

    def cleanup_temporaries(self, owned: set[int] | None = None) -> int:
        """Remove temporary files a killed writer left behind (only for units this rank owns)."""
        n = 0
        for d in (self.data_dir, self.rejected_dir, self.units_dir, self.profile_dir, self.path):
            if not d.exists():
                continue
            for f in d.iterdir():
                if not (f.name.startswith(".") and ".tmp." in f.name):
                    continue
                if f.name.startswith(".part-"):
                    if owned is not None and part_index(f.name) not in owned:
                        continue
                else:
                    try:
                        if time.time() - f.stat().st_mtime < 3600:
                            continue  # a header or manifest another rank may be writing right now
                    except FileNotFoundError:
                        continue
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                    n += 1
        return n

    def write_unit(self, unit: UnitSpec, kept: pa.Table, rejected: pa.Table | None, rows_in: int,
                   stats: dict[str, Any] | None = None, rows_consumed: int | None = None,
                   rank: int | None = None) -> UnitRecord:
        """Commit one unit: data file, rejected file, then its record (the commit point).

        ``rows_consumed`` is for stages whose output rows are not input rows (packing many documents
        into one row): the input rows that went into ``kept``; the balance is checked with it."""
        n_rej = 0 if rejected is None else rejected.num_rows
        out_rows = kept.num_rows if rows_consumed is None else rows_consumed
        if rows_in != out_rows + n_rej:
            raise AccountingError(
                f"unit {unit.name} ({unit.part}): rows in {rows_in} != rows out {out_rows} + "
                f"rows rejected {n_rej}")
        by_reason: dict[str, int] = {}
        if rejected is not None and n_rej:
            if REJECT_REASON not in rejected.column_names:
                raise AccountingError(f"unit {unit.name}: rejected rows lack a '{REJECT_REASON}' column")
            for r in rejected.column(REJECT_REASON).to_pylist():
                by_reason[r] = by_reason.get(r, 0) + 1
        for what, table in (("rows", kept), ("rejected rows", rejected)):
            _require_valid(table, f"unit {unit.name} ({unit.part}): {what}")
        data = table_to_ipc_bytes(kept)
        _atomic_write_bytes(self.data_dir / f"{unit.part}.arrow", data)
        rec = UnitRecord(
            index=unit.index, name=unit.name, status="done", file=f"{unit.part}.arrow",
            rows_in=rows_in, rows_out=kept.num_rows, rows_rejected=n_rej, rejected_by_reason=by_reason,
            checksum="sha256:" + hashlib.sha256(data).hexdigest(), stats=stats or {},
            finished_at=time.time(), host=socket.gethostname(), rows_consumed=rows_consumed, rank=rank)
        rej_path = self.rejected_dir / f"{unit.part}.arrow"
        if rejected is not None and n_rej:
            rdata = table_to_ipc_bytes(rejected)
            _atomic_write_bytes(rej_path, rdata)
            rec.rejected_file = rej_path.name
            rec.rejected_checksum = "sha256:" + hashlib.sha256(rdata).hexdigest()
        else:
            # A previous, uncommitted attempt of this unit may have left a rejected file.
            with contextlib.suppress(FileNotFoundError):
                rej_path.unlink()
        # The profile before the record: a committed unit always has the profile of its own rows.
        self.profile_dir.mkdir(exist_ok=True)
        prof = safe_profile(kept, rejected, f"{self.path} unit {unit.name}")
        _atomic_write_bytes(self.profile_dir / f"{unit.part}.json",
                            json.dumps(prof, separators=(",", ":"), default=str).encode())
        _atomic_write_json(self.units_dir / f"{unit.part}.json", asdict(rec))
        self._records[unit.index] = rec
        return rec

    # ------------------------------------------------------------------ manifest
    def manifest(self) -> dict[str, Any]:
        """The manifest as it stands now: header, every planned unit with its status, totals."""
        header = self.header()
        records = self.records()
        units = []
        planned = header.get("plan", [])
        seen = set()
        for u in planned:
            rec = records.get(u["index"])
            seen.add(u["index"])
            units.append(asdict(rec) if rec else {"index": u["index"], "name": u["name"], "status": "pending",
                                                  "file": u["file"]})
        for idx in sorted(set(records) - seen):
            units.append(asdict(records[idx]))
        done = [r for r in records.values() if r.status == "done"]
        by_reason: dict[str, int] = {}
        for r in done:
            for k, v in r.rejected_by_reason.items():
                by_reason[k] = by_reason.get(k, 0) + v
        totals = {
            "units_planned": len(planned),
            "units_done": len(done),
            "rows_in": sum(r.rows_in for r in done),
            "rows_out": sum(r.rows_out for r in done),
            "rows_rejected": sum(r.rows_rejected for r in done),
            "rejected_by_reason": dict(sorted(by_reason.items())),
        }
        consumed = sum(r.rows_out if r.rows_consumed is None else r.rows_consumed for r in done)
        if any(r.rows_consumed is not None for r in done):
            totals["rows_consumed"] = consumed
        totals["balanced"] = totals["rows_in"] == consumed + totals["rows_rejected"]
        stats: dict[str, Any] = {}
        for r in done:
            for k, v in r.stats.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    stats[k] = stats.get(k, 0) + v
        header = {k: v for k, v in header.items() if k != "plan"}
        extra = self.path / "mix.json"  # stages that plan globally leave their plan beside the manifest
        if extra.exists():
            try:
                header["mix"] = json.loads(extra.read_text())
            except json.JSONDecodeError as e:
                raise InputError(f"corrupt mixture plan ({e})", path=str(extra)) from e
        return {**header, "complete": len(done) >= len(planned) and bool(planned) or
                (not planned and bool(done)), "totals": totals, "stats": stats, "units": units}

    def refresh_manifest(self) -> dict[str, Any]:
        """Regenerate ``manifest.json`` under an advisory lock (ranks may finish units concurrently;
        each writes its own record first, so the last lock holder sees every record)."""
        lock_path = self.path / ".lock"
        with open(lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
            except OSError:  # some network filesystems refuse locks; the manifest is derived anyway
                pass
            m = self.manifest()
            _atomic_write_json(self.path / MANIFEST, m)
        return m

    # ------------------------------------------------------------------ reading
    def data_files(self) -> list[Path]:
        return sorted(self.data_dir.glob("part-*.arrow"))

    def profile(self, index: int) -> dict[str, Any] | None:
        """The committed unit's profile (None for units written before profiles existed)."""
        p = self.profile_dir / f"{part_name(index)}.json"
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as e:
            raise InputError(f"corrupt unit profile ({e})", path=str(p)) from e

    def rejected_files(self) -> list[Path]:
        return sorted(self.rejected_dir.glob("part-*.arrow"))

    def iter_tables(self, rejected: bool = False) -> Iterator[tuple[Path, pa.Table]]:
        for f in self.rejected_files() if rejected else self.data_files():
            yield f, read_arrow(f)

    def read_all(self, rejected: bool = False) -> pa.Table:
        """Every data (or rejected) file as one table. With no file at all (nothing was rejected), an
        empty table with at least an ``id`` column, so callers can always ask for ids."""
        tables = [t for _, t in self.iter_tables(rejected)]
        if not tables:
            return pa.table({"id": pa.array([], pa.string())})
        return pa.concat_tables(tables, promote_options="default")


def _require_valid(table: pa.Table | None, what: str) -> None:
    """Refuse to write a table no reader could open (a string that is not UTF-8: Arrow's readers take
    bytes as they are, and ``to_pylist``, ``datasets`` and the next stage fail on them). Readers set
    such rows aside as ``bad_input``; reaching this is a bug in a reader or stage, named here."""
    if table is None:
        return
    try:
        table.validate(full=True)
    except pa.ArrowInvalid as e:
        bad = next((c for c in table.column_names if not _valid_column(table.column(c))), "?")
        raise AccountingError(f"{what}: column '{bad}' does not validate ({e}); nothing was written") from e


def _valid_column(col: pa.ChunkedArray) -> bool:
    try:
        col.validate(full=True)
        return True
    except pa.ArrowInvalid:
        return False


def _config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            sub = _config_diff(a, b, f"{prefix}{k}.")
            if sub:
                keys.append(sub)
        elif a != b:
            keys.append(f"{prefix}{k}")
    return ", ".join(keys[:8]) + (" …" if len(keys) > 8 else "")


def wait_until_complete(path: str | os.PathLike[str], poll: float = 5.0) -> None:
    """Block until the shard directory at ``path`` is complete: ranks that share a step whose output
    the next step reads whole (``pipe translate --sample``) meet here, through the filesystem."""
    while not ShardDir.open(path).refresh_manifest()["complete"]:
        time.sleep(poll)
