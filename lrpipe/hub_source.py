"""Hugging Face datasets as sources: ids as users write them, downloaded or streamed units."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote, unquote

import pyarrow as pa

from lrpipe.errors import InputError
from lrpipe.readers import file_kind
from lrpipe.shards import UnitSpec
from lrpipe.sources import Source, with_ids

# ---------------------------------------------------------------------------------------------- hub
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?(@[\w./%-]+)?$")
_BUILDERS = {"jsonl": "json", "json": "json", "parquet": "parquet", "arrow": "arrow", "csv": "csv"}


def is_hub_spec(spec: str) -> bool:
    """``hf://…``, or a bare ``org/name[:config][@rev]`` that is not a local path (as ``datasets`` and
    ``huggingface-cli`` take it: a folder of that name in the working directory wins)."""
    s = str(spec)
    if s.startswith("hf://"):
        return True
    return bool(_HUB_ID.match(s)) and file_kind(s) is None and not os.path.exists(s.split("@")[0].split(":")[0])


def parse_hub_spec(spec: str) -> tuple[str, str | None, str | None, str | None]:
    """``(repo_id, config, revision, path_in_repo)`` from any of the forms users write:

    * ``org/name``, ``hf://org/name[:config][@revision]`` (pipe's own form), and
    * ``hf://datasets/org/name[@revision][/path/in/repo]``, huggingface_hub's fsspec form, where a
      path (a file, a folder or a glob such as ``eu/*.jsonl.gz``) selects data files in the repo.
      A revision with ``/`` in it is URL-quoted there (``refs%2Fconvert%2Fparquet``), as in HfFileSystem.
    * ``hf:///abs/path``: a local copy of a dataset repo, read by ``datasets`` as the Hub one would be.
    """
    rest = str(spec)
    if rest.startswith("hf://"):
        rest = rest[len("hf://"):]
    if rest.startswith("/"):  # hf:///abs/path: a local copy of a repo (hf download --repo-type dataset),
        return rest, None, None, None  # loaded by datasets the same way (offline clusters)
    if rest.startswith("datasets/"):
        rest = rest[len("datasets/"):]
    parts = rest.split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise InputError("not a Hub dataset id (expected org/name)", path=str(spec))
    org, name = parts[0], parts[1]
    path = parts[2] if len(parts) > 2 and parts[2] else None
    revision = config = None
    if "@" in name:
        name, revision = name.split("@", 1)
        revision = unquote(revision)
    if ":" in name:
        name, config = name.split(":", 1)
    return f"{org}/{name}", config, revision, path


class HubSource(Source):
    """A Hugging Face dataset: ``org/name``, ``hf://org/name[:config][@revision]`` or
    ``hf://datasets/org/name[@revision][/files]``, with a split.

    Downloaded (the default), units are row ranges of the cached Arrow table. **Streaming** reads each
    unit exactly once: the units are the dataset's own shards (data files, and parquet row groups after
    ``IterableDataset.reshard``), each read through ``IterableDataset.shard`` start to end, so a run
    costs one pass over the data whatever its size (``skip(start).take(n)`` would re-read from row 0
    for every unit). Images stay as ``{bytes, path}`` (decoding off), as in downloaded mode: stages
    move bytes, and a PIL object does not fit in an Arrow table.
    """

    def __init__(self, spec: str, split: str = "train", streaming: bool = False, rows_per_unit: int = 1000,
                 id_field: str | None = None) -> None:
        self.spec = str(spec)
        self.hub_id, self.config_name, self.revision, self.path_in_repo = parse_hub_spec(spec)
        self.split = "train" if self.path_in_repo else split
        self.streaming = streaming
        self.rows_per_unit = rows_per_unit
        self.id_field = id_field
        self._ds: Any = None
        self._n: int | None = None

    def where(self) -> str:
        return f"hf://datasets/{self.hub_id}" + (f"/{self.path_in_repo}" if self.path_in_repo else "")

    def _load(self) -> Any:
        if self._ds is None:
            import datasets

            try:
                if self.path_in_repo:  # files inside the repo: their format names the builder
                    kind = file_kind(self.path_in_repo.rstrip("/*")) or file_kind(self.path_in_repo)
                    if kind is None:
                        raise InputError("name files with a known suffix (.jsonl[.gz|.zst], .parquet, .arrow,"
                                         " .csv) or a glob of them", path=self.where())
                    rev = f"@{quote(self.revision, safe='')}" if self.revision else ""
                    files = f"hf://datasets/{self.hub_id}{rev}/{self.path_in_repo}"
                    ds = datasets.load_dataset(_BUILDERS[kind], data_files=files, split="train",
                                               streaming=self.streaming)
                else:
                    ds = datasets.load_dataset(self.hub_id, self.config_name, split=self.split,
                                               revision=self.revision, streaming=self.streaming)
            except InputError:
                raise
            except Exception as e:
                raise InputError(f"cannot load Hugging Face dataset ({type(e).__name__}: {e})",
                                 path=self.where()) from e
            if self.streaming:
                ds = ds.decode(False).reshard()
            self._ds = ds
        return self._ds

    def _num_rows(self) -> int:
        if self._n is None:
            ds = self._load()
            if not self.streaming:
                self._n = len(ds)
            else:  # only for the progress bar: units are shards, their sizes come from reading them
                info = getattr(ds, "info", None)
                split = (info.splits or {}).get(self.split) if info is not None and info.splits else None
                self._n = int(split.num_examples) if split is not None and split.num_examples else 0
        return self._n

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "hub", "hub_id": self.hub_id, "config": self.config_name, "split": self.split,
                             "revision": self.revision, "streaming": self.streaming}
        if self.path_in_repo:
            d["data_files"] = self.path_in_repo
        if self._ds is not None and not self.streaming:
            d["fingerprint"] = getattr(self._ds, "_fingerprint", None)
        return d

    def identity(self) -> dict[str, Any]:
        ident = {k: v for k, v in self.describe().items() if k != "fingerprint"} | {"id_field": self.id_field}
        # streaming units are the dataset's shards; downloaded units are row ranges
        return ident | ({"units": "shards"} if self.streaming else {"rows_per_unit": self.rows_per_unit})

    def units(self) -> list[UnitSpec]:
        if self.streaming:
            ds = self._load()
            n_shards = ds.num_shards
            est = self._num_rows() // max(n_shards, 1)
            return [UnitSpec(index=i, name=f"{self.hub_id}:{self.split}[shard {i}/{n_shards}]",
                             params={"shard": i, "shards": n_shards, "rows": est}) for i in range(n_shards)]
        n = self._num_rows()
        return [UnitSpec(index=i, name=f"{self.hub_id}:{self.split}[{s}:{min(s + self.rows_per_unit, n)}]",
                         params={"start": s, "rows": min(self.rows_per_unit, n - s)})
                for i, s in enumerate(range(0, n, self.rows_per_unit))]

    def read_unit(self, unit: UnitSpec) -> pa.Table:
        ds = self._load()
        if self.streaming:
            part = ds.shard(num_shards=unit.params["shards"], index=unit.params["shard"]).with_format("arrow")
            batches = list(part.iter(batch_size=self.rows_per_unit))
            table = (pa.concat_tables(batches, promote_options="permissive") if batches
                     else ds.features.arrow_schema.empty_table())
        else:
            start, n = unit.params["start"], unit.params["rows"]
            table = ds.with_format("arrow")[start:start + n]
        return with_ids(table, self.id_field)
