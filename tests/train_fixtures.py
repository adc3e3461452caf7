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


def _png(seed: int) -> bytes:
    import io

    from PIL import Image

    rng = random.Random(seed)
    im = Image.new("RGB", (40, 40), tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def mllm_parts(root: Path) -> tuple[Path, Path]:
    """(tiny CLIP vision folder with its image processor, tiny Llama folder with weights + tokenizer)."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tok = make_tokenizer(CHATML)
    vis, llm = root / "tiny-clip", root / "tiny-llm"
    torch.manual_seed(1)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=32, patch_size=8, projection_dim=32)).save_pretrained(vis)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(vis)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id, tie_word_embeddings=False)).save_pretrained(llm)
    tok.save_pretrained(llm)
    return vis, llm


def mllm_data(root: Path, n_images: int = 24, n_text: int = 0, name: str = "mix") -> Path:
    """A pipe mix-like shard directory: caption rows with images (EU and EN) and text-only rows."""
    import pyarrow as pa

    from lrpipe.shards import ShardDir, UnitSpec

    rng = random.Random(5)
    rows = []
    for i in range(n_images):
        rows.append({"id": f"img{i}", "image": {"bytes": _png(i), "path": None}, "language": "eu" if i % 5 else "en",
                     "caption": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))), "conversation": None})
    for c in conversations(n_text, seed=9):
        rows.append({"id": c["id"], "image": None, "language": "eu", "caption": None,
                     "conversation": c["conversation"]})
    d = root / name
    sd = ShardDir.create(d, stage="mix", config={}, plan=[UnitSpec(0, "u0")], inputs=[], provenance={})
    sd.write_unit(UnitSpec(0, "u0"), pa.Table.from_pylist(rows), None, len(rows))
    sd.refresh_manifest()
    return d
