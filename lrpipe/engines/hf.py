"""transformers engine: batched decoding with left padding, for machines without vLLM and for tests.

Why a small decode loop of our own instead of ``model.generate``: ``generate`` samples a whole batch
from one global RNG with one temperature and top_p, but our contract is one ``Sampling`` per request
with its own seed (the same batch run twice gives the same samples, different seeds differ). A request
alone and inside a batch of another size may differ: another batch shape takes other matmul kernels and
the logits differ in their last bits (README: "Reproducible"). The loop below is the same computation
``generate`` does (left-padded prefill, KV cache, one token per step) with per-row temperature,
top_p, seed, stop tokens, stop strings, max_tokens and an optional JSON-schema constraint (outlines).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from lrpipe.engines.base import WAIT, Engine, GenRequest, GenResult, Sampling, ScoreRequest, ScoreResult

log = logging.getLogger(__name__)

_NO_GROUP = object()


def cpu_supports_bf16() -> bool:
    """bf16 is emulated (several times slower) on CPUs without AVX512-BF16 or AMX, and so it is where the
    kernels are held below them (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``, as
    ``scripts/test-elsewhere.sh`` does to run like an AVX2 machine; vLLM's bf16 kernels then stop on an
    illegal instruction): float32 there."""
    import os

    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    held_down = aten in ("default", "avx", "avx2") or (
        onednn not in ("", "ALL", "DEFAULT") and "BF16" not in onednn and "AMX" not in onednn)
    if held_down:
        return False
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, model: str, *, batch_size: int = 16, dtype: str = "auto", device: str | None = None,
                 max_model_len: int | None = None) -> None:
        super().__init__(model)
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            if self.device.startswith("cuda"):
                tdtype = torch.bfloat16
            else:
                tdtype = torch.bfloat16 if cpu_supports_bf16() else torch.float32
        else:
            tdtype = getattr(torch, dtype)
        self.dtype = tdtype
        self.batch_size = batch_size
        self._processor = None
        if is_vision_model(model):
            # an image-text-to-text model (LLaVA-style): the processor expands each image placeholder of
            # a prompt into the model's image tokens and makes the pixel values for the prefill
            from transformers import AutoModelForImageTextToText, AutoProcessor

            self.supports_images = True
            self._processor = AutoProcessor.from_pretrained(model)
            self._tokenizer = self._processor.tokenizer
            self.hf_model = AutoModelForImageTextToText.from_pretrained(model, dtype=tdtype).to(self.device).eval()
            text_cfg = getattr(self.hf_model.config, "text_config", self.hf_model.config)
        else:
            self.hf_model = AutoModelForCausalLM.from_pretrained(model, dtype=tdtype).to(self.device).eval()
            text_cfg = self.hf_model.config
        self.max_model_len = max_model_len or getattr(text_cfg, "max_position_embeddings", 8192)
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self._json_cache: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.model, "dtype": str(self.dtype).replace("torch.", ""),
                "device": self.device, "batch_size": self.batch_size}

    # ------------------------------------------------------------------ generation
    @property
    def context_length(self) -> int | None:
        return int(self.max_model_len)

    @property
    def processor(self) -> Any:
        if self._processor is None:
            return super().processor
        return self._processor

    def generate(self, requests: Iterable[GenRequest]) -> Iterator[GenResult]:
        batch: list[GenRequest] = []
        group: Any = _NO_GROUP
        for req in requests:
            if req is WAIT:  # the stream waits for results: run what we hold
                if batch:
                    yield from self._run_batch(batch)
                    batch = []
                continue
            if req.images and not self.supports_images:
                yield self._text_only(req)
                continue
            # a batch holds requests of one unit, all with images or all without
            if batch and (len(batch) >= self.batch_size or req.group != group
                          or bool(req.images) != bool(batch[0].images)):
                yield from self._run_batch(batch)
                batch = []
            group = req.group
            batch.append(req)
        if batch:
            yield from self._run_batch(batch)

    def _encode(self, prompt: list[int] | str) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt)["input_ids"])
        return list(prompt)

    def _run_batch(self, reqs: list[GenRequest]) -> list[GenResult]:
        try:
            with self.torch.inference_mode():
                return self._decode(reqs)
        except Exception as e:  # one bad request must not take the batch's siblings down with it
            if len(reqs) > 1:
                out: list[GenResult] = []
                for r in reqs:
                    out.extend(self._run_batch([r]))
                return out
            log.warning("request %r failed: %s", reqs[0].key, e)
            return [GenResult(key=reqs[0].key, text="", finish_reason="error", prompt_tokens=0,
                              output_tokens=0, error=f"{type(e).__name__}: {e}")]

    def _decode(self, reqs: list[GenRequest]) -> list[GenResult]:
        torch = self.torch
        pixels = None
        if reqs[0].images:
            prompts, pixels = self._with_images(reqs)
        else:
            prompts = [self._encode(r.prompt) for r in reqs]
        for r, p in zip(reqs, prompts):
            if not p:
                raise ValueError(f"request {r.key!r}: empty prompt")
            if len(p) >= self.max_model_len:
                raise ValueError(f"request {r.key!r}: prompt of {len(p)} tokens exceeds max_model_len "
                                 f"{self.max_model_len}")
        B = len(reqs)
        ids, mask, pos = self._left_padded(prompts)
        extra = {"pixel_values": pixels} if pixels is not None else {}
        out = self.hf_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **extra)
        past = out.past_key_values
        logits = out.logits[:, -1, :]

        gens = []
        for r in reqs:
            g = torch.Generator(device="cpu")
            g.manual_seed(r.sampling.seed if r.sampling.seed is not None else int(torch.randint(0, 2**62, ()).item()))
            gens.append(g)
        eos = self.tokenizer.eos_token_id
        stop_ids = [set(r.sampling.stop_token_ids) | ({eos} if eos is not None else set()) for r in reqs]
        limits = [min(r.sampling.max_tokens, self.max_model_len - len(p)) for r, p in zip(reqs, prompts)]
        constraints = [self._constraint(r.sampling.json_schema) if r.sampling.json_schema else None
                       for r in reqs]
        out_ids: list[list[int]] = [[] for _ in reqs]
        finish: list[str | None] = [None] * B
        texts: list[str | None] = [None] * B
        last_pos = pos[:, -1:]
        for _step in range(max(limits)):
            next_tokens = []
            for i, r in enumerate(reqs):
                if finish[i] is not None:
                    next_tokens.append(self.pad_id)
                    continue
                next_tokens.append(self._pick(logits[i].float(), r.sampling, out_ids[i], constraints[i], gens[i]))
            for i, t in enumerate(next_tokens):
                if finish[i] is not None:
                    continue
                if t in stop_ids[i]:
                    finish[i] = "stop"
                    continue
                out_ids[i].append(t)
                finish[i], texts[i] = self._end(out_ids[i], reqs[i].sampling, constraints[i], limits[i])
            if all(f is not None for f in finish):
                break
            step = torch.tensor(next_tokens, dtype=torch.long, device=self.device).unsqueeze(1)
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=mask.device)], dim=1)
            last_pos = last_pos + 1
            out = self.hf_model(input_ids=step, attention_mask=mask, position_ids=last_pos,
                                past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1, :]
        results = []
        for i, r in enumerate(reqs):
            text = texts[i] if texts[i] is not None else self.tokenizer.decode(out_ids[i], skip_special_tokens=True)
            results.append(GenResult(key=r.key, text=text, finish_reason=finish[i] or "length",
                                     prompt_tokens=len(prompts[i]), output_tokens=len(out_ids[i]),
                                     token_ids=out_ids[i]))
        return results

    def _with_images(self, reqs: list[GenRequest]) -> tuple[list[list[int]], Any]:
        """Token ids of prompts with image placeholders, each expanded by the processor into the model's
        image tokens, and the batch's pixel values (the images of every request, in order)."""
        prompts, images = [], []
        for r in reqs:
            if not isinstance(r.prompt, str):
                raise ValueError(f"request {r.key!r}: a prompt with images must be text with the image placeholder")
            enc = self.processor(text=[r.prompt], images=list(r.images or []), return_tensors="pt")
            prompts.append(enc["input_ids"][0].tolist())
            images.append(enc["pixel_values"])
        return prompts, self.torch.cat(images).to(self.device, self.dtype)

    def _left_padded(self, prompts: list[list[int]]) -> tuple[Any, Any, Any]:
        """Token ids, attention mask and positions of a batch, left-padded so every row ends together."""
        torch = self.torch
        B, L = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, L - len(p):] = torch.tensor(p)
            mask[i, L - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    def _pick(self, row: Any, s: Sampling, out_ids: list[int], constraint: Any, gen: Any) -> int:
        """The next token of one sequence: repetition penalty, JSON constraint, then sampling."""
        torch = self.torch
        if s.repetition_penalty != 1.0 and out_ids:
            seen = torch.tensor(sorted(set(out_ids)), device=row.device)
            vals = row[seen]
            row[seen] = torch.where(vals > 0, vals / s.repetition_penalty, vals * s.repetition_penalty)
        if constraint is not None:
            row = constraint.apply(out_ids, row)
        return _sample(torch, row, s.temperature, s.top_p, gen)

    def _end(self, out_ids: list[int], s: Sampling, constraint: Any, limit: int) -> tuple[str | None, str | None]:
        """After a token: ``(finish reason or None, text cut at a stop string or None)``."""
        if s.stop:
            text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
            hit = [text.find(x) for x in s.stop if x in text]
            if hit:
                return "stop", text[:min(hit)]
        if constraint is not None and constraint.is_finished(out_ids):
            return "stop", None
        return ("length" if len(out_ids) >= limit else None), None

    def _constraint(self, schema: dict[str, Any]) -> Any:
        from lrpipe.engines.json_constraint import JsonConstraint

        return JsonConstraint(self.tokenizer, schema, cache=self._json_cache)

    # ------------------------------------------------------------------ scoring
    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        torch = self.torch
        results: list[ScoreResult] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            pairs = [self._split_score(r) for r in chunk]
            seqs = [c + k for c, k in pairs]
            L = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), L), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(seqs):
                ids[i, :len(s)] = torch.tensor(s)
                mask[i, :len(s)] = 1
            with torch.inference_mode():
                logits = self.hf_model(input_ids=ids.to(self.device),
                                       attention_mask=mask.to(self.device)).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            for i, (r, (ctx, cont)) in enumerate(zip(chunk, pairs)):
                # position t-1 predicts token t; with an empty context the first token is unscored
                first = max(len(ctx), 1)
                positions = torch.arange(first - 1, len(ctx) + len(cont) - 1)
                targets = ids[i, first:len(ctx) + len(cont)]
                lp = logp[i, positions, targets].sum().item()
                greedy = bool((logp[i, positions].argmax(-1).cpu() == targets).all().item())
                results.append(ScoreResult(key=r.key, logprob=lp, is_greedy=greedy, num_tokens=len(targets)))
        return results


def is_vision_model(path: str) -> bool:
    """Whether the model folder holds an image-text-to-text model (its config has a vision part)."""
    import json
    import os

    cfg = os.path.join(path, "config.json")
    if not os.path.exists(cfg):
        return False
    with open(cfg) as fh:
        return "vision_config" in json.load(fh)


def _sample(torch: Any, logits: Any, temperature: float, top_p: float, gen: Any) -> int:
    if temperature <= 0:
        return int(logits.argmax().item())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sp, si = probs.sort(descending=True)
        keep = (sp.cumsum(-1) - sp) < top_p
        keep[0] = True
        sp = torch.where(keep, sp, torch.zeros_like(sp))
        choice = torch.multinomial(sp.cpu(), 1, generator=gen).item()
        return int(si[choice].item())
    return int(torch.multinomial(probs.cpu(), 1, generator=gen).item())
