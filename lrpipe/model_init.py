"""``pipe models init``: a randomly initialized model folder from a small config, for runs that test a
pipeline rather than a model (the studies' miniatures, a dry run on a laptop, a cluster smoke test).

A config is a YAML mapping with a ``kind`` and the architecture's own fields:

* ``causal-lm``: any ``transformers`` decoder (``model_type: llama`` + sizes), with the tokenizer of an
  existing model (``--tokenizer``), whose vocabulary and special tokens it takes;
* ``clip-vision``: a CLIP vision tower (``image_size``, ``patch_size`` + sizes) and its image processor;
* ``marian``: a MarianMT translation model whose SentencePiece vocabularies are trained on a text file
  (``--corpus`` and ``--field``), with ``max_length`` for generation; ``eos_bias`` lowers the end of
  sentence's logit so a random model still writes something.

The folder loads with ``from_pretrained`` like any released model. Writing into a folder that already
holds a model does nothing (a rerun of a study is a no-op).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lrpipe.errors import InputError

KINDS = ("causal-lm", "clip-vision", "marian")


def init_model(config: dict[str, Any], out: str | Path, *, tokenizer: str | None = None, corpus: str | None = None,
               field: str = "text", seed: int = 0, where: str = "config") -> Path:
    import torch

    out = Path(out)
    if (out / "config.json").exists():
        return out
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}", path=where, field="kind")
    torch.manual_seed(seed)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        {"causal-lm": _causal_lm, "clip-vision": _clip_vision, "marian": _marian}[kind](
            cfg, tmp, tokenizer=tokenizer, corpus=corpus, field=field, where=where)
    except TypeError as e:  # an unknown field of the architecture
        raise InputError(f"not a {kind} config ({e})", path=where) from e
    tmp.rename(out)  # all or nothing: a folder with config.json is a whole model
    return out


def _causal_lm(cfg: dict[str, Any], out: Path, *, tokenizer: str | None, where: str, **_: Any) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not tokenizer:
        raise InputError("a causal-lm config needs --tokenizer (its vocabulary and special tokens)", path=where)
    from lrpipe.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(tokenizer))
    model_type = cfg.pop("model_type", "llama")
    conf = AutoConfig.for_model(model_type, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                                **cfg)
    AutoModelForCausalLM.from_config(conf).save_pretrained(out)
    tok.save_pretrained(out)


def _clip_vision(cfg: dict[str, Any], out: Path, **_: Any) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    size = int(cfg.get("image_size", 224))
    CLIPVisionModel(CLIPVisionConfig(**cfg)).save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(out)


def _marian(cfg: dict[str, Any], out: Path, *, corpus: str | None, field: str, where: str, **_: Any) -> None:
    if not corpus:
        raise InputError("a marian config needs --corpus: the texts its vocabularies are trained on", path=where)
    from lrpipe.sources import open_source

    src = open_source(corpus)
    texts = [str(t) for u in src.units() for t in src.read_unit(u).column(field).to_pylist() if t]
    if not texts:
        raise InputError(f"no text in column '{field}'", path=corpus, field=field)
    marian_from_texts(out, texts * max(1, 200 // len(texts)), **cfg)


def marian_from_texts(out: Path, texts: list[str], *, vocab_size: int = 64, max_length: int = 16, num_beams: int = 1,
                      eos_bias: float = 0.0, **config: Any) -> Path:
    """A random MarianMT in ``out`` whose SentencePiece vocabularies (source and target) are trained on
    ``texts``; ``config`` holds MarianConfig's own fields (sizes). Used by ``pipe models init``, the tests'
    tiny model and ``bench/mt.py``, so all three build the same kind of folder."""
    import sentencepiece as spm
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.txt").write_text("\n".join(texts))
    for side in ("source", "target"):
        spm.SentencePieceTrainer.train(input=str(out / "corpus.txt"), model_prefix=str(out / side),
                                       vocab_size=vocab_size, character_coverage=1.0, bos_id=-1, eos_id=-1, pad_id=-1,
                                       unk_id=0, minloglevel=2, hard_vocab_limit=False)
    (out / "corpus.txt").unlink()
    sp = spm.SentencePieceProcessor(model_file=str(out / "source.model"))
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab))
    conf = MarianConfig(vocab_size=len(vocab), pad_token_id=vocab["<pad>"], eos_token_id=0,
                        decoder_start_token_id=vocab["<pad>"], **config)
    # inputs are cut where the position table ends, not past it
    tok = MarianTokenizer(str(out / "source.model"), str(out / "target.model"), str(out / "vocab.json"),
                          model_max_length=conf.max_position_embeddings)
    model = MarianMTModel(conf)
    if eos_bias:
        with torch.no_grad():
            model.final_logits_bias[0, 0] = eos_bias
    model.generation_config = GenerationConfig(max_length=max_length, num_beams=num_beams, eos_token_id=0,
                                               decoder_start_token_id=vocab["<pad>"], pad_token_id=vocab["<pad>"])
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
