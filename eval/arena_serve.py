"""``pipe arena serve``: the community arena as the instruction study ran it.

People fill a short form (language, education, consent), type a prompt, read two anonymous models'
answers side by side as they stream, ask follow-ups, and vote per dimension (content, language,
overall; ties and "both bad" allowed); the names show only after the vote. Every model is an
OpenAI-compatible endpoint (``vllm serve``) called with the study's system prompt and sampling.

What the design guards, because the page faces the public:

* **Identities stay on the server.** A battle is an opaque id; which models it pits lives in the
  server's memory and store (:class:`ArenaService`), never in the page, in Gradio's state (kept
  server-side) or in any response before the vote. Endpoint errors are shown as a generic message
  (an exception text could carry a URL or a model name).
* **Answers are text.** Every answer is HTML-escaped before the chat component renders its Markdown,
  so ``<script>`` or ``<img onerror>`` in an answer shows as characters and runs nothing.
* **Limits**: prompt length, turns per battle, votes per participant; loopback unless told
  otherwise; an optional shared access token (header, cookie or ``?token=``); no access log (URLs
  may carry the token) and no participant data or API key in any log line.
* **Votes are never lost or doubled** (:mod:`lrpipe.eval.arena_store`); a battle an endpoint failed is
  recorded as failed, and the participant gets a new pair.
* **Balanced pairs**: each battle draws among the pairs with the fewest battles so far.

Besides the Gradio page, a small JSON API (``/api/...``) runs the same service for scripted clients
and the load test.
"""

from __future__ import annotations

import html
import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lrpipe.eval.arena_store import CHOICES, COLUMNS, ArenaStore, VoteError

log = logging.getLogger(__name__)


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="The name votes are recorded under (and shown after the vote).")
    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://gpu1:8000/v1 (vllm serve).")
    model: str = Field(description="The model id the endpoint serves.")
    api_key_env: str | None = Field(None, description="Environment variable holding the endpoint's key.")


class ParticipantForm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    languages: list[str] = ["Basque", "Spanish", "French", "English", "Other"]
    education: list[str] = ["Primary", "Secondary", "Vocational", "University", "Postgraduate", "Prefer not to say"]
    consent: str = ("I agree that my prompts, the answers and my votes are stored and may be released for research, "
                    "without my name.")


class ArenaConfig(BaseModel):
    """``arena.yaml``: the models and how the study served them."""

    model_config = ConfigDict(extra="forbid")
    name: str = "arena"
    title: str = "Which answer is better?"
    models: list[Endpoint]
    system_prompt: str | None = None
    temperature: float = Field(0.9, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(1024, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    dimensions: list[str] = ["content", "language", "overall"]
    store: str = "arena.sqlite"
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=0, le=65535)
    access_token_env: str | None = None
    prompt_chars: int = Field(4000, ge=1)
    turns: int = Field(8, ge=1)
    votes_per_participant: int = Field(200, ge=1)
    seed: int | None = None
    form: ParticipantForm = ParticipantForm()

    @model_validator(mode="after")
    def _check(self) -> ArenaConfig:
        names = [m.name for m in self.models]
        if len(names) < 2:
            raise ValueError("models: an arena needs at least two")
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must differ (got {names})")
        bad = [d for d in self.dimensions if d not in COLUMNS]
        if bad or not self.dimensions:
            raise ValueError(f"dimensions: each one of {', '.join(COLUMNS)} (got {self.dimensions})")
        return self


class ArenaError(Exception):
    """Something the participant should read (a limit, a failed endpoint): safe to show as it is."""


# ------------------------------------------------------------------------------------------ endpoints
def stream_chat(ep: Endpoint, messages: list[dict[str, str]], cfg: ArenaConfig) -> Iterator[str]:
    """The endpoint's answer as it is generated (OpenAI chat streaming; a server that answers in one
    JSON body gives one piece)."""
    import httpx

    key = os.environ.get(ep.api_key_env, "") if ep.api_key_env else ""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": ep.model, "messages": messages, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "max_tokens": cfg.max_tokens, "stream": True}
    with httpx.stream("POST", ep.base_url.rstrip("/") + "/chat/completions", json=body, headers=headers,
                      timeout=cfg.timeout_s) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
        if "text/event-stream" not in r.headers.get("content-type", ""):
            yield json.loads(r.read())["choices"][0]["message"]["content"] or ""
            return
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            delta = json.loads(data)["choices"][0].get("delta") or {}
            if delta.get("content"):
                yield delta["content"]


def both(streams: list[Iterator[str]]) -> Iterator[tuple[int, str | None, BaseException | None]]:
    """Run two answer streams side by side; yield ``(side, piece, error)`` as pieces arrive and
    ``(side, None, None)`` when a side ends."""
    q: queue.Queue = queue.Queue()

    def pump(side: int, it: Iterator[str]) -> None:
        try:
            for piece in it:
                q.put((side, piece, None))
            q.put((side, None, None))
        except BaseException as e:  # noqa: BLE001 - handed to the caller, who records the failure
            q.put((side, None, e))

    for i, it in enumerate(streams):
        threading.Thread(target=pump, args=(i, it), daemon=True).start()
    done = 0
    while done < len(streams):
        item = q.get()
        if item[1] is None:
            done += 1
        yield item


# ------------------------------------------------------------------------------------------ service
@dataclass
class _Battle:
    participant: str
    models: tuple[str, str]
    conv: list[list[dict[str, str]]] = field(default_factory=lambda: [[], []])
    turns: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.time)


STALE_S = 24 * 3600


def sanitize(text: str) -> str:
    """An answer as text to show: HTML escaped, so Markdown renders it and no tag becomes markup."""
    return html.escape(text, quote=False)


class ArenaService:
    """What the page and the JSON API share: sessions, pairs, answers, votes."""

    def __init__(self, cfg: ArenaConfig, store: ArenaStore) -> None:
        self.cfg = cfg
        self.store = store
        self.endpoints = {m.name: m for m in cfg.models}
        self.rng = random.Random(cfg.seed)
        self.battles: dict[str, _Battle] = {}
        self.lock = threading.Lock()

    def start(self, *, username: str | None, language: str | None, education: str | None, consent: bool) -> str:
        if not consent:
            raise ArenaError("Please read and accept the consent to take part.")
        return self.store.add_participant(username, language, education, consent)

    def new_battle(self, participant: str) -> str:
        if self.store.votes_by(participant) >= self.cfg.votes_per_participant:
            raise ArenaError("Thank you! You have reached the number of votes for one session.")
        with self.lock:
            # battles left without a vote (a closed tab) are forgotten after a day; they stay 'open' in the
            # store and never count as votes
            stale = [k for k, b in self.battles.items() if time.time() - b.started > STALE_S]
            for k in stale:
                self.battles.pop(k, None)
            counts = self.store.pair_counts(list(self.endpoints))
            pending: dict[tuple[str, str], int] = {}
            for b in self.battles.values():
                key = tuple(sorted(b.models))
                pending[key] = pending.get(key, 0) + 1
            load = {p: n + pending.get(p, 0) for p, n in counts.items()}
            least = min(load.values())
            pair = list(self.rng.choice(sorted(p for p, n in load.items() if n == least)))
            self.rng.shuffle(pair)
            bid = self.store.new_battle(participant, pair[0], pair[1])
            self.battles[bid] = _Battle(participant, (pair[0], pair[1]))
        return bid

    def _get(self, battle: str) -> _Battle:
        b = self.battles.get(battle)
        if b is None:
            raise ArenaError("This battle is over; start a new one.")
        return b

    def ask(self, battle: str, prompt: str) -> Iterator[tuple[str, str]]:
        """Send ``prompt`` to both models; yield both answers so far as they grow. An endpoint that
        fails ends the battle (recorded as failed) with a message for the participant."""
        b = self._get(battle)
        prompt = (prompt or "").strip()
        if not prompt:
            raise ArenaError("Type a prompt first.")
        if len(prompt) > self.cfg.prompt_chars:
            raise ArenaError(f"Prompts are limited to {self.cfg.prompt_chars} characters.")
        if not b.lock.acquire(blocking=False):
            raise ArenaError("Wait for both answers before sending another message.")
        try:
            if b.turns >= self.cfg.turns:
                raise ArenaError(f"A battle has at most {self.cfg.turns} turns: vote, then start a new one.")
            system = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []
            for c in b.conv:
                c.append({"role": "user", "content": prompt})
            streams = [stream_chat(self.endpoints[m], system + c, self.cfg) for m, c in zip(b.models, b.conv)]
            text = ["", ""]
            for side, piece, err in both(streams):
                if err is not None:
                    self._fail(battle, b, side, err)
                    raise ArenaError("One of the models could not answer. This battle is not counted; here is a "
                                     "new pair.")
                if piece:
                    text[side] += piece
                    yield text[0], text[1]
            for c, t in zip(b.conv, text):
                c.append({"role": "assistant", "content": t})
            b.turns += 1
            self.store.save_conversations(battle, b.conv[0], b.conv[1])
            yield text[0], text[1]
        finally:
            b.lock.release()

    def _fail(self, battle: str, b: _Battle, side: int, err: BaseException) -> None:
        # The log names the endpoint by its side, not its model or URL; no participant data.
        log.warning("battle %s: model %s failed (%s)", battle[:8], "AB"[side], type(err).__name__)
        self.store.fail(battle, f"side {'AB'[side]}: {type(err).__name__}: {err}")
        with self.lock:
            self.battles.pop(battle, None)

    def vote(self, battle: str, winners: dict[str, str]) -> dict[str, str]:
        """Record the vote (durable when this returns) and reveal the names."""
        b = self._get(battle)
        if b.turns == 0:
            raise ArenaError("Ask something first: a vote compares two answers.")
        unknown = [d for d in winners if d not in self.cfg.dimensions]
        if unknown:
            raise ArenaError(f"Unknown dimension {unknown[0]}.")
        missing = [d for d in self.cfg.dimensions if not winners.get(d)]
        if missing:
            raise ArenaError("Please vote on every question (" + ", ".join(missing) + ").")
        try:
            self.store.vote(battle, winners)
        except VoteError as e:
            raise ArenaError(str(e)) from e
        with self.lock:
            self.battles.pop(battle, None)
        return {"model_a": b.models[0], "model_b": b.models[1]}


# ------------------------------------------------------------------------------------------ web
LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "bothbad": "Both are bad"}
QUESTIONS = {"content": "Which answer is better in content?", "language": "Which answer is better in language?",
             "overall": "Which answer is better overall?"}


def build_ui(svc: ArenaService) -> Any:
    """The Gradio page: the form, then the battle (two chats, one prompt box, one vote per dimension)."""
    import gradio as gr

    cfg = svc.cfg
    theme = gr.themes.Base(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts
    with gr.Blocks(title=cfg.title, analytics_enabled=False, theme=theme) as demo:
        state = gr.State({})
        gr.Markdown(f"## {html.escape(cfg.title)}")
        with gr.Column(visible=True, elem_id="form") as form:
            username = gr.Textbox(label="Name or nickname (optional)", max_length=64, elem_id="username")
            language = gr.Dropdown(cfg.form.languages, label="Your first language", elem_id="language")
            education = gr.Dropdown(cfg.form.education, label="Education", elem_id="education")
            consent = gr.Checkbox(label=cfg.form.consent, elem_id="consent")
            start = gr.Button("Start", variant="primary", elem_id="start")
            form_msg = gr.Markdown(elem_id="form-msg")
        with gr.Column(visible=False, elem_id="arena") as arena:
            with gr.Row():
                chat_a = gr.Chatbot(label="Model A", elem_id="chat-a", height=360)
                chat_b = gr.Chatbot(label="Model B", elem_id="chat-b", height=360)
            prompt = gr.Textbox(label="Your prompt", lines=2, max_length=cfg.prompt_chars, elem_id="prompt")
            send = gr.Button("Send", variant="primary", elem_id="send")
            radios = [gr.Radio([(v, k) for k, v in LABELS.items()], label=QUESTIONS[d], elem_id=f"vote-{d}")
                      for d in cfg.dimensions]
            vote_btn = gr.Button("Vote", elem_id="vote")
            msg = gr.Markdown(elem_id="msg")
            again = gr.Button("New battle", elem_id="again")

        def do_start(u: str, lang: str, edu: str, ok: bool, st: dict) -> tuple:
            try:
                pid = svc.start(username=u, language=lang, education=edu, consent=ok)
                bid = svc.new_battle(pid)
            except ArenaError as e:
                return st, gr.update(), gr.update(), str(e)
            return {"participant": pid, "battle": bid}, gr.update(visible=False), gr.update(visible=True), ""

        start.click(do_start, [username, language, education, consent, state], [state, form, arena, form_msg])

        def do_send(text: str, st: dict, a: list, b: list) -> Iterator[tuple]:
            a, b = list(a or []), list(b or [])
            a.append({"role": "user", "content": sanitize(text or "")})
            b.append({"role": "user", "content": sanitize(text or "")})
            try:
                for ta, tb in svc.ask(st.get("battle", ""), text):
                    yield (a + [{"role": "assistant", "content": sanitize(ta)}],
                           b + [{"role": "assistant", "content": sanitize(tb)}], "", "", st)
            except ArenaError as e:
                new = dict(st)
                if "new pair" in str(e):
                    try:
                        new["battle"] = svc.new_battle(st["participant"])
                    except ArenaError as e2:
                        yield [], [], "", str(e2), new
                        return
                    yield [], [], "", str(e), new
                else:
                    yield a[:-1], b[:-1], text, str(e), new

        send.click(do_send, [prompt, state, chat_a, chat_b], [chat_a, chat_b, prompt, msg, state])

        def do_vote(st: dict, *choices: str) -> tuple:
            try:
                names = svc.vote(st.get("battle", ""), dict(zip(cfg.dimensions, choices)))
            except ArenaError as e:
                return str(e), st
            return (f"Thank you! **A** was **{html.escape(names['model_a'])}**, **B** was "
                    f"**{html.escape(names['model_b'])}**.", {**st, "battle": None})

        vote_btn.click(do_vote, [state, *radios], [msg, state])

        def do_again(st: dict) -> tuple:
            try:
                bid = svc.new_battle(st["participant"])
            except (ArenaError, KeyError) as e:
                return st, gr.update(), gr.update(), str(e), *[gr.update() for _ in radios]
            return {**st, "battle": bid}, [], [], "", *[None for _ in radios]

        again.click(do_again, [state], [state, chat_a, chat_b, msg, *radios])
    return demo


def build_app(svc: ArenaService, token: str | None = None) -> Any:
    """FastAPI: the JSON API and the Gradio page, behind the access token when one is set."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def access(request: Request, call_next: Any) -> Any:
        if token:
            given = (request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                     or request.cookies.get("arena_token") or request.query_params.get("token"))
            if given != token:
                return PlainTextResponse("access token required", status_code=401)
        response = await call_next(request)
        if token and request.query_params.get("token") == token:
            response.set_cookie("arena_token", token, httponly=True, samesite="strict")
        return response

    def _err(e: ArenaError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.post("/api/session")
    async def session(body: dict) -> Any:
        try:
            return {"participant": svc.start(username=body.get("username"), language=body.get("language"),
                                             education=body.get("education"), consent=bool(body.get("consent")))}
        except ArenaError as e:
            return _err(e)

    @app.post("/api/battle")
    async def battle(body: dict) -> Any:
        try:
            return {"battle": svc.new_battle(str(body.get("participant", "")))}
        except ArenaError as e:
            return _err(e)

    @app.post("/api/battle/{bid}/message")
    def message(bid: str, body: dict) -> Any:  # sync: runs in the thread pool while the models answer
        try:
            a = b = ""
            for a, b in svc.ask(bid, str(body.get("prompt", ""))):  # noqa: B007 - the last pair is the answer
                pass
            return {"a": a, "b": b}
        except ArenaError as e:
            return _err(e)

    @app.post("/api/battle/{bid}/vote")
    async def vote(bid: str, body: dict) -> Any:
        try:
            return svc.vote(bid, {k: str(v) for k, v in body.items()})
        except ArenaError as e:
            return _err(e)

    @app.get("/api/health")
    async def health() -> Any:
        return {"ok": True}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Any:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    import gradio as gr

    demo = build_ui(svc)
    demo.queue(default_concurrency_limit=64)
    return gr.mount_gradio_app(app, demo, path="/", show_api=False) if _takes_show_api(gr) else \
        gr.mount_gradio_app(app, demo, path="/")


def _takes_show_api(gr: Any) -> bool:
    import inspect

    return "show_api" in inspect.signature(gr.mount_gradio_app).parameters


def load_config(path: str | Path) -> ArenaConfig:
    from lrpipe.config_files import load

    return load(ArenaConfig, path, None, kind="arena config")


def serve(cfg: ArenaConfig, *, host: str | None = None, port: int | None = None, store: str | None = None,
          ready: Any = None) -> None:
    """Run the arena until interrupted."""
    import uvicorn

    token = os.environ.get(cfg.access_token_env) if cfg.access_token_env else None
    if cfg.access_token_env and not token:
        raise ArenaError(f"access_token_env: ${cfg.access_token_env} is not set")
    svc = ArenaService(cfg, ArenaStore(store or cfg.store))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = build_app(svc, token)
    config = uvicorn.Config(app, host=host or cfg.host, port=cfg.port if port is None else port, log_level="warning",
                            access_log=False)
    server = uvicorn.Server(config)
    if ready is not None:
        ready(server)
    server.run()


__all__ = ["ArenaConfig", "ArenaService", "ArenaStore", "CHOICES", "build_app", "serve"]
