"""One small interface over inference engines (README: "Engines").

A stage hands the engine an *iterable* of :class:`GenRequest` and receives :class:`GenResult` objects
as they finish, in any order, matched by ``key``. The iterable is consumed lazily: the engine pulls
new requests whenever it has room, so it is never left idle between small synchronous batches and
memory stays bounded on millions of rows. Batching, scheduling and prefix caching are the engine's
job; a stage never batches, sleeps or polls (the vLLM offline API is the model for this surface).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of one request. ``seed`` is per request: identical seeds give identical
    samples, so every request carries its own (derived deterministically from its id)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    json_schema: dict[str, Any] | None = None
    repetition_penalty: float = 1.0


@dataclass
class GenRequest:
    """A completion request. ``prompt`` is token ids (preferred: the stage renders the chat template
    and tokenizes without adding special tokens twice) or text. ``group`` names the work unit the
    request belongs to; engines that batch synchronously never mix groups in a batch, so a resumed
    run forms the same batches as an uninterrupted one (bit-identical output on CPU)."""

    key: Any
    prompt: list[int] | str
    sampling: Sampling
    group: Any = None
    # Images (PIL) for a multimodal model; the prompt already holds the model's image placeholder once
    # per image (rendered through the processor's chat template), which the engine expands.
    images: list[Any] | None = None
    # The conversation the prompt was rendered from, for engines that take messages rather than a
    # rendered prompt (an OpenAI-compatible chat endpoint); content may hold {"type": "image"} parts.
    messages: list[dict[str, Any]] | None = None


@dataclass
class GenResult:
    key: Any
    text: str
    finish_reason: str  # "stop" | "length" | "error"
    prompt_tokens: int
    output_tokens: int
    token_ids: list[int] = field(default_factory=list)
    error: str | None = None


@dataclass
class ScoreRequest:
    """Log-likelihood of ``continuation`` given ``context`` (both token ids or both text)."""

    key: Any
    context: list[int] | str
    continuation: list[int] | str


@dataclass
class ScoreResult:
    key: Any
    logprob: float
    is_greedy: bool
    num_tokens: int


class Wait:
    """The request stream's "nothing to submit now": results still to come may bring more requests
    (retries), so the engine runs what it holds instead of ending (see :meth:`Engine.generate`). One
    instance, :data:`WAIT`, compared with ``is``; not ``None``, which a buggy stream might yield by accident."""

    def __repr__(self) -> str:
        return "WAIT"


WAIT = Wait()


def pull(it: Iterator[GenRequest | Wait], n: int) -> tuple[list[GenRequest], bool]:
    """Up to ``n`` requests from a stream: (requests, exhausted). A :data:`WAIT` ends the pull early
    without exhausting the stream."""
    out: list[GenRequest] = []
    while len(out) < n:
        try:
            q = next(it)
        except StopIteration:
            return out, True
        if q is WAIT:
            return out, False
        out.append(q)
    return out, False


class Engine(abc.ABC):
    """Base class. Subclasses implement :meth:`generate` and :meth:`score`."""

    name: str = "engine"
    #: Whether requests may carry images (multimodal models). Stages check it before they start, so a
    #: text-only engine is refused up front instead of failing every request.
    supports_images: bool = False

    def __init__(self, model: str) -> None:
        self.model = model
        self._tokenizer = None

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer (chat template, special tokens)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        return self._tokenizer

    @property
    def processor(self) -> Any:
        """A multimodal model's processor (its chat template renders image placeholders)."""
        if getattr(self, "_processor", None) is None:
            from transformers import AutoProcessor

            self._processor = AutoProcessor.from_pretrained(self.model)
        return self._processor

    @abc.abstractmethod
    def generate(self, requests: Iterable[GenRequest | Wait]) -> Iterator[GenResult]:
        """Yield one result per request, as they finish. Never raises for a single bad request: that
        request gets ``finish_reason="error"`` and its message, so a stage can reject it and go on.

        The stream may yield :data:`WAIT`: nothing to submit now, but more requests may
        follow once results come back (retries that depend on earlier results). Engines then run what
        they hold and ask again; a stream must only wait while some of its requests are in flight."""

    @abc.abstractmethod
    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """Sum of log-probabilities of each continuation (for evaluation and multiple choice)."""

    @property
    def context_length(self) -> int | None:
        """Tokens the model accepts (prompt + output), when the engine knows it; stages size each
        request's ``max_tokens`` so prompt and output fit."""
        return None

    def describe(self) -> dict[str, Any]:
        """What went into the manifest's provenance."""
        return {"engine": self.name, "model": self.model}

    def close(self) -> None:  # noqa: B027 - optional hook; engines without resources to free keep it
        """Free the engine's resources (processes, memory)."""

    def _text_only(self, req: GenRequest) -> GenResult:
        """The error result a text-only engine gives a request with images."""
        return GenResult(key=req.key, text="", finish_reason="error", prompt_tokens=0, output_tokens=0,
                         error=f"engine {self.name} is text-only; requests with images need --engine vllm")

    def _split_score(self, req: ScoreRequest) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        if isinstance(req.context, str):
            ctx = tok(req.context, add_special_tokens=False)["input_ids"]
            cont = tok(req.continuation, add_special_tokens=False)["input_ids"]
        else:
            ctx, cont = list(req.context), list(req.continuation)
        if not cont:
            raise ValueError(f"score request {req.key!r}: empty continuation")
        return ctx, cont
