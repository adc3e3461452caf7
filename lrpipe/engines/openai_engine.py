"""openai engine: any OpenAI-compatible server — ``vllm serve`` on cluster nodes, SGLang, a hosted API.

**Endpoints.** ``api="completions"`` (default) sends raw prompts, as token ids when the stage has them
(vLLM accepts them), because Magpie and base-model translation need the pre-query template byte for
byte. ``api="chat"`` sends the request's ``messages`` to ``/chat/completions``, images as base64 data
URLs in the message's content parts, which is how a judge behind a hosted API (the multimodal study's
GPT judge) sees a question's image.

**Several servers.** ``base_url`` may list several (one ``vllm serve`` per node): each request goes to
the server with the fewest requests in flight, and at most ``max_concurrency`` are in flight per
server (back-pressure: the request stream is pulled only when a server has room), fed lazily so each
server's batch stays full.

**JSON constraints.** vLLM's servers take the schema as ``structured_outputs``; every other server
(SGLang, hosted APIs) as OpenAI's ``response_format`` JSON schema. ``json_format="auto"`` asks the
server once (``/models``: ``owned_by: vllm``) which to use.

**Key**: ``api_key`` (or ``OPENAI_API_KEY``) as a Bearer token. Per-request ``seed`` is passed through.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from lrpipe.engines.base import Engine, GenRequest, GenResult, ScoreRequest, ScoreResult, Wait, pull

log = logging.getLogger(__name__)


class OpenAIEngine(Engine):
    name = "openai"

    def __init__(self, model: str, *, base_url: str | list[str] = "http://127.0.0.1:8000/v1",
                 api_key: str | None = None, max_concurrency: int = 64, timeout: float = 600.0,
                 served_model: str | None = None, tokenizer: str | None = None, retries: int = 3,
                 api: str = "completions", json_format: str = "auto") -> None:
        super().__init__(model)
        urls = base_url if isinstance(base_url, list) else [base_url]
        self.base_urls = [u.rstrip("/") for part in urls for u in str(part).split(",") if u.strip()]
        if not self.base_urls:
            raise ValueError("openai engine: give at least one --base-url")
        self.base_url = self.base_urls[0]
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.max_concurrency = max(1, max_concurrency)
        self.timeout = timeout
        self.served_model = served_model or model
        self.tokenizer_path = tokenizer or model
        self.retries = retries
        if api not in ("completions", "chat"):
            raise ValueError(f"openai engine: api is completions or chat, not {api!r}")
        if json_format not in ("auto", "vllm", "response_format"):
            raise ValueError(f"openai engine: json format is auto, vllm or response_format, not {json_format!r}")
        self.api, self.json_format = api, json_format
        self.supports_images = api == "chat"
        self._inflight = dict.fromkeys(self.base_urls, 0)
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        return self._tokenizer

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.model, "base_urls": self.base_urls, "api": self.api,
                "served_model": self.served_model, "max_concurrency": self.max_concurrency,
                "json_format": self.json_format}

    # ------------------------------------------------------------------ HTTP
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _post(self, path: str, body: dict[str, Any], url: str | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode()
        base = url or self.base_url
        last: Exception | None = None
        for attempt in range(self.retries):
            req = urllib.request.Request(f"{base}{path}", data=data, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:500]
                if e.code < 500 and e.code != 429:  # the request itself is wrong: retrying will not help
                    raise RuntimeError(f"HTTP {e.code}: {detail}") from e
                last = RuntimeError(f"HTTP {e.code}: {detail}")
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = e
            time.sleep(min(2 ** attempt, 30))
        raise RuntimeError(f"server at {base} failed after {self.retries} tries: {last}")

    def _server_is_vllm(self) -> bool:
        """Whether the servers take vLLM's ``structured_outputs`` (asked once; vLLM's ``/models`` says
        ``owned_by: vllm``)."""
        if self.json_format != "auto":
            return self.json_format == "vllm"
        with self._lock:
            if not hasattr(self, "_is_vllm"):
                try:
                    req = urllib.request.Request(f"{self.base_url}/models", headers=self._headers())
                    with urllib.request.urlopen(req, timeout=min(self.timeout, 30)) as resp:
                        models = json.loads(resp.read()).get("data") or []
                    self._is_vllm = any(m.get("owned_by") == "vllm" for m in models)
                except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError):
                    self._is_vllm = True  # vLLM is the server pipe's docs start
            return self._is_vllm

    # ------------------------------------------------------------------ requests
    def _body(self, r: GenRequest) -> tuple[str, dict[str, Any]]:
        s = r.sampling
        body: dict[str, Any] = {"model": self.served_model, "temperature": s.temperature, "top_p": s.top_p,
                                "max_tokens": s.max_tokens, "n": 1}
        if self.api == "chat":
            if not r.messages:
                raise ValueError("the chat API needs the request's messages (this stage sends raw prompts: "
                                 "use --openai-api completions)")
            body["messages"] = _chat_messages(r.messages, r.images)
            path = "/chat/completions"
        else:
            if r.images:
                raise ValueError("the completions endpoint takes no images: use --openai-api chat")
            body["prompt"] = r.prompt
            path = "/completions"
        if s.seed is not None:
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = list(s.stop)
        if s.stop_token_ids:
            body["stop_token_ids"] = list(s.stop_token_ids)
        if s.repetition_penalty != 1.0:
            body["repetition_penalty"] = s.repetition_penalty
        if s.json_schema is not None:
            if self._server_is_vllm():
                body["structured_outputs"] = {"json": s.json_schema}
            else:
                body["response_format"] = {"type": "json_schema",
                                           "json_schema": {"name": "output", "schema": s.json_schema, "strict": True}}
        return path, body

    def _acquire(self) -> str:
        with self._lock:
            url = min(self.base_urls, key=lambda u: self._inflight[u])
            self._inflight[url] += 1
            return url

    def _release(self, url: str) -> None:
        with self._lock:
            self._inflight[url] -= 1

    def _one(self, r: GenRequest, url: str) -> GenResult:
        try:
            path, body = self._body(r)
            out = self._post(path, body, url)
            choice = out["choices"][0]
            usage = out.get("usage") or {}
            text = (choice["message"].get("content") or "") if self.api == "chat" else choice.get("text", "")
            return GenResult(key=r.key, text=text, finish_reason=choice.get("finish_reason") or "stop",
                             prompt_tokens=int(usage.get("prompt_tokens", 0)),
                             output_tokens=int(usage.get("completion_tokens", 0)))
        except Exception as e:
            log.warning("request %r failed: %s", r.key, e)
            return GenResult(key=r.key, text="", finish_reason="error", prompt_tokens=0, output_tokens=0,
                             error=f"{type(e).__name__}: {e}")
        finally:
            self._release(url)

    def generate(self, requests: Iterable[GenRequest | Wait]) -> Iterator[GenResult]:
        it = iter(requests)
        capacity = self.max_concurrency * len(self.base_urls)
        with ThreadPoolExecutor(max_workers=capacity) as pool:
            running: set[Future[GenResult]] = set()
            exhausted = False
            while True:
                if not exhausted and len(running) < capacity:
                    chunk, exhausted = pull(it, capacity - len(running))
                    running.update(pool.submit(self._one, r, self._acquire()) for r in chunk)
                if not running:
                    if exhausted:
                        return
                    # the stream asked us to wait while nothing is in flight: it has nothing to wait for
                    raise RuntimeError("request stream waited with no request in flight")
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        results = []
        for r in requests:
            ctx, cont = self._split_score(r)
            ids = ctx + cont
            out = self._post("/completions", {"model": self.served_model, "prompt": ids, "max_tokens": 1,
                                              "temperature": 0.0, "echo": True, "logprobs": 1})
            lp = out["choices"][0]["logprobs"]
            token_lps = lp["token_logprobs"][:len(ids)]
            tops = (lp.get("top_logprobs") or [None] * len(ids))[:len(ids)]
            first = max(len(ctx), 1)
            total = sum(float(x) for x in token_lps[first:])
            greedy = True
            for pos in range(first, len(ids)):
                top = tops[pos]
                if top:
                    best = max(top.values())
                    greedy = greedy and token_lps[pos] >= best - 1e-6
            results.append(ScoreResult(key=r.key, logprob=total, is_greedy=greedy, num_tokens=len(ids) - first))
        return results


def _chat_messages(messages: list[dict[str, Any]], images: list[Any] | None) -> list[dict[str, Any]]:
    """OpenAI chat messages: ``{"type": "image"}`` parts (and, when the messages have none, the first
    user message) get the request's images as base64 PNG data URLs, in order."""
    pending = list(images or [])
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for c in content:
                if c.get("type") == "image" and pending:
                    parts.append({"type": "image_url", "image_url": {"url": _data_url(pending.pop(0))}})
                elif c.get("type") == "text":
                    parts.append({"type": "text", "text": c["text"]})
            out.append({"role": m["role"], "content": parts})
        else:
            out.append({"role": m["role"], "content": content})
    if pending:  # images but no image part: in front of the first user message
        k = next(i for i, m in enumerate(out) if m["role"] == "user")
        text = out[k]["content"]
        parts = [{"type": "image_url", "image_url": {"url": _data_url(im)}} for im in pending]
        out[k] = {"role": "user", "content": parts + ([{"type": "text", "text": text}] if isinstance(text, str)
                                                      else text)}
    return out


#: leading bytes of the encodings an image column holds, for the data URL's media type
_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG", "image/png"), (b"GIF8", "image/gif"),
          (b"RIFF", "image/webp"))


def _data_url(image: Any) -> str:
    """A data URL of an image: encoded bytes are sent as they are (no re-encoding of a JPEG), PIL
    images as PNG."""
    if isinstance(image, dict) and image.get("bytes"):  # a datasets Image struct
        image = image["bytes"]
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
        mime = next((m for magic, m in _MAGIC if data.startswith(magic)), "image/png")
    else:  # PIL
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64," + base64.b64encode(data).decode()

