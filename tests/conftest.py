"""Shared fixtures. Engines are started once per session: CI has 2 cores and 90 minutes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIPE = [sys.executable, "-m", "lrpipe.cli"]
#: the seed of the Magpie runs the tests sample (the session's ``magpie_run`` and the CLI runs of
#: test_magpie): ``scripts/test-elsewhere.sh`` sets another one, with other CPU kernels, so that a test
#: resting on what the model happened to sample here fails before it lands
SAMPLE_SEED = int(os.environ.get("PIPE_TEST_SEED", "0"))


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


# a caption-like corpus: the tiny MarianMT below learns its vocabulary from it
MT_CORPUS = ["A man rides a bicycle down the street.", "Two dogs play in the park.",
             "A woman holds an umbrella in the rain.", "The sun sets over the mountains.",
             "Children are playing football on the beach.", "Mr. Smith reads a newspaper at 5 p.m. in the cafe."]


@pytest.fixture(scope="session")
def tiny_marian(tmp_path_factory):
    """A 1-layer MarianMT with its own SentencePiece vocabulary; EOS is discouraged so every output is
    non-empty, and generation stops at 12 tokens."""
    import torch

    from lrpipe.model_init import marian_from_texts

    d = tmp_path_factory.mktemp("tiny-marian")
    torch.manual_seed(0)
    # EOS improbable (bias -20): outputs run to max_length
    out = marian_from_texts(d / "model", MT_CORPUS * 20, vocab_size=48, max_length=12, eos_bias=-20.0, d_model=32,
                            encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                            encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256)
    return str(out)


@pytest.fixture(scope="session")
def magpie_run(tmp_path_factory, vllm_engine):
    """A real `pipe run magpie` output on the embedded model (the session's vLLM engine): 24
    instructions over the five categories, answered and filtered. Later stages of the chain (translate,
    pack, train) start from it, as a user's next command would."""
    from lrpipe.pipelines.magpie import MagpieConfig, ResponseConfig, run_magpie

    out = tmp_path_factory.mktemp("magpie")
    cfg = MagpieConfig(model="embedded", n=24, max_tokens=64, chunk_size=8, response=ResponseConfig(max_tokens=384),
                       seed=SAMPLE_SEED)
    run_magpie(cfg, out, vllm_engine, model_id="embedded", progress=False)
    return out
