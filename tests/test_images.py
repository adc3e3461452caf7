"""pipe images against an HTTP server on loopback: good images, 404s, a server error that passes on
retry, a slow server, a page that is not an image, an opt-out header, a checksum that does not match.
Then what reads images refuses URL-only rows instead of training or scoring them as text."""

from __future__ import annotations

import io
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lrpipe.errors import InputError
from lrpipe.shards import ShardDir

from .conftest import PIPE


def png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), ((seed * 40) % 256, 90, 200)).save(buf, format="PNG")
    return buf.getvalue()


class ImageServer:
    """/ok/N.png, /missing.png (404), /flaky.png (503 once, then the image), /slow.png (3 s),
    /html.png (a web page), /optout.png (X-Robots-Tag: noai). Counts hits and the most requests in
    flight at once."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.inflight = self.max_inflight = 0
        self.lock = threading.Lock()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802
                with srv.lock:
                    srv.hits[self.path] = srv.hits.get(self.path, 0) + 1
                    srv.inflight += 1
                    srv.max_inflight = max(srv.max_inflight, srv.inflight)
                    n = srv.hits[self.path]
                try:
                    time.sleep(0.05)  # long enough for requests to overlap
                    code, body, headers = 200, b"", {"Content-Type": "image/png"}
                    if self.path.startswith("/ok/"):
                        body = png(int(self.path[4:-4]))
                    elif self.path == "/missing.png":
                        code = 404
                    elif self.path == "/flaky.png":
                        code, body = (503, b"") if n == 1 else (200, png(99))
                    elif self.path == "/slow.png":
                        time.sleep(3)
                        body = png(7)
                    elif self.path == "/html.png":
                        body, headers = b"<html><body>Not found, sorry</body></html>", {"Content-Type": "text/html"}
                    elif self.path == "/optout.png":
                        body, headers = png(5), {"Content-Type": "image/png", "X-Robots-Tag": "noai, noimageai"}
                    self.send_response(code)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass
                finally:
                    with srv.lock:
                        srv.inflight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = ImageServer()
    yield s
    s.close()


def cli(args, env):
    return subprocess.run(PIPE + args, capture_output=True, text=True, env=env, timeout=300)


def test_images_are_fetched_checked_cached_and_failures_are_rows(tmp_path, server, env):
    import hashlib

    u = server.url
    rows = [{"image_url": f"{u}/ok/{i}.png", "caption": f"a photo number {i}"} for i in range(12)]
    rows += [{"image_url": f"{u}/missing.png", "caption": "gone"}, {"image_url": f"{u}/flaky.png", "caption": "flaky"},
             {"image_url": f"{u}/slow.png", "caption": "slow"}, {"image_url": f"{u}/html.png", "caption": "page"},
             {"image_url": f"{u}/optout.png", "caption": "opted out"}, {"image_url": None, "caption": "no url"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "cc3m.parquet")  # CC3M's card: image_url, caption
    args = ["images", "--input", str(tmp_path / "cc3m.parquet"), "--concurrency", "4", "--timeout", "1",
            "--retries", "1", "--cache", str(tmp_path / "cache"), "--rows-per-unit", "9", "--no-progress"]
    r = cli(args + ["--out", str(tmp_path / "img")], env)
    assert r.returncode == 0, r.stderr
    sd = ShardDir.open(tmp_path / "img")
    m = sd.manifest()
    assert m["totals"]["balanced"] and m["totals"]["rows_in"] == 18
    assert m["totals"]["rejected_by_reason"] == {"image_http_404": 1, "image_timeout": 1, "image_not_an_image": 1,
                                                 "image_opted_out": 1, "image_bad_url": 1}
    kept = {r["caption"]: r for r in sd.read_all().to_pylist()}
    assert len(kept) == 13 and kept["flaky"]["image"]["bytes"] == png(99)  # 503, then the retry worked
    for i in range(12):
        img = kept[f"a photo number {i}"]["image"]
        assert img == {"bytes": png(i), "path": f"{u}/ok/{i}.png"}
    assert server.hits["/missing.png"] == 1  # a 404 is final: no retry
    assert server.hits["/slow.png"] == 2  # a timeout is retried (--retries 1)
    assert 2 <= server.max_inflight <= 4  # concurrent, and never past the bound
    # a second run reads the good images from the cache
    before = dict(server.hits)
    assert cli(args + ["--out", str(tmp_path / "again")], env).returncode == 0
    assert all(server.hits[f"/ok/{i}.png"] == before[f"/ok/{i}.png"] for i in range(12))
    assert ShardDir.open(tmp_path / "again").manifest()["stats"]["cache_hits"] == 13
    # PixMo-AMA's image_sha256 is checked
    ama = [{"image_url": f"{u}/ok/{i}.png", "image_sha256": hashlib.sha256(png(i)).hexdigest(),
            "question": "What is it?", "answer": "A square."} for i in range(3)]
    ama[1]["image_sha256"] = "0" * 64
    pq.write_table(pa.Table.from_pylist(ama), tmp_path / "ama.parquet")
    r = cli(["images", "--input", str(tmp_path / "ama.parquet"), "--out", str(tmp_path / "ama"), "--cache",
             str(tmp_path / "cache"), "--no-progress"], env)
    assert r.returncode == 0, r.stderr
    assert ShardDir.open(tmp_path / "ama").manifest()["totals"]["rejected_by_reason"] == {"image_sha256_mismatch": 1}


def test_url_only_rows_are_refused_by_training_and_evaluation(tmp_path, server, env):
    from lrpipe.eval.mm_data import instances, load_task
    from lrpipe.training.config import TrainConfig
    from lrpipe.training.mllm import MLLMTask
    from tests.train_fixtures import mllm_parts

    u = server.url
    rows = [{"image_url": f"{u}/ok/{i}.png", "caption": f"photo {i}"} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "cc3m.parquet")
    # the rows as a mixture would hold them, without images
    assert cli(["filter", "--input", str(tmp_path / "cc3m.parquet"), "--out", str(tmp_path / "raw"), "--filters",
                "empty", "--field", "caption"], env).returncode == 0
    vision, llm = mllm_parts(tmp_path)
    cfg = dict(model=str(llm), vision=str(vision), out=str(tmp_path / "run"), stage=1, dtype="fp32")
    with pytest.raises(InputError, match=r"reference images by URL \('image_url'\).*pipe images"):
        MLLMTask(TrainConfig(data=str(tmp_path / "raw"), **cfg))
    # after pipe images every row carries its image
    assert cli(["images", "--input", str(tmp_path / "raw"), "--out", str(tmp_path / "img"), "--cache",
                str(tmp_path / "cache"), "--no-progress"], env).returncode == 0
    task = MLLMTask(TrainConfig(data=str(tmp_path / "img"), **cfg))
    ids, labels, image = task.sample(0)
    assert image is not None and image.size == (40, 30)
    # evaluation: a benchmark whose rows have only URLs is refused, naming the fix
    bench = tmp_path / "bench" / "vqav2"
    rows = [{"question_id": 1, "question": "What color?", "image_url": f"{u}/ok/1.png",
             "answers": [{"answer": "blue"}] * 10}]
    bench.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), bench / "test.parquet")
    with pytest.raises(InputError, match=r"reference images by URL.*pipe images"):
        instances(load_task("vqav2"), Path(tmp_path / "bench"), "en")
