"""Stand-ins at the engine boundary, for tests that chain real stages.

:class:`TranslatorServer` is an OpenAI-compatible completions server on loopback that "translates" the
item at the end of each prompt (the JSON a ``pipe translate`` prompt ends with, in completion or chat
mode) by prefixing every text with a marker. Everything before the HTTP boundary is the real code:
recipe, prompt building, the openai engine, JSON checks, retries, writing, accounting. The marker makes
a translated text unmistakable downstream (mix, pack), and it keeps numbers, code and URLs as they
were, so the recipe's checks pass (except language detection, which a marker cannot pass).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lrpipe.engines.base import WAIT

MARK = "⟪eu⟫ "


def translate_item(item: Any) -> Any:
    """The fake translation of a ``pipe translate`` item: every text gets :data:`MARK` in front."""
    if isinstance(item, list):
        return [{"role": m["role"], "content": MARK + m["content"]} for m in item]
    out = {"question": MARK + item["question"]}
    if "answer" in item:
        out["answer"] = MARK + item["answer"]
    if "answers" in item:
        out["answers"] = [MARK + a for a in item["answers"]]
    return out


def last_json(text: str) -> Any:
    """The last JSON value that starts a line of ``text`` (the item a translation prompt ends with)."""
    dec = json.JSONDecoder()
    starts = [i for i, c in enumerate(text) if c in "[{" and (i == 0 or text[i - 1] == "\n")]
    for i in reversed(starts):
        try:
            return dec.raw_decode(text[i:])[0]
        except json.JSONDecodeError:
            continue
    raise ValueError("no JSON item in the prompt")


class TranslatorServer:
    """``with TranslatorServer(tokenizer) as srv:`` … ``--engine openai --base-url srv.url``.

    Also a small OpenAI-compatible server for the engine's own tests: ``api_key`` makes it answer 401
    to requests without that Bearer token; ``delay`` holds each request so concurrency is observable
    (``max_inflight``); ``owned_by`` is what ``GET /models`` reports (None: no such endpoint);
    ``chat_reply(body)`` answers ``/chat/completions`` (default: the translated item of the last
    message). Every request body is kept in ``bodies``.
    """

    def __init__(self, tokenizer: Any, *, api_key: str | None = None, delay: float = 0.0,
                 owned_by: str | None = None, chat_reply: Any = None) -> None:
        self.tokenizer = tokenizer
        self.requests = self.inflight = self.max_inflight = 0
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        def reply_text(path: str, body: dict[str, Any]) -> str:
            if path.endswith("/chat/completions"):
                if chat_reply is not None:
                    return chat_reply(body)
                content = body["messages"][-1]["content"]
                text = content if isinstance(content, str) else "\n".join(
                    c["text"] for c in content if c.get("type") == "text")
            else:
                prompt = body["prompt"]
                text = prompt if isinstance(prompt, str) else server.tokenizer.decode(prompt)
            return json.dumps(translate_item(last_json(text)), ensure_ascii=False)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, reply: dict[str, Any]) -> None:
                data = json.dumps(reply).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if api_key is None or self.headers.get("Authorization") == f"Bearer {api_key}":
                    return True
                self._send(401, {"error": {"message": "invalid api key"}})
                return False

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if not self._authorized():
                    return
                if self.path.endswith("/models") and owned_by is not None:
                    self._send(200, {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": owned_by}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._authorized():
                    return
                with server.lock:
                    server.requests += 1
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                    server.bodies.append(body)
                try:
                    if delay:
                        time.sleep(delay)
                    out = reply_text(self.path, body)
                    if self.path.endswith("/chat/completions"):
                        choice = {"index": 0, "message": {"role": "assistant", "content": out},
                                  "finish_reason": "stop"}
                    else:
                        choice = {"index": 0, "text": out, "finish_reason": "stop"}
                    code, reply = 200, {"id": "cmpl-test", "choices": [choice],
                                        "usage": {"prompt_tokens": len(body.get("prompt") or "x" * 10),
                                                  "completion_tokens": len(out) // 4}}
                except ValueError as e:
                    code, reply = 400, {"error": {"message": str(e)}}
                # done before the reply leaves: a client that sends its next request the moment it reads
                # this one must not find it still counted (a loaded machine made that race visible)
                with server.lock:
                    server.inflight -= 1
                self._send(code, reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> TranslatorServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class MarkerEngine:
    """The same scripted translator in-process, behind the engine interface (for unit-level tests)."""

    name = "marker"
    supports_images = False
    context_length = 8192

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.calls = 0

    def generate(self, requests: Any) -> Any:
        from lrpipe.engines.base import GenResult

        for q in requests:
            if q is WAIT:
                continue
            self.calls += 1
            text = q.prompt if isinstance(q.prompt, str) else self.tokenizer.decode(q.prompt)
            out = json.dumps(translate_item(last_json(text)), ensure_ascii=False)
            yield GenResult(key=q.key, text=out, finish_reason="stop", prompt_tokens=len(q.prompt),
                            output_tokens=len(out) // 4)

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name}

    def close(self) -> None:
        pass
