"""Tiny models and packed data for the training tests (built from configs; no download)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.test_pack import CHATML, make_tokenizer

WORDS = ("mendi ibai etxe kale itsaso zuhaitz txakur katu euri eguzki haize lore ogi ur esne sagar "
         "gorri urdin berde handi txiki polita").split()


def tiny_llama_dir(root: Path, tok) -> Path:
    from transformers import LlamaConfig

    d = root / "tiny-llama"
    d.mkdir(parents=True, exist_ok=True)
    LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                tie_word_embeddings=False).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def conversations(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))
        rows.append({"id": f"c{i}", "conversation": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]})
    return rows


def packed_data(root: Path, n: int = 400, seq_len: int = 128) -> tuple[Path, Path]:
    """(model folder with config + tokenizer, pipe pack output)."""
    from typer.testing import CliRunner

    from lrpipe.cli import app

    tok = make_tokenizer(CHATML)
    model = tiny_llama_dir(root, tok)
    src = root / "convs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in conversations(n)))
    out = root / "packed"
    res = CliRunner().invoke(app, ["pack", "--input", str(src), "--tokenizer", str(model), "--seq-len", str(seq_len),
                                   "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return model, out
