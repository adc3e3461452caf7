"""``pipe arena serve``: a participant in headless Chromium, the JSON API under load, kill -9.

The models are scripted OpenAI-compatible servers that stream their answers word by word. Model
names (``alpha-7b``...) are what the arena records and reveals; the tests check that no byte the
browser or an API client receives before the vote contains one, that answers carrying markup show as
text, that every acknowledged vote is in the store exactly once (also after kill -9), and that the
export is ranked by ``pipe arena`` like the released votes.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from lrpipe.eval.arena_store import ArenaStore

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["alpha-7b", "beta-7b", "gamma-7b"]
XSS = 'Here: <script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2"> done'


class ScriptedModel:
    """An OpenAI-compatible chat endpoint that streams ``reply`` word by word (SSE), or fails."""

    def __init__(self, reply: str, *, delay: float = 0.01, fail: bool = False) -> None:
        self.requests: list[dict[str, Any]] = []
        model = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                model.requests.append(body)
                if fail:
                    self.send_response(500)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                turn = sum(1 for m in body["messages"] if m["role"] == "user")
                for word in f"{reply} (turn {turn})".split(" "):
                    chunk = {"choices": [{"index": 0, "delta": {"content": word + " "}}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(delay)
                self.wfile.write(b"data: [DONE]\n\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Arena:
    """``pipe arena serve`` in a subprocess on a free loopback port."""

    def __init__(self, tmp: Path, models: list[ScriptedModel], **cfg: Any) -> None:
        self.store = tmp / "votes.sqlite"
        self.config = tmp / "arena.yaml"
        self.config.write_text(yaml.safe_dump({
            "name": "test", "system_prompt": "You are a helpful assistant.", "store": str(self.store), "seed": 0,
            "models": [{"name": NAMES[i], "base_url": m.url, "model": f"m{i}"} for i, m in enumerate(models)],
            **cfg}))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Arena:
        import httpx

        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "lrpipe", "arena", "serve", "--config", str(self.config),
                                      "--port", str(self.port)], stdout=open(self.log, "a"), stderr=subprocess.STDOUT,
                                     env=env)
        for _ in range(300):
            if self.proc.poll() is not None:
                pytest.fail(f"pipe arena serve exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"pipe arena serve did not start: {self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


@pytest.fixture()
def models():
    ms = [ScriptedModel("First answer, with **markdown**."), ScriptedModel(XSS),
          ScriptedModel("Third answer, plain.")]
    yield ms
    for m in ms:
        m.close()


def api(client: Any, base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(base + path, json=body, timeout=60)
    return {"status": r.status_code, **r.json(), "_raw": r.text}


def test_a_participant_votes_in_chromium_and_pipe_arena_ranks_the_export(tmp_path, models):
    from playwright.sync_api import sync_playwright

    from tests.browser import chromium, screenshot_path

    arena = Arena(tmp_path, models[:2], dimensions=["content", "language", "overall"]).start()
    bodies: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1300, "height": 1100})
            outside: list[str] = []
            page.on("request", lambda r: None if r.url.startswith((arena.url, "data:", "blob:")) else outside.append(r.url))

            def keep(resp: Any) -> None:
                try:
                    bodies.append(resp.text())
                except Exception:  # noqa: BLE001 - an event stream still open; its events are in the DOM
                    pass

            page.on("response", keep)
            # Gradio streams its events over a fetch that stays open: read those bytes as they arrive
            # through the DevTools protocol (Network.streamResourceContent), not after the stream ends.
            cdp = page.context.new_cdp_session(page)
            cdp.send("Network.enable")
            streamed: list[str] = []

            def on_request(ev: dict[str, Any]) -> None:
                if "/queue/data" in ev["request"]["url"] or "/queue/join" in ev["request"]["url"]:
                    try:
                        got = cdp.send("Network.streamResourceContent", {"requestId": ev["requestId"]})
                        streamed.append(base64.b64decode(got.get("bufferedData", "")).decode("utf-8", "replace"))
                    except Exception:  # noqa: BLE001 - not yet streamable; dataReceived will say
                        pass

            def on_data(ev: dict[str, Any]) -> None:
                if ev.get("data"):
                    streamed.append(base64.b64decode(ev["data"]).decode("utf-8", "replace"))

            cdp.on("Network.requestWillBeSent", on_request)
            cdp.on("Network.dataReceived", on_data)
            page.goto(arena.url + "/", wait_until="load")
            page.wait_for_selector("#start", state="visible")
            page.fill("#username textarea, #username input", "ane")
            page.check("#consent input[type=checkbox]")
            page.click("#start")
            page.wait_for_selector("#arena", state="visible")
            page.fill("#prompt textarea", "Zer da euskara?")
            page.click("#send")
            # both answers arrive, streamed; the markup in one of them is text, and ran nothing
            page.wait_for_function("document.querySelector('#chat-b').innerText.includes('(turn 1)') && "
                                   "document.querySelector('#chat-a').innerText.includes('(turn 1)')", timeout=60000)
            texts = page.inner_text("#chat-a") + page.inner_text("#chat-b")
            assert "<script>window.__pwned = 1</script>" in texts and 'onerror="window.__pwned = 2"' in texts
            assert page.evaluate("window.__pwned") is None
            # a follow-up turn
            page.fill("#prompt textarea", "Eta gehiago?")
            page.click("#send")
            page.wait_for_function("document.querySelector('#chat-a').innerText.includes('(turn 2)') && "
                                   "document.querySelector('#chat-b').innerText.includes('(turn 2)')", timeout=60000)
            before = page.content() + "".join(bodies) + "".join(streamed)
            joined = "".join(streamed)
            # the answers came piece by piece (Gradio sends each new piece as an "append" diff), and those
            # bytes are among what is checked for names below
            assert joined.count('"append"') >= 10 and '"(turn "' in joined, joined[-2000:]
            for name in NAMES:
                assert name not in before, f"{name} reached the browser before the vote"
            for dim, label in (("content", "A is better"), ("language", "Tie"), ("overall", "A is better")):
                page.click(f"#vote-{dim} label:has-text('{label}')")
            page.click("#vote")
            page.wait_for_function("document.querySelector('#msg').innerText.includes('Thank you')", timeout=30000)
            shown = page.inner_text("#msg")
            page.screenshot(path=str(screenshot_path(tmp_path, "arena")), full_page=True)
            browser.close()
        assert not outside, f"the page asked the network for {outside}"
        store = ArenaStore(arena.store)
        rows = store.export_rows()
        assert len(rows) == 1
        r = rows[0]
        assert {r["model_a"], r["model_b"]} == set(NAMES[:2]) and f"A was {r['model_a']}" in shown.replace("*", "")
        assert r["winner"] == "model_a" and r["winner_content"] == "model_a" and r["winner_language"] == "tie"
        assert [m["role"] for m in r["conv_a"]] == ["user", "assistant", "user", "assistant"]
        assert r["conv_a"][2]["content"] == "Eta gehiago?" and "(turn 2)" in r["conv_b"][3]["content"]
        assert r["username"] == "ane"
        # each model got the study's system prompt and sampling
        sent = models[0].requests[0]
        assert sent["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
        assert sent["temperature"] == 0.9 and sent["top_p"] == 0.95
    finally:
        arena.stop()
    out = tmp_path / "battles.jsonl"
    res = subprocess.run([sys.executable, "-m", "lrpipe", "arena", "export", str(arena.store), "--out", str(out),
                          "--drop-usernames"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "username" not in json.loads(out.read_text().splitlines()[0])
    res = subprocess.run([sys.executable, "-m", "lrpipe", "arena", str(out), "--out", str(tmp_path / "rank"),
                          "--rounds", "5"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    ratings = json.loads((tmp_path / "rank" / "ratings.json").read_text())
    assert {x["model"] for x in ratings["groups"]["all"]["ratings"]} == set(NAMES[:2])
    assert set(ratings["groups"]) >= {"global", "content", "language"}
    assert "Zer da euskara" not in (tmp_path / "serve.log").read_text()  # no prompt in the server's log


def test_api_hides_names_limits_and_fails_over(tmp_path, models):
    import httpx

    broken = ScriptedModel("never", fail=True)
    arena = Arena(tmp_path, [models[0], broken], prompt_chars=50, votes_per_participant=1).start()
    try:
        with httpx.Client() as c:
            assert api(c, arena.url, "/api/session", {"consent": False})["status"] == 400
            pid = api(c, arena.url, "/api/session", {"consent": True, "username": "x"})["participant"]
            got = api(c, arena.url, "/api/battle", {"participant": pid})
            assert got["status"] == 200 and not any(n in got["_raw"] for n in NAMES)
            long = api(c, arena.url, f"/api/battle/{got['battle']}/message", {"prompt": "x" * 51})
            assert long["status"] == 400 and "50 characters" in long["error"]
            failed = api(c, arena.url, f"/api/battle/{got['battle']}/message", {"prompt": "hello"})
            assert failed["status"] == 400 and "new pair" in failed["error"]
            assert not any(n in failed["_raw"] for n in NAMES) and "127.0.0.1" not in failed["_raw"]
            v = api(c, arena.url, f"/api/battle/{got['battle']}/vote", {"overall": "a", "content": "a",
                                                                         "language": "a"})
            assert v["status"] == 400  # a failed battle takes no vote
        counts = ArenaStore(arena.store).counts()
        assert counts.get("failed") == 1 and counts["votes"] == 0
    finally:
        arena.stop()
        broken.close()


def one_session(c: Any, base: str, acked: list[str], lock: threading.Lock, budget: list[int]) -> None:
    import httpx

    try:
        pid = api(c, base, "/api/session", {"consent": True})["participant"]
        while True:
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            bid = api(c, base, "/api/battle", {"participant": pid})["battle"]
            ans = api(c, base, f"/api/battle/{bid}/message", {"prompt": "hello"})
            assert ans["status"] == 200, ans
            v = api(c, base, f"/api/battle/{bid}/vote", {"overall": "b", "content": "tie", "language": "bothbad"})
            if v["status"] == 200:
                with lock:
                    acked.append(bid)
    except (httpx.HTTPError, ValueError, KeyError):
        return  # the server was killed under us


@pytest.mark.slow
def test_fifty_sessions_lose_and_double_nothing_even_through_kill_9(tmp_path, models):
    import httpx

    for m in models:
        m.requests.clear()
    arena = Arena(tmp_path, models, votes_per_participant=1000).start()
    acked: list[str] = []
    lock = threading.Lock()
    budget = [150]
    try:
        with httpx.Client(limits=httpx.Limits(max_connections=60)) as c, ThreadPoolExecutor(50) as pool:
            for f in [pool.submit(one_session, c, arena.url, acked, lock, budget) for _ in range(50)]:
                f.result()
        rows = ArenaStore(arena.store).export_rows()
        assert len(acked) == 150 and sorted(r["id"] for r in rows) == sorted(acked)  # none lost, none doubled
        pairs = {}
        for r in rows:
            k = tuple(sorted((r["model_a"], r["model_b"])))
            pairs[k] = pairs.get(k, 0) + 1
        assert len(pairs) == 3 and max(pairs.values()) - min(pairs.values()) <= 10, pairs  # balanced pairs
        # a vote sent twice counts once
        with httpx.Client() as c:
            again = api(c, arena.url, f"/api/battle/{acked[0]}/vote", {"overall": "a", "content": "a", "language": "a"})
            assert again["status"] == 400
        # kill -9 in the middle of a second wave: every vote the server acknowledged is on disk
        acked2: list[str] = []
        budget2 = [10_000]
        with httpx.Client(limits=httpx.Limits(max_connections=60)) as c, ThreadPoolExecutor(50) as pool:
            futures = [pool.submit(one_session, c, arena.url, acked2, lock, budget2) for _ in range(50)]
            deadline = time.time() + 120
            while len(acked2) < 40 and time.time() < deadline:
                time.sleep(0.05)
            arena.proc.send_signal(signal.SIGKILL)
            arena.proc.wait(timeout=30)
            for f in futures:
                f.result()
        assert len(acked2) >= 40
        stored = {r["id"] for r in ArenaStore(arena.store).export_rows()}
        assert set(acked) | set(acked2) <= stored
        assert len(stored) == len(ArenaStore(arena.store).export_rows())
    finally:
        arena.stop()


def test_access_token_and_config_errors(tmp_path, models):
    from fastapi.testclient import TestClient

    from lrpipe.eval.arena_serve import ArenaConfig, ArenaService, build_app

    cfg = ArenaConfig(models=[{"name": NAMES[i], "base_url": m.url, "model": f"m{i}"} for i, m in enumerate(models)],
                      store=str(tmp_path / "s.sqlite"))
    client = TestClient(build_app(ArenaService(cfg, ArenaStore(cfg.store)), token="s3cret"))
    assert client.get("/api/health").status_code == 401 and client.get("/").status_code == 401
    assert client.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    first = client.get("/?token=s3cret")
    assert first.status_code == 200 and client.get("/api/health").status_code == 200  # the cookie it set
    assert not any(n in first.text for n in NAMES)  # the page itself names no model
    # a bad config is one line naming the file and the key
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": [{"name": "solo", "base_url": "http://x/v1", "model": "m"}]}))
    res = subprocess.run([sys.executable, "-m", "lrpipe", "arena", "serve", "--config", str(bad)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode != 0 and str(bad) in res.stderr and "at least two" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
