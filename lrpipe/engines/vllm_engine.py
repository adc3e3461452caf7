"""vLLM engine: offline ``vllm.LLM``, fed continuously.

``LLM.generate(list)`` waits for the slowest request of the list before returning, so a stage that
calls it on small batches leaves the GPU idle at the tail of every batch. Instead we keep up to
``max_inflight`` requests queued in the engine (``LLM.enqueue``), drive ``llm_engine.step()``
ourselves, yield each request as soon as it finishes and top the queue up from the (lazy) request
iterator, so the scheduler always has work waiting and memory stays bounded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

from lrpipe.engines.base import Engine, GenRequest, GenResult, Sampling, ScoreRequest, ScoreResult, pull
from lrpipe.engines.hf import cpu_supports_bf16

log = logging.getLogger(__name__)


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return True


class VLLMEngine(Engine):
    name = "vllm"
    supports_images = True

    def __init__(self, model: str, *, tensor_parallel_size: int = 1, dtype: str = "auto",
                 max_model_len: int | None = None, gpu_memory_utilization: float | None = None,
                 enable_prefix_caching: bool = True, enforce_eager: bool | None = None,
                 max_num_seqs: int | None = None, max_inflight: int | None = None, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(model)
        # vLLM logs every engine detail at INFO; a two-day job's log should show our progress. The
        # user's own VLLM_LOGGING_LEVEL wins.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        if os.environ.get("PIPE_VERBOSE") == "1":  # `pipe --verbose`: vLLM's throughput and cache stats too
            kwargs.setdefault("disable_log_stats", False)
        cpu = _on_cpu()
        if cpu:
            # vLLM's CPU backend reserves a core for the frontend by default; on small machines the
            # model runner is the bottleneck, so bind OpenMP to every core (measured: 209 vs 123 tok/s
            # on 2 cores). The user's own settings win.
            n = os.cpu_count() or 1
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{n - 1}")
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
            if dtype == "auto":
                dtype = "bfloat16" if cpu_supports_bf16() else "float32"
            if enforce_eager is None:
                enforce_eager = True  # torch.compile warm-up costs minutes on CPU for no gain on small models
            # vLLM's CPU runner rewinds a request's torch.Generator when a chunked prefill step discards
            # its sample, which CPU generators cannot do ("CPU Generator does not use offset"): every
            # seeded request would crash the engine. Whole-prompt prefill avoids the rewind.
            kwargs.setdefault("enable_chunked_prefill", False)
            kwargs.setdefault("max_num_batched_tokens", max(8192, max_model_len or 0))
        # JSON under a schema without free whitespace between its tokens: a small model otherwise fills a
        # constrained output with newlines until max_tokens; every JSON pipe asks for is read, not shown
        if "structured_outputs_config" not in kwargs:
            from vllm.config import StructuredOutputsConfig

            kwargs["structured_outputs_config"] = StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True)
        from vllm import LLM

        args: dict[str, Any] = dict(model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                                    enable_prefix_caching=enable_prefix_caching, seed=seed, **kwargs)
        if max_model_len:
            args["max_model_len"] = max_model_len
        if gpu_memory_utilization is not None:
            args["gpu_memory_utilization"] = gpu_memory_utilization
        if enforce_eager is not None:
            args["enforce_eager"] = enforce_eager
        if max_num_seqs:
            args["max_num_seqs"] = max_num_seqs
        self.args = args
        self.llm = LLM(**args)
        sched = self.llm.llm_engine.vllm_config.scheduler_config
        self.max_num_seqs = sched.max_num_seqs
        # Keep twice the running batch queued: the scheduler always has the next requests at hand.
        self.max_inflight = max_inflight or 2 * self.max_num_seqs
        self._tokenizer = self.llm.get_tokenizer()

    def close(self) -> None:
        """Stop the engine-core process now (not at interpreter exit, when logging is already gone)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # pragma: no cover - best effort
            log.debug("engine shutdown failed", exc_info=True)
        self.llm = None

    @property
    def context_length(self) -> int | None:
        return int(self.llm.llm_engine.model_config.max_model_len) if self.llm is not None else None

    def describe(self) -> dict[str, Any]:
        d = {"engine": self.name, "model": self.model}
        d.update({k: v for k, v in self.args.items() if k not in ("model", "structured_outputs_config")})
        d["json_whitespace"] = not self.args["structured_outputs_config"].disable_any_whitespace
        return d

    # ------------------------------------------------------------------ helpers
    def _params(self, s: Sampling, **extra: Any) -> Any:
        from vllm import SamplingParams

        kw: dict[str, Any] = dict(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                                  seed=s.seed, repetition_penalty=s.repetition_penalty)
        if s.stop:
            kw["stop"] = list(s.stop)
        if s.stop_token_ids:
            kw["stop_token_ids"] = list(s.stop_token_ids)
        if s.json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            kw["structured_outputs"] = StructuredOutputsParams(json=s.json_schema)
        kw.update(extra)
        return SamplingParams(**kw)

    @staticmethod
    def _prompt(r: GenRequest) -> Any:
        """vLLM's prompt dict: text or token ids, plus ``multi_modal_data`` when the request has images
        (vLLM's processor expands each image placeholder into the model's patch tokens)."""
        p: dict[str, Any] = {"prompt": r.prompt} if isinstance(r.prompt, str) else {"prompt_token_ids": list(r.prompt)}
        if r.images:
            p["multi_modal_data"] = {"image": r.images[0] if len(r.images) == 1 else list(r.images)}
        return p

    def _enqueue(self, chunk: list[GenRequest]) -> tuple[list[tuple[str, GenRequest]], list[GenResult]]:
        """Queue a chunk; if the chunk is refused (one bad prompt), queue one by one and turn the bad
        ones into error results instead of failing the run."""
        try:
            ids = self.llm.enqueue([self._prompt(r) for r in chunk],
                                   [self._params(r.sampling) for r in chunk], use_tqdm=False)
            return list(zip(ids, chunk)), []
        except Exception:
            if len(chunk) == 1:
                raise
        ok: list[tuple[str, GenRequest]] = []
        errors: list[GenResult] = []
        for r in chunk:
            try:
                ok.extend(self._enqueue([r])[0])
            except Exception as e:
                log.warning("request %r refused by vLLM: %s", r.key, e)
                errors.append(GenResult(key=r.key, text="", finish_reason="error", prompt_tokens=0,
                                        output_tokens=0, error=f"{type(e).__name__}: {e}"))
        return ok, errors

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Iterable[GenRequest]) -> Iterator[GenResult]:
        it = iter(requests)
        pending: dict[str, GenRequest] = {}
        # ``enqueue`` returns vLLM's internal ids ("<external>-<random suffix>") while outputs carry the
        # external id; keep both spellings so either finds the request.
        alias: dict[str, str] = {}
        engine = self.llm.llm_engine
        refill_below = max(1, (3 * self.max_inflight) // 4)
        try:
            yield from self._drive(it, pending, alias, engine, refill_below)
        finally:
            # The consumer stopped early (an exception in the stage, Ctrl-C): abort what is still
            # queued, so the next call does not pay for orphaned requests.
            if pending:
                try:
                    engine.abort_request(list(pending), internal=True)
                except Exception:  # pragma: no cover - best effort
                    log.warning("could not abort %d pending requests", len(pending))

    def _drive(self, it: Iterator[GenRequest], pending: dict[str, GenRequest], alias: dict[str, str],
               engine: Any, refill_below: int) -> Iterator[GenResult]:
        exhausted = False
        while True:
            if not exhausted and len(pending) < refill_below:
                chunk, exhausted = pull(it, self.max_inflight - len(pending))
                if chunk:
                    queued, errors = self._enqueue(chunk)
                    pending.update(queued)
                    for rid, _ in queued:
                        alias[rid.rsplit("-", 1)[0]] = rid
                    yield from errors
            if not pending:
                if exhausted:
                    return
                continue
            if not engine.has_unfinished_requests():
                # The engine lost requests (should not happen): report them instead of spinning forever.
                for req in pending.values():
                    yield GenResult(key=req.key, text="", finish_reason="error", prompt_tokens=0,
                                    output_tokens=0, error="request lost by the engine")
                pending.clear()
                alias.clear()
                continue
            for out in engine.step():
                if not out.finished:
                    continue
                rid = out.request_id if out.request_id in pending else alias.get(out.request_id, out.request_id)
                alias.pop(rid.rsplit("-", 1)[0], None)
                req = pending.pop(rid, None)
                if req is None:  # pragma: no cover - not ours
                    continue
                c = out.outputs[0]
                reason = c.finish_reason or "stop"
                if reason == "abort":
                    reason = "error"
                yield GenResult(key=req.key, text=c.text, finish_reason=reason,
                                prompt_tokens=len(out.prompt_token_ids or []), output_tokens=len(c.token_ids),
                                token_ids=list(c.token_ids),
                                error=None if reason != "error" else "aborted by the engine")

    # ------------------------------------------------------------------ scoring
    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        from vllm import SamplingParams

        pairs = [self._split_score(r) for r in requests]
        prompts = [{"prompt_token_ids": c + k} for c, k in pairs]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for r, (ctx, cont), out in zip(requests, pairs, outs):
            lps = out.prompt_logprobs or []
            total, greedy, first = 0.0, True, max(len(ctx), 1)
            ids = ctx + cont
            for pos in range(first, len(ids)):
                entry = lps[pos][ids[pos]]
                total += entry.logprob
                greedy = greedy and entry.rank == 1
            results.append(ScoreResult(key=r.key, logprob=total, is_greedy=greedy, num_tokens=len(ids) - first))
        return results
