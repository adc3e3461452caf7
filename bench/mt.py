"""``pipe mt`` against naive per-row transformers ``generate`` on the same CC3M-like captions.

No model can be downloaded here, so the benchmark builds a MarianMT of the size of
``HiTZ/mt-hitz-en-eu``-class models (d_model 512, 6+6 layers, FFN 2048, 8 heads) from a config, with a
SentencePiece vocabulary trained on the captions; weights are random, and generation is capped at
``--max-length`` tokens so outputs have caption-like lengths (both sides use the same model and
generation config, so the work per sentence is the same).

Captions are drawn from templates with a Zipf distribution, so that many repeat exactly as in CC3M
(hypernymized captions such as "actor attends the premiere of the film"); ~10% have two sentences.

* ours: ``MTStage`` (Punkt split, each distinct sentence once, length-sorted batches) with the chosen
  backend (default: CTranslate2), through the runner (Arrow shards, manifest);
* baseline: ``model.generate`` once per caption, on the first ``--baseline-rows`` captions.

    .venv/bin/python bench/mt.py [--rows 20000] [--baseline-rows 200] [--backend ctranslate2]

Last line: ``RESULT mt ratio=<ours/baseline sentences/s> target=3 ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def captions(n: int, seed: int = 0) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(seed)
    subj = ["actor", "person", "dog", "a young woman", "the city", "a group of friends", "football player",
            "musician", "children", "the team", "a man", "politician", "cars", "tourists", "the bride", "chef"]
    verb = ["attends", "walks along", "performs at", "looks at", "celebrates", "arrives at", "plays in",
            "poses with", "runs through", "sits on", "stands in front of", "cooks in"]
    obj = ["the premiere of the film", "the beach", "a festival", "the park", "the stadium", "a kitchen",
           "the street", "the mountains", "a concert", "the river", "an old building", "the snow"]
    tail = ["", " during the event", " on a sunny day", " at night", " in the city", " with friends"]
    p = 1.0 / np.arange(1, 2001) ** 1.1  # a Zipf over 2,000 template combinations: heavy repetition
    p /= p.sum()
    combos = [(a, b, c, d) for a in range(len(subj)) for b in range(len(verb)) for c in range(len(obj))
              for d in range(len(tail))]
    order = rng.permutation(len(combos))[:2000]
    out = []
    for k in rng.choice(2000, n, p=p):
        a, b, c, d = combos[order[k]]
        text = f"{subj[a]} {verb[b]} {obj[c]}{tail[d]}."
        text = text[0].upper() + text[1:]
        if rng.random() < 0.1:
            a2, b2, c2, _ = combos[order[int(rng.integers(0, 2000))]]
            text += f" {subj[a2].capitalize()} {verb[b2]} {obj[c2]}."
        out.append(text)
    return out


def build_model(d: Path, texts: list[str], d_model: int, layers: int, max_length: int) -> str:
    import sentencepiece as spm
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    (d / "corpus.txt").write_text("\n".join(texts))
    for side in ("source", "target"):
        spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / side), vocab_size=400, hard_vocab_limit=False,
                                       character_coverage=1.0, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
                                       minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(d / "source.model"))
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    tok = MarianTokenizer(str(d / "source.model"), str(d / "target.model"), str(d / "vocab.json"),
                          model_max_length=512)
    cfg = MarianConfig(vocab_size=len(vocab), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                       encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=4 * d_model,
                       decoder_ffn_dim=4 * d_model, max_position_embeddings=512, pad_token_id=vocab["<pad>"],
                       eos_token_id=0, decoder_start_token_id=vocab["<pad>"])
    torch.manual_seed(0)
    model = MarianMTModel(cfg)
    with torch.no_grad():
        model.final_logits_bias[0, 0] = -20.0  # no early EOS: every output has max_length tokens
    model.generation_config = GenerationConfig(max_length=max_length, num_beams=1, eos_token_id=0,
                                               decoder_start_token_id=vocab["<pad>"], pad_token_id=vocab["<pad>"])
    out = d / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--baseline-rows", type=int, default=200)
    ap.add_argument("--backend", default="ctranslate2")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--max-length", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from lrpipe.pipelines import mt
    from lrpipe.runner import run_stage
    from lrpipe.sources import FileSource

    work = Path(tempfile.mkdtemp(prefix="bench-mt-"))
    os.environ.setdefault("LRPIPE_CACHE", str(work / "cache"))
    texts = captions(args.rows)
    model_dir = build_model(work, texts, args.d_model, args.layers, args.max_length)
    src = work / "cc.parquet"
    pq.write_table(pa.table({"image_url": [f"https://img/{i}.jpg" for i in range(len(texts))], "caption": texts}), src)
    splitter = mt.SentenceSplitter("en")
    n_sent = sum(len(splitter.spans(t)) for t in texts)
    distinct = len({t[s:e] for t in texts for s, e in splitter.spans(t)})
    print(f"{len(texts)} captions, {n_sent} sentences, {distinct} distinct", flush=True)

    # baseline: what a user would write first
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    base = texts[:args.baseline_rows]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for t in base:
            model.generate(**tok(t, return_tensors="pt"))
    t_base = time.perf_counter() - t0
    base_sent = sum(len(splitter.spans(t)) for t in base)

    backend = mt.make_backend(args.backend, model_dir, "cpu", args.batch_size)  # conversion not timed
    t0 = time.perf_counter()
    rep = run_stage(mt.MTStage(FileSource([str(src)], rows_per_unit=5000), backend, "caption", model_id="bench"),
                    work / "out", progress=False)
    t_ours = time.perf_counter() - t0
    assert rep.rows_out == len(texts)
    o_s, b_s = n_sent / t_ours, base_sent / t_base
    print(f"baseline: {base_sent} sentences ({len(base)} captions) in {t_base:.1f}s = {b_s:.1f} sentences/s")
    print(f"ours:     {n_sent} sentences ({len(texts)} captions, {distinct} distinct) in {t_ours:.1f}s = "
          f"{o_s:.1f} sentences/s [{args.backend}]")
    print(f"RESULT mt ratio={o_s / b_s:.2f} target=3 ours_sent_s={o_s:.1f} baseline_sent_s={b_s:.1f} "
          f"rows={len(texts)} distinct_sentences={distinct} backend={args.backend} d_model={args.d_model} "
          f"layers={args.layers}")


if __name__ == "__main__":
    main()
