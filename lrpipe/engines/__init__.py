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


#: what each engine's constructor takes (make_engine passes each engine its own)
ENGINE_OPTIONS: dict[str, frozenset[str]] = {
    "vllm": frozenset({"tensor_parallel_size", "pipeline_parallel_size", "dtype", "max_model_len",
                       "gpu_memory_utilization", "enforce_eager", "max_num_seqs", "max_inflight", "seed",
                       "enable_prefix_caching", "limit_mm_per_prompt"}),
    "transformers": frozenset({"batch_size", "dtype", "device", "max_model_len"}),
    "openai": frozenset({"base_url", "api_key", "max_concurrency", "timeout", "served_model", "tokenizer", "api",
                         "json_format"}),
}


def make_engine(name: str | None, model: str, **options: Any) -> Engine:
    """Build an engine. One command line carries the options of every engine, so an option another
    engine takes is left out here; an option no engine takes is a mistake, refused by name."""
    name = name or default_engine()
    if name not in ENGINE_OPTIONS:
        raise ValueError(f"unknown engine '{name}'; choose one of {', '.join(ENGINES)}")
    known = set().union(*ENGINE_OPTIONS.values())
    unknown = sorted(k for k in options if k not in known)
    if unknown:
        raise ValueError(f"make_engine: no engine takes {', '.join(unknown)} (vllm: "
                         f"{', '.join(sorted(ENGINE_OPTIONS['vllm']))}; transformers: "
                         f"{', '.join(sorted(ENGINE_OPTIONS['transformers']))}; openai: "
                         f"{', '.join(sorted(ENGINE_OPTIONS['openai']))})")
    opts = {k: v for k, v in options.items() if v is not None and k in ENGINE_OPTIONS[name]}
    if name == "vllm":
        from lrpipe.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, **opts)
    if name == "transformers":
        from lrpipe.engines.hf import TransformersEngine

        return TransformersEngine(model, **opts)
    from lrpipe.engines.openai_engine import OpenAIEngine

    return OpenAIEngine(model, **opts)
