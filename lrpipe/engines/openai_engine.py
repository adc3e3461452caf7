"""openai engine: any OpenAI-compatible server (for example ``vllm serve`` on a cluster node).

Uses the *completions* endpoint, because Magpie and base-model translation need raw prompts, not chat
messages; prompts are sent as token ids when the stage has them (vLLM accepts them), so the pre-query
template reaches the model byte for byte. Up to ``max_concurrency`` requests are in flight at once
(threads over the standard library's HTTP client: no extra dependency on login nodes), fed lazily from
the request iterator so the server's batch stays full. Structured output uses vLLM's
``structured_outputs`` request field; per-request ``seed`` is passed through.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from lrpipe.engines.base import Engine, GenRequest, GenResult, ScoreRequest, ScoreResult, pull

log = logging.getLogger(__name__)


class OpenAIEngine(Engine):
    name = "openai"

    def __init__(self, model: str, *, base_url: str = "http://127.0.0.1:8000/v1", api_key: str | None = None,
                 max_concurrency: int = 64, timeout: float = 600.0, served_model: str | None = None,
                 tokenizer: str | None = None, retries: int = 3) -> None:
        super().__init__(model)
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.served_model = served_model or model
        self.tokenizer_path = tokenizer or model
        self.retries = retries

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        return self._tokenizer

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.model, "base_url": self.base_url,
                "served_model": self.served_model, "max_concurrency": self.max_concurrency}

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.retries):
            req = urllib.request.Request(f"{self.base_url}{path}", data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:500]
                if e.code < 500:  # the request itself is wrong: retrying will not help
                    raise RuntimeError(f"HTTP {e.code}: {detail}") from e
                last = RuntimeError(f"HTTP {e.code}: {detail}")
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = e
            time.sleep(min(2 ** attempt, 30))
        raise RuntimeError(f"server at {self.base_url} failed after {self.retries} tries: {last}")

    def _one(self, r: GenRequest) -> GenResult:
        if r.images:  # the completions endpoint takes no images
            return self._text_only(r)
        s = r.sampling
        body: dict[str, Any] = {"model": self.served_model, "prompt": r.prompt, "temperature": s.temperature,
                                "top_p": s.top_p, "max_tokens": s.max_tokens, "n": 1}
        if s.seed is not None:
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = list(s.stop)
        if s.stop_token_ids:
            body["stop_token_ids"] = list(s.stop_token_ids)
        if s.repetition_penalty != 1.0:
            body["repetition_penalty"] = s.repetition_penalty
        if s.json_schema is not None:
            body["structured_outputs"] = {"json": s.json_schema}
        try:
            out = self._post("/completions", body)
            choice = out["choices"][0]
            usage = out.get("usage") or {}
            return GenResult(key=r.key, text=choice.get("text", ""), finish_reason=choice.get("finish_reason") or "stop",
                             prompt_tokens=int(usage.get("prompt_tokens", 0)),
                             output_tokens=int(usage.get("completion_tokens", 0)))
        except Exception as e:
            log.warning("request %r failed: %s", r.key, e)
            return GenResult(key=r.key, text="", finish_reason="error", prompt_tokens=0, output_tokens=0,
                             error=f"{type(e).__name__}: {e}")

    def generate(self, requests: Iterable[GenRequest]) -> Iterator[GenResult]:
        it = iter(requests)
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            running: set[Future[GenResult]] = set()
            exhausted = False
            while True:
                if not exhausted and len(running) < self.max_concurrency:
                    chunk, exhausted = pull(it, self.max_concurrency - len(running))
                    running.update(pool.submit(self._one, r) for r in chunk)
                if not running:
                    if exhausted:
                        return
                    continue
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
