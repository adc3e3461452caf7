"""``pipe images``: fetch the images a dataset references by URL into its shards.

CC3M and the PixMo sets publish ``image_url`` (PixMo also ``image_sha256``), not images. Training and
evaluation need the pixels, so this stage downloads them once into an ``image`` column shaped like
``datasets``' Image feature (``{bytes, path}``, the URL as the path), which ``pipe train mllm`` and
``pipe eval mm`` read. It behaves like img2dataset where it matters at scale:

* **Bounded concurrency** (``--concurrency`` threads per process; ranks and Slurm arrays split the
  units as for every stage), a **timeout** per request and **retries** with exponential backoff for
  what can pass (timeouts, connection errors, HTTP 429 and 5xx); a 404 is final at once.
* **Every row is accounted for**: a row whose image cannot be had is rejected with its reason
  (``image_http_404``, ``image_timeout``, ``image_not_an_image``, ``image_sha256_mismatch``,
  ``image_too_large``, ``image_opted_out``, ``image_bad_url``, ``image_error``) and the URL in the detail.
* **Checked bytes**: the content must decode as an image (PIL), and match ``image_sha256`` when the
  dataset gives one. Bytes are kept as served (no re-encoding), so the checksum stays meaningful.
* **Opt-outs honoured**: a response with ``X-Robots-Tag: noai`` or ``noimageai`` is not used (as
  img2dataset does by default; ``--ignore-opt-out`` to change it).
* **A local cache** keyed by URL (``$LRPIPE_CACHE/images`` or ``--cache``): a rerun, another rank or
  another stage reading the same URLs does not download them again; a resumed run redoes only its
  unfinished units, and those mostly from the cache.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from lrpipe.images import IMAGE_TYPE
from lrpipe.runner import MapStage, UnitOutput
from lrpipe.shards import REJECT_DETAIL, REJECT_REASON, UnitSpec
from lrpipe.sources import Source

USER_AGENT = "lrpipe-images/0.1 (+https://github.com/; research dataset builder, img2dataset-compatible)"


def default_cache() -> Path:
    from lrpipe.models import cache_dir

    return cache_dir() / "images"


@dataclass
class Fetched:
    data: bytes | None
    reason: str = ""
    detail: str = ""
    cached: bool = False
    attempts: int = 0


class ImageFetcher:
    """Downloads one URL with retries, checks it, and keeps it in the cache. Thread-safe."""

    def __init__(self, cache: str | Path | None = None, timeout: float = 20.0, retries: int = 3,
                 max_bytes: int = 50 * 1024 * 1024, respect_opt_out: bool = True, backoff: float = 0.5) -> None:
        self.cache = Path(cache) if cache else default_cache()
        self.timeout, self.retries, self.max_bytes = timeout, retries, max_bytes
        self.respect_opt_out, self.backoff = respect_opt_out, backoff
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "retries": self.retries, "max_bytes": self.max_bytes,
                "respect_opt_out": self.respect_opt_out, "cache": str(self.cache)}

    def _cache_path(self, url: str) -> Path:
        h = hashlib.sha256(url.encode()).hexdigest()
        return self.cache / h[:2] / h

    def fetch(self, url: Any, sha256: str | None = None) -> Fetched:
        if not isinstance(url, str) or not url.startswith(("http://", "https://", "file://")):
            return Fetched(None, "image_bad_url", f"not a URL: {url!r}"[:200])
        path = self._cache_path(url)
        if path.exists():
            data = path.read_bytes()
            bad = self.check(data, sha256)
            if bad is None:
                return Fetched(data, cached=True)
        got = self._download(url)
        if got.data is None:
            return got
        bad = self.check(got.data, sha256)
        if bad is not None:
            return Fetched(None, bad[0], f"{url}: {bad[1]}", attempts=got.attempts)
        self._store(path, got.data)
        return got

    @staticmethod
    def check(data: bytes, sha256: str | None) -> tuple[str, str] | None:
        """(reason, detail) when the bytes are not the image they should be."""
        if sha256 and hashlib.sha256(data).hexdigest() != str(sha256).lower():
            return "image_sha256_mismatch", f"sha256 {hashlib.sha256(data).hexdigest()[:16]}… != {str(sha256)[:16]}…"
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        except Exception as e:  # PIL raises many types for "not an image"
            return "image_not_an_image", f"{type(e).__name__}: {str(e)[:120]}"
        return None

    def _store(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def _download(self, url: str) -> Fetched:
        last = ("image_error", "")
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * (1 + random.random() / 2))
            req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    tag = (resp.headers.get("X-Robots-Tag") or "").lower()
                    if self.respect_opt_out and ("noai" in tag or "noimageai" in tag):
                        return Fetched(None, "image_opted_out", f"{url}: X-Robots-Tag {tag}", attempts=attempt + 1)
                    data = resp.read(self.max_bytes + 1)
                if len(data) > self.max_bytes:
                    return Fetched(None, "image_too_large", f"{url}: over {self.max_bytes} bytes", attempts=attempt + 1)
                return Fetched(data, attempts=attempt + 1)
            except urllib.error.HTTPError as e:
                last = (f"image_http_{e.code}", f"{url}: HTTP {e.code} {e.reason}")
                if e.code != 429 and e.code < 500:
                    return Fetched(None, *last, attempts=attempt + 1)
            except TimeoutError as e:
                last = ("image_timeout", f"{url}: no answer in {self.timeout}s ({e})")
            except urllib.error.URLError as e:
                timed_out = isinstance(e.reason, TimeoutError)
                last = ("image_timeout" if timed_out else "image_error", f"{url}: {e.reason}")
            except (ConnectionError, OSError, ValueError) as e:
                last = ("image_error", f"{url}: {type(e).__name__}: {e}")
        return Fetched(None, last[0], last[1][:300], attempts=self.retries + 1)




class ImagesStage(MapStage):
    """One unit per input unit: the rows whose image could be fetched, with ``image`` added; the
    others in ``rejected/`` with the reason."""

    name = "images"

    def __init__(self, source: Source, fetcher: ImageFetcher, url_field: str = "image_url",
                 sha256_field: str | None = None, out_field: str = "image", concurrency: int = 32) -> None:
        self.source, self.fetcher = source, fetcher
        self.url_field, self.sha256_field, self.out_field = url_field, sha256_field, out_field
        self.concurrency = max(1, concurrency)

    def config(self) -> dict[str, Any]:
        f = self.fetcher
        return {"url_field": self.url_field, "sha256_field": self.sha256_field, "out_field": self.out_field,
                "max_bytes": f.max_bytes, "respect_opt_out": f.respect_opt_out, "input": self.source.identity()}

    def inputs(self) -> list[dict[str, Any]]:
        return [self.source.describe()]

    def provenance(self) -> dict[str, Any]:
        return {"fetcher": self.fetcher.describe(), "concurrency": self.concurrency}

    def plan(self) -> list[UnitSpec]:
        return self.source.units()

    def process(self, unit: UnitSpec) -> UnitOutput:
        table = self.source.read_unit(unit)
        urls = table.column(self.url_field).to_pylist()
        shas = (table.column(self.sha256_field).to_pylist() if self.sha256_field and
                self.sha256_field in table.column_names else [None] * len(urls))
        with ThreadPoolExecutor(self.concurrency) as pool:
            got = list(pool.map(lambda a: self.fetcher.fetch(*a), zip(urls, shas)))
        keep = [i for i, g in enumerate(got) if g.data is not None]
        drop = [i for i, g in enumerate(got) if g.data is None]
        kept = table.take(pa.array(keep, pa.int64()))
        images = pa.array([{"bytes": got[i].data, "path": urls[i]} for i in keep], IMAGE_TYPE)
        if self.out_field in kept.column_names:
            kept = kept.set_column(kept.column_names.index(self.out_field), self.out_field, images)
        else:
            kept = kept.append_column(self.out_field, images)
        rej = table.take(pa.array(drop, pa.int64()))
        rej = rej.append_column(REJECT_REASON, pa.array([got[i].reason for i in drop], pa.string()))
        rej = rej.append_column(REJECT_DETAIL, pa.array([got[i].detail for i in drop], pa.string()))
        stats = {"fetched": sum(1 for g in got if g.data is not None and not g.cached),
                 "cache_hits": sum(1 for g in got if g.cached),
                 "bytes": sum(len(g.data) for g in got if g.data is not None),
                 "retries": sum(max(0, g.attempts - 1) for g in got)}
        return UnitOutput(kept=kept, rejected=rej, rows_in=table.num_rows, stats=stats)
