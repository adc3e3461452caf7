"""Engines behind one interface (see :mod:`lrpipe.engines.base`), chosen by ``--engine``."""

from __future__ import annotations

from typing import Any

from lrpipe.engines.base import Engine, GenRequest, GenResult, Sampling, ScoreRequest, ScoreResult

__all__ = ["Engine", "GenRequest", "GenResult", "Sampling", "ScoreRequest", "ScoreResult", "make_engine",
           "ENGINES"]

ENGINES = ("vllm", "transformers", "openai")


def default_engine() -> str:
    from lrpipe.engines.vllm_engine import vllm_available

    return "vllm" if vllm_available() else "transformers"


def make_engine(name: str | None, model: str, **options: Any) -> Engine:
    """Build an engine. Options that an engine does not take are ignored, so one CLI can pass them all."""
    name = name or default_engine()
    opts = {k: v for k, v in options.items() if v is not None}
    if name == "vllm":
        from lrpipe.engines.vllm_engine import VLLMEngine

        keep = {"tensor_parallel_size", "pipeline_parallel_size", "dtype", "max_model_len", "gpu_memory_utilization",
                "enforce_eager", "max_num_seqs", "max_inflight", "seed", "enable_prefix_caching", "limit_mm_per_prompt"}
        return VLLMEngine(model, **{k: v for k, v in opts.items() if k in keep})
    if name == "transformers":
        from lrpipe.engines.hf import TransformersEngine

        keep = {"batch_size", "dtype", "device", "max_model_len"}
        return TransformersEngine(model, **{k: v for k, v in opts.items() if k in keep})
    if name == "openai":
        from lrpipe.engines.openai_engine import OpenAIEngine

        keep = {"base_url", "api_key", "max_concurrency", "timeout", "served_model", "tokenizer", "api",
                "json_format"}
        return OpenAIEngine(model, **{k: v for k, v in opts.items() if k in keep})
    raise ValueError(f"unknown engine '{name}'; choose one of {', '.join(ENGINES)}")
