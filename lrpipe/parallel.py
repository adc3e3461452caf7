"""Ordered, bounded process parallelism for CPU-bound map work (filters, key hashing).

Why fork and a module global instead of pickling the work function: stages hold closures, open
sources and large read-only state (a dedup loser map, a tokenizer); forked workers inherit all of it
for free, and only each item's *result* crosses the process boundary. Results come back in input
order with at most ``2 × workers`` items in flight, so the caller can commit them as they arrive
and memory stays bounded however many items there are.

Falls back to a plain in-process map for one worker, one item, or where ``fork`` is unavailable.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# jobs by token: several fork_map calls may be live at once (ranks run as threads in tests)
_JOBS: dict[int, tuple[Callable[[Any], Any], Sequence[Any]]] = {}


def _call(token: int, i: int) -> Any:
    fn, items = _JOBS[token]
    return fn(items[i])


def default_workers() -> int:
    """Cores this process may use (respects affinity masks set by Slurm or taskset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover (non-Linux)
        return max(1, os.cpu_count() or 1)


def fork_map(fn: Callable[[T], R], items: Sequence[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` over ``workers`` forked processes, yielding results in order."""
    if workers <= 1 or len(items) <= 1 or "fork" not in mp.get_all_start_methods():
        yield from map(fn, items)
        return
    token = id(items) ^ id(fn)
    _JOBS[token] = (fn, items)
    try:
        ex = ProcessPoolExecutor(min(workers, len(items)), mp_context=mp.get_context("fork"))
        pending: deque[Future[Any]] = deque()
        nxt = 0
        while nxt < len(items) or pending:
            while nxt < len(items) and len(pending) < 2 * workers:
                pending.append(ex.submit(_call, token, nxt))
                nxt += 1
            yield pending.popleft().result()
    finally:
        # on an error or an abandoned generator, don't wait for queued items
        if "ex" in locals():
            ex.shutdown(wait=True, cancel_futures=True)
        _JOBS.pop(token, None)


def wait_for_files(files: Sequence[Path], what: str, timeout: float = 7 * 24 * 3600, poll: float = 2.0) -> None:
    """Block until every file exists: how ranks meet between the phases of a global step (each rank
    writes its share of the files; none needs a coordinator or a network connection)."""
    t0 = time.time()
    while True:
        missing = [f for f in files if not f.exists()]
        if not missing:
            return
        if time.time() - t0 > timeout:
            raise TimeoutError(f"waited {timeout:.0f}s for {len(missing)} {what} files "
                               f"(first: {missing[0]}); are all ranks running?")
        log.info("waiting for %d %s files from other ranks", len(missing), what)
        time.sleep(poll)
