"""``pipe pack`` against TRL's own packing (``trl.pack_dataset``, best-fit decreasing) on the same data.

Data (seeded): ``--conversations`` synthetic chats (1–3 turns, some with a system prompt, lengths
drawn from a log-normal as in Magpie data, mixed English/Basque-like words) and ``--documents``
corpus documents (log-normal lengths, some longer than a row), with the embedded model's tokenizer
(SmolLM2, a ChatML template).

* ours: ``PackStage`` through the runner: read the JSONL, chat-template tokenization with loss masks,
  BFD packing, Arrow shards with a manifest;
* TRL: the *same* tokenization functions (batched chat-template rendering + tokenization with loss
  masks) through ``datasets.map`` (documents split at the row size, as ours), then ``trl.pack_dataset(strategy="bfd")``, then ``save_to_disk``. Both sides get the same
  number of processes (``--workers``).

Padding waste: ours from the manifest (pad tokens / row tokens); TRL's rows are variable-length, and
a trainer pads each to ``--seq-len`` (or the batch's longest), so its waste is ``1 − tokens / (rows ×
seq_len)``.

    .venv/bin/python bench/pack.py [--conversations 50000] [--documents 5000] [--seq-len 8192] [--workers 2]

Last line: ``RESULT pack ratio=<ours/trl tokens per s> target=1.0 waste_ours=… waste_trl=…``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

EN = ("the of and to in is that for it as with was on be by this are from at or an which have not they all "
      "model data language river mountain music history science water energy city people system time").split()
EU = ("eta da ez bat du dira baina hori bere ere edo beste oso hau zen izan dute behar egin euskara herria "
      "ibaia mendia musika historia zientzia ura energia hiria jendea sistema denbora").split()


def make_data(path: Path, n_conv: int, n_doc: int, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)

    def text(mean_words: float) -> str:
        vocab = EN if rng.random() < 0.5 else EU
        n = max(1, int(rng.lognormal(np.log(mean_words), 0.8)))
        return " ".join(vocab[i] for i in rng.integers(0, len(vocab), n))

    with open(path, "w") as f:
        for i in range(n_conv):
            msgs = [{"role": "system", "content": text(12)}] if rng.random() < 0.3 else []
            for _ in range(int(rng.integers(1, 4))):
                msgs += [{"role": "user", "content": text(25)}, {"role": "assistant", "content": text(110)}]
            f.write(json.dumps({"id": f"conv{i:06d}", "conversation": msgs, "text": None}) + "\n")
        for i in range(n_doc):
            f.write(json.dumps({"id": f"doc{i:06d}", "conversation": None, "text": text(900)}) + "\n")


def run_ours(path: Path, out: Path, tok, tok_id: str, seq_len: int, workers: int) -> dict:
    from lrpipe.pipelines.pack import PackStage, padding_waste
    from lrpipe.runner import run_stage
    from lrpipe.shards import ShardDir
    from lrpipe.sources import FileSource

    t0 = time.perf_counter()
    run_stage(PackStage(FileSource([str(path)], rows_per_unit=10000), tok, tok_id, seq_len=seq_len), out,
              progress=False, workers=workers)
    dt = time.perf_counter() - t0
    st = ShardDir.open(out).manifest()["stats"]
    return {"seconds": dt, "tokens": st["tokens_in"], "rows": st["bins"], "waste": padding_waste(st)}


def run_trl(path: Path, out: Path, tok, seq_len: int, workers: int) -> dict:
    import datasets
    from trl import pack_dataset

    from lrpipe.tokenization import tokenize_conversations, tokenize_documents

    def tokenize(batch: dict) -> dict:
        convs = [[{"role": m["role"], "content": m["content"] or ""} for m in c]
                 for c in batch["conversation"] if c is not None]
        conv_tok = iter(tokenize_conversations(tok, convs))
        doc_tok = iter(tokenize_documents(tok, [t for c, t in zip(batch["conversation"], batch["text"]) if c is None]))
        ids_out, lab_out = [], []
        for conv in batch["conversation"]:
            if conv is not None:
                ids, labels = next(conv_tok)
                if len(ids) <= seq_len:  # ours rejects longer conversations as too_long
                    ids_out.append(ids)
                    lab_out.append(labels)
            else:
                ids = next(doc_tok)
                for k in range(0, len(ids), seq_len):
                    ids_out.append(ids[k:k + seq_len])
                    lab_out.append(ids[k:k + seq_len])
        return {"input_ids": ids_out, "labels": lab_out}

    t0 = time.perf_counter()
    msg = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    features = datasets.Features({"id": datasets.Value("string"), "conversation": datasets.List(msg),
                                  "text": datasets.Value("string")})
    ds = datasets.load_dataset("json", data_files=str(path), split="train", features=features)
    ds = ds.map(tokenize, batched=True, remove_columns=ds.column_names, num_proc=workers if workers > 1 else None)
    packed = pack_dataset(ds, seq_len, strategy="bfd", map_kwargs={"num_proc": workers} if workers > 1 else None)
    packed.save_to_disk(str(out))
    dt = time.perf_counter() - t0
    lens = packed.with_format("arrow")["seq_lengths"]
    import pyarrow.compute as pc

    tokens = int(pc.sum(pc.list_flatten(lens)).as_py())
    rows = len(packed)
    return {"seconds": dt, "tokens": tokens, "rows": rows, "waste": 1 - tokens / (rows * seq_len)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conversations", type=int, default=50_000)
    ap.add_argument("--documents", type=int, default=5_000)
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", default=None, help="HF id or folder (default: the embedded model)")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from lrpipe.models import resolve_model

    tok_id = resolve_model(args.tokenizer)
    tok = AutoTokenizer.from_pretrained(tok_id)
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data.jsonl"
        make_data(data, args.conversations, args.documents, args.seed)
        os.environ.setdefault("HF_DATASETS_CACHE", str(Path(d) / "hf-cache"))
        trl = run_trl(data, Path(d) / "trl", tok, args.seq_len, args.workers)
        ours = run_ours(data, Path(d) / "ours", tok, tok_id, args.seq_len, args.workers)
    if ours["tokens"] != trl["tokens"]:
        raise SystemExit(f"token counts differ: ours {ours['tokens']} vs trl {trl['tokens']}")
    for name, r in (("trl.pack_dataset (bfd)", trl), ("pipe pack", ours)):
        print(f"{name:<24s} {r['tokens']:,} tokens in {r['seconds']:.1f} s = {r['tokens'] / r['seconds']:,.0f} tok/s, "
              f"{r['rows']:,} rows, padding waste {r['waste']:.2%}")
    ratio = (ours["tokens"] / ours["seconds"]) / (trl["tokens"] / trl["seconds"])
    print(f"RESULT pack ratio={ratio:.3f} target=1.0 waste_ours={ours['waste']:.4f} waste_trl={trl['waste']:.4f} "
          f"tokens={ours['tokens']} seq_len={args.seq_len} workers={args.workers}")


if __name__ == "__main__":
    main()
