"""Shared fixtures. Engines are started once per session: CI has 2 cores and 90 minutes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIPE = [sys.executable, "-m", "lrpipe.cli"]


@pytest.fixture(scope="session")
def model_path() -> str:
    from lrpipe.models import prepare_embedded_model

    return str(prepare_embedded_model())


@pytest.fixture(scope="session")
def tokenizer(model_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


@pytest.fixture(scope="session")
def hf_engine(model_path: str):
    from lrpipe.engines.hf import TransformersEngine

    return TransformersEngine(model_path, batch_size=8)


@pytest.fixture(scope="session")
def vllm_engine(model_path: str):
    pytest.importorskip("vllm", reason="vLLM is part of the install (scripts/install.sh); not importable here")
    from lrpipe.engines.vllm_engine import VLLMEngine

    eng = VLLMEngine(model_path, gpu_memory_utilization=0.15, max_model_len=2048)
    yield eng
    eng.close()


@pytest.fixture()
def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONUNBUFFERED"] = "1"
    return e
