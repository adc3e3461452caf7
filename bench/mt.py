"""``pipe mt`` against what a user would run instead: HF MarianMT ``generate`` in length-sorted batches.

No model can be downloaded here, so the benchmark builds a MarianMT of the size of
``HiTZ/mt-hitz-en-eu``-class models (d_model 512, 6+6 layers, FFN 2048, 8 heads) from a config, with a
SentencePiece vocabulary trained on the captions; weights are random. Its generation config is what
Marian checkpoints ship (``num_beams`` 4) with ``max_length`` capped at ``--max-length`` so outputs
have caption-like lengths (an early EOS is suppressed); every side decodes with that config, so the
work per sentence is the same.

Captions: CC3M-like (short, hypernymized: "actor attends the premiere of the film"), from templates
with a space of ~3·10^6 sentences, one in ten with a second sentence. A share ``--repeat-share`` of
the captions repeats an earlier caption exactly (Zipf popularity), the rest are new. **The rate:** we
cannot count CC3M's here (no copy of it can be downloaded); hypernymization makes exact repeats common
in it, but we assume only 10% (the old version of this script had 89%, which made the cache the whole
story). ``--measure FILE [--column caption]`` prints the sentence repeat share of a real caption file
(parquet, JSONL or TSV), to rerun this with the measured figure.

Same captions, every side:

* ours: ``MTStage`` through the runner (Punkt split, each distinct sentence once through the sentence
  cache, length-sorted batches; default backend CTranslate2), Arrow shards and manifest;
* ours without the cache: the same backend on every sentence occurrence, length-sorted (what the
  cache adds is the difference);
* HF batched (the strongest baseline): ``model.generate`` on captions sorted by token length, batches
  of ``--batch-size``; also with exact-duplicate captions translated once (``dict.fromkeys``, the one
  line a user would add): the headline ratio is against the faster of the two;
* naive (the first baseline): one ``generate`` call per caption, on the first ``--baseline-rows``.

    .venv/bin/python bench/mt.py [--rows 2000] [--repeat-share 0.1] [--backend ctranslate2]

Last line: ``RESULT mt ratio=<ours / strongest baseline sentences/s> target=1 ...``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def captions(n: int, repeat_share: float, seed: int = 0) -> list[str]:
    """``n`` CC3M-like captions of which ``repeat_share`` repeat an earlier one exactly."""
    import numpy as np

    rng = np.random.default_rng(seed)
    subj = ["actor", "person", "dog", "a young woman", "the city", "a group of friends", "football player",
            "musician", "children", "the team", "a man", "politician", "cars", "tourists", "the bride", "chef",
            "an old man", "the cat", "a little girl", "students", "the crowd", "a couple", "pop artist",
            "the horse", "soldiers", "a businessman", "fans", "the model", "a family", "cyclist"]
    adj = ["", "", "", "happy ", "young ", "smiling ", "famous ", "tired ", "local ", "beautiful ", "little ",
           "professional ", "elderly ", "excited "]
    verb = ["attends", "walks along", "performs at", "looks at", "celebrates", "arrives at", "plays in",
            "poses with", "runs through", "sits on", "stands in front of", "cooks in", "waits for",
            "dances at", "rides along", "relaxes on", "paints", "holds", "visits", "climbs"]
    obj = ["the premiere of the film", "the beach", "a festival", "the park", "the stadium", "a kitchen",
           "the street", "the mountains", "a concert", "the river", "an old building", "the snow",
           "a wooden table", "the bridge", "a red car", "the garden", "the market", "a small boat",
           "the museum", "a birthday cake", "the train station", "a field of flowers", "the lake",
           "a modern house", "the forest"]
    tail = ["", "", "", " during the event", " on a sunny day", " at night", " in the city", " with friends",
            " in winter", " after the game", " near the sea", " in the rain", " before the show",
            " for the first time", " on the weekend", " at sunset"]

    def sentence() -> str:
        a = subj[int(rng.integers(len(subj)))]
        text = (f"{adj[int(rng.integers(len(adj)))]}{a} {verb[int(rng.integers(len(verb)))]} "
                f"{obj[int(rng.integers(len(obj)))]}{tail[int(rng.integers(len(tail)))]}.")
        return text[0].upper() + text[1:]

    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < repeat_share:  # an earlier caption again, the popular ones more often
            k = min(int(rng.zipf(1.5)) - 1, len(out) - 1)
            out.append(out[k])
        else:
            out.append(sentence() + (" " + sentence() if rng.random() < 0.1 else ""))
    return out


def measure(path: str, column: str) -> None:
    """Print the caption and sentence repeat shares of a real caption file."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    from lrpipe.pipelines import mt

    if path.endswith(".parquet"):
        table = pq.read_table(path, columns=[column])
    elif path.endswith((".tsv", ".tsv.gz")):
        table = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter="\t"),
                              read_options=pcsv.ReadOptions(column_names=[column, "url"]))
    else:
        table = pjson.read_json(path)
    texts = [t for t in table.column(column).to_pylist() if isinstance(t, str)]
    split = mt.SentenceSplitter("en")
    sents = [t[s:e] for t in texts for s, e in split.spans(t)]
    print(f"{len(texts):,} captions, {1 - len(set(texts)) / len(texts):.1%} repeat an earlier one; "
          f"{len(sents):,} sentences, {1 - len(set(sents)) / len(sents):.1%} repeat an earlier one")


def build_model(d: Path, texts: list[str], d_model: int, layers: int, max_length: int, num_beams: int) -> str:
    import torch

    from lrpipe.model_init import marian_from_texts

    torch.manual_seed(0)
    # EOS improbable (bias -20): every output has max_length tokens
    out = marian_from_texts(d / "model", texts, vocab_size=400, max_length=max_length, num_beams=num_beams,
                            eos_bias=-20.0, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                            encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=4 * d_model,
                            decoder_ffn_dim=4 * d_model, max_position_embeddings=512)
    return str(out)


def hf_batched(model, tok, texts: list[str], batch_size: int) -> list[str]:  # noqa: ANN001
    """What a user writes with transformers: sort by token length, pad per batch, generate, restore order."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(tok(texts[i])["input_ids"]))
    out: list[str] = [""] * len(texts)
    with torch.inference_mode():
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True)
            for i, t in zip(idx, tok.batch_decode(model.generate(**enc), skip_special_tokens=True)):
                out[i] = t
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeat-share", type=float, default=0.1, help="captions repeating an earlier one")
    ap.add_argument("--baseline-rows", type=int, default=100, help="captions for the naive baseline")
    ap.add_argument("--backend", default="ctranslate2")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--max-length", type=int, default=24)
    ap.add_argument("--num-beams", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--measure", default=None, help="print the repeat shares of this caption file and stop")
    ap.add_argument("--column", default="caption")
    args = ap.parse_args()
    if args.measure:
        measure(args.measure, args.column)
        return

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from lrpipe.pipelines import mt
    from lrpipe.runner import run_stage
    from lrpipe.sources import FileSource

    work = Path(tempfile.mkdtemp(prefix="bench-mt-"))
    os.environ.setdefault("LRPIPE_CACHE", str(work / "cache"))
    texts = captions(args.rows, args.repeat_share)
    model_dir = build_model(work, texts, args.d_model, args.layers, args.max_length, args.num_beams)
    src = work / "cc.parquet"
    pq.write_table(pa.table({"image_url": [f"https://img/{i}.jpg" for i in range(len(texts))], "caption": texts}), src)
    splitter = mt.SentenceSplitter("en")
    sents = [t[s:e] for t in texts for s, e in splitter.spans(t)]
    n_sent, distinct = len(sents), len(set(sents))
    print(f"{len(texts)} captions ({1 - len(set(texts)) / len(texts):.1%} repeats), {n_sent} sentences, "
          f"{distinct} distinct ({1 - distinct / n_sent:.1%} repeats); beams {args.num_beams}, "
          f"max_length {args.max_length}", flush=True)
    rates: dict[str, float] = {}

    def timed(name: str, n: int, fn) -> None:  # noqa: ANN001
        t0 = time.perf_counter()
        fn()
        rates[name] = n / (time.perf_counter() - t0)
        print(f"{name:18s} {rates[name]:8.1f} sentences/s", flush=True)

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    base = texts[:args.baseline_rows]

    def naive() -> None:
        with torch.inference_mode():
            for t in base:
                model.generate(**tok(t, return_tensors="pt"))

    timed("naive", sum(len(splitter.spans(t)) for t in base), naive)
    timed("hf_batched", n_sent, lambda: hf_batched(model, tok, texts, args.batch_size))

    def dedup() -> None:
        unique = list(dict.fromkeys(texts))
        done = dict(zip(unique, hf_batched(model, tok, unique, args.batch_size)))
        [done[t] for t in texts]

    timed("hf_batched_dedup", n_sent, dedup)
    backend = mt.make_backend(args.backend, model_dir, "cpu", args.batch_size)  # conversion not timed
    timed("ours_nocache", n_sent, lambda: backend.translate(sorted(sents, key=backend.length)))

    def ours() -> None:
        rep = run_stage(mt.MTStage(FileSource([str(src)], rows_per_unit=5000), backend, "caption",
                                   model_id="bench"), work / "out", progress=False)
        assert rep.rows_out == len(texts)

    timed("ours", n_sent, ours)
    strongest = max(("hf_batched", "hf_batched_dedup"), key=rates.__getitem__)
    o = rates["ours"]
    print(f"RESULT mt ratio={o / rates[strongest]:.2f} target=1 strongest={strongest} ours_sent_s={o:.1f} "
          f"ours_nocache_sent_s={rates['ours_nocache']:.1f} hf_batched_sent_s={rates['hf_batched']:.1f} "
          f"hf_batched_dedup_sent_s={rates['hf_batched_dedup']:.1f} naive_sent_s={rates['naive']:.1f} "
          f"nocache_ratio={rates['ours_nocache'] / rates[strongest]:.2f} naive_ratio={o / rates['naive']:.2f} "
          f"rows={len(texts)} repeat_share={args.repeat_share} sentence_repeats={1 - distinct / n_sent:.3f} "
          f"backend={args.backend} num_beams={args.num_beams} d_model={args.d_model} layers={args.layers}")


if __name__ == "__main__":
    main()
