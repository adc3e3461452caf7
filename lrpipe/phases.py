"""One primitive for the passes a global step makes over the whole input (exact dedup, near dedup, the
mixture index): a list of jobs, each writing one file under a folder.

* **Split by rank**: job ``i`` belongs to rank ``i mod world_size``; every rank runs its own.
* **Resumable**: a job whose file exists is done (files are written atomically, so an existing file is
  whole); a rerun after a crash does only the missing ones.
* **Parallel on a node**: a rank's jobs run over ``workers`` forked processes.
* **A barrier through the filesystem**: the pass returns when every rank's files exist, so the next
  pass can read all of them. No coordinator, no network connection between ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from lrpipe.parallel import fork_map, wait_for_files

J = TypeVar("J")
#: how long a rank waits for the others' files by default (a dead rank is rerun well within it)
WAIT_TIMEOUT = 7 * 24 * 3600.0


def run_phase(folder: Path, jobs: Sequence[J], file_name: Callable[[J], str], work: Callable[[J, Path], None], *,
              rank: int, world_size: int, workers: int = 1, what: str = "phase",
              timeout: float = WAIT_TIMEOUT, poll: float = 2.0) -> list[Path]:
    """Run this rank's missing jobs of a pass (``work(job, its_file)``, which must write the file
    atomically), wait for every rank's, and return every job's file in job order."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / file_name(j) for j in jobs]
    mine = [(j, f) for i, (j, f) in enumerate(zip(jobs, files)) if i % world_size == rank and not f.exists()]
    for _ in fork_map(lambda jf: work(*jf), mine, workers):
        pass
    wait_for_files(files, what, timeout, poll)
    return files
