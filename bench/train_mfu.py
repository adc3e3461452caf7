"""``pipe train text`` (our FSDP2 loop) against a plain ``transformers.Trainer`` on the same model and rows.

Model: a Llama of the chosen shape with random weights from its config (``--shape 1b``: Llama-3.2-1B's
shape, 16 layers × 2048, 128k vocabulary; ``--shape tiny`` for CPUs). Data: synthetic packed rows in
``pipe pack``'s format (documents of log-normal length, position ids restarting per document), seeded.

* ours: ``lrpipe.training.loop.train`` — FSDP2 ``fully_shard`` per block, bf16 compute with fp32 master
  weights, documents kept apart (FlashAttention varlen when installed, SDPA block mask otherwise),
  gradient checkpointing, AdamW; tokens/s from the steps after ``--warmup``;
* baseline: ``transformers.Trainer`` on the same rows (``input_ids``, ``labels``, ``position_ids``) with
  the same micro batch, optimizer, precision and gradient checkpointing, and the same block-diagonal
  document mask (the same work: the headline ratio); also printed, the Trainer with the default causal
  mask over whole rows, which attends across documents (wrong for packed data, and on kernels where a
  causal mask is cheaper than an explicit one, faster: ``ratio_vs_unmasked``);
* TRL (the strongest baseline, what a user would run for SFT): ``SFTTrainer`` with padding-free
  packing (``packing=True``, BFD, ``padding_free=True``, ``max_length`` = the sequence length) on the
  same documents (our packed rows split back at their ``seq_lens``), the same micro batch, optimizer,
  precision and gradient checkpointing; FlashAttention-2 varlen on a GPU where ``flash_attn`` is
  installed, else SDPA (transformers turns the restarting ``position_ids`` of the flattened batch
  into a block-diagonal mask, so documents stay apart there too). Its tokens per step are counted at
  the model's input (BFD packs close to, not exactly, our rows). The headline ratio is against TRL;
  ``ratio_trainer`` is against the Trainer with our mask.

Both report tokens/s per device; MFU = (6·N + attention FLOPs per token) × tokens/s / peak, with the
peak from ``lrpipe.training.metrics.PEAK_TFLOPS`` (``--peak-tflops`` to override; none on CPU).

    .venv/bin/python bench/train_mfu.py                       # GPU: 1B shape, seq 8192, bf16
    .venv/bin/python bench/train_mfu.py --shape tiny --seq-len 1024 --steps 12   # CPU

Last line: ``RESULT train-mfu ratio=<ours/TRL tokens per s> target=1.0 mfu=<ours> mfu_trl=… ratio_trainer=…``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SHAPES = {
    # Llama-3.2-1B: 16 × 2048, FFN 8192, 32 heads / 8 KV heads, 128,256 vocabulary, tied embeddings
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=8192, tie_word_embeddings=True),
}


def make_packed(out: Path, rows: int, seq_len: int, vocab: int, seed: int) -> None:
    import numpy as np
    import pyarrow as pa

    from lrpipe.pipelines.pack import PACKED_SCHEMA
    from lrpipe.shards import ShardDir, UnitSpec

    rng = np.random.default_rng(seed)
    ids, labels, pos, lens, srcs = [], [], [], [], []
    for r in range(rows):
        doc_lens, left = [], seq_len
        while left > 0:
            n = min(left, max(16, int(rng.lognormal(np.log(seq_len / 6), 0.9))))
            doc_lens.append(n)
            left -= n
        x = rng.integers(0, vocab, seq_len, dtype=np.int32)
        ids.append(x)
        labels.append(x)
        pos.append(np.concatenate([np.arange(n, dtype=np.int32) for n in doc_lens]))
        lens.append(doc_lens)
        srcs.append([f"r{r}"])
    table = pa.table({"input_ids": ids, "labels": labels, "position_ids": pos, "seq_lens": lens,
                      "source_ids": srcs}, schema=PACKED_SCHEMA)
    sd = ShardDir.create(out, stage="pack", config={"seq_len": seq_len, "tokenizer": None}, plan=[UnitSpec(0, "u0")],
                         inputs=[], provenance={})
    sd.write_unit(UnitSpec(0, "u0"), table, None, rows)
    sd.refresh_manifest()


def model_dir(root: Path, shape: str) -> Path:
    from transformers import LlamaConfig

    d = root / f"llama-{shape}"
    LlamaConfig(max_position_embeddings=131072, **SHAPES[shape]).save_pretrained(d)
    return d


def steady(times: list[float], tokens: list[int], warmup: int) -> float:
    t, n = sum(times[warmup:]), sum(tokens[warmup:])
    return n / t if t else float("nan")


def run_ours(data: Path, model: Path, out: Path, a: argparse.Namespace) -> dict:
    from lrpipe.training.config import load_config
    from lrpipe.training.loop import train
    from lrpipe.training.text import TextTask

    cfg = load_config(None, {"data": str(data), "model": str(model / "config.json"), "out": str(out),
                             "init": "random", "max_steps": a.steps, "micro_batch": a.micro_batch,
                             "global_batch": a.micro_batch, "dtype": a.dtype, "save_every": 10**9,
                             "export": False, "peak_tflops": a.peak_tflops, "lr": 1e-5})
    os.environ["PIPE_PROGRESS"] = "0"
    train(cfg, TextTask(cfg))
    recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    tps = steady([r["step_time"] for r in steps], [r["tokens"] for r in steps], a.warmup)
    mfu = [r["mfu"] for r in steps[a.warmup:] if "mfu" in r]
    return {"tok_s": tps, "mfu": sum(mfu) / len(mfu) if mfu else float("nan"), "loss": steps[-1]["loss"]}


def run_trainer(data: Path, model: Path, out: Path, a: argparse.Namespace, bf16: bool, masked: bool) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from lrpipe.training.data import PackedShards, document_mask

    shards = PackedShards(data)

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(shards)

        def __getitem__(self, i: int) -> dict:
            r = shards.row(i)
            item = {k: torch.from_numpy(r[k].astype("int64")) for k in ("input_ids", "labels", "position_ids")}
            if masked:  # the same block-diagonal document mask ours uses
                item["attention_mask"] = torch.from_numpy(document_mask([r["seq_lens"]], len(r["input_ids"]))[0])
            return item

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)

    torch.manual_seed(33)
    m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model), attn_implementation="sdpa",
                                         dtype=torch.float32)
    timer = Timer()
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=a.micro_batch, max_steps=a.steps,
                             learning_rate=1e-5, lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.1,
                             adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, bf16=bf16,
                             gradient_checkpointing=True, logging_steps=1, save_strategy="no", report_to=[],
                             dataloader_num_workers=0, seed=33, disable_tqdm=True,
                             use_cpu=not torch.cuda.is_available())
    Trainer(model=m, args=args, train_dataset=Rows(), callbacks=[timer]).train()
    n = a.micro_batch * shards.seq_len
    return {"tok_s": steady(timer.times, [n] * len(timer.times), a.warmup)}


def run_trl(data: Path, model: Path, out: Path, a: argparse.Namespace, bf16: bool) -> dict:
    """TRL's SFTTrainer, padding-free BFD packing, on the documents of our packed rows."""
    import importlib.util

    import datasets
    import torch
    from tokenizers import Tokenizer, models
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from lrpipe.training.data import PackedShards

    shards = PackedShards(data)
    docs = []
    for i in range(len(shards)):
        r = shards.row(i)
        off = 0
        for n in r["seq_lens"]:
            docs.append({"input_ids": r["input_ids"][off:off + int(n)].tolist()})
            off += int(n)
    ds = datasets.Dataset.from_list(docs)
    # a tokenizer only for its pad token: the rows are already token ids
    vocab = AutoConfig.from_pretrained(model).vocab_size
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({f"t{k}": k for k in range(vocab)},
                                                                              unk_token="t0")),
                                  pad_token="t0", eos_token="t1")
    gpu = torch.cuda.is_available()
    attn = "flash_attention_2" if gpu and importlib.util.find_spec("flash_attn") else "sdpa"
    torch.manual_seed(33)
    m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model), attn_implementation=attn,
                                         dtype=torch.float32)
    seen: list[int] = []
    m.register_forward_pre_hook(lambda mod, args, kw: seen.append(int(kw["input_ids"].numel())), with_kwargs=True)

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.tokens: list[int] = []
            self.t0 = 0.0

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            if gpu:
                torch.cuda.synchronize()
            seen.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if gpu:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)
            self.tokens.append(sum(seen))

    timer = Timer()
    cfg = SFTConfig(output_dir=str(out), per_device_train_batch_size=a.micro_batch, max_steps=a.steps,
                    learning_rate=1e-5, lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.1,
                    adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, bf16=bf16, gradient_checkpointing=True,
                    logging_steps=1, save_strategy="no", report_to=[], dataloader_num_workers=0, seed=33,
                    disable_tqdm=True, use_cpu=not gpu, packing=True, packing_strategy="bfd", padding_free=True,
                    max_length=shards.seq_len, dataset_num_proc=1)
    SFTTrainer(model=m, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[timer]).train()
    return {"tok_s": steady(timer.times, timer.tokens, a.warmup), "attn": attn,
            "tokens_per_step": sum(timer.tokens) / max(len(timer.tokens), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--peak-tflops", type=float, default=None)
    a = ap.parse_args()
    import torch

    gpu = torch.cuda.is_available()
    a.shape = a.shape or ("1b" if gpu else "tiny")
    a.seq_len = a.seq_len or (8192 if gpu else 1024)
    a.steps = a.steps or (20 if gpu else 12)
    bf16 = a.dtype == "bf16" or (a.dtype == "auto" and gpu)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "packed"
        make_packed(data, rows=a.micro_batch * a.steps, seq_len=a.seq_len, vocab=SHAPES[a.shape]["vocab_size"],
                    seed=0)
        model = model_dir(root, a.shape)
        ours = run_ours(data, model, root / "ours", a)
        base = run_trainer(data, model, root / "trainer", a, bf16, masked=True)
        loose = run_trainer(data, model, root / "trainer-nomask", a, bf16, masked=False)
        trl = run_trl(data, model, root / "trl", a, bf16)

    # the same model FLOPs per token on every side (ours: 6·N + attention within documents), so a
    # baseline's MFU is ours scaled by the throughput ratio
    ratio = ours["tok_s"] / trl["tok_s"]
    mfu_base, mfu_trl = ours["mfu"] * base["tok_s"] / ours["tok_s"], ours["mfu"] / ratio
    dev = torch.cuda.get_device_name() if gpu else "cpu"
    print(f"device {dev}  shape {a.shape}  seq {a.seq_len}  micro batch {a.micro_batch}  bf16 {bf16}  "
          f"steps {a.steps} (first {a.warmup} not timed)")
    print(f"transformers.Trainer   {loose['tok_s']:10.0f} tokens/s/device   (causal over whole rows: "
          "attends across documents)")
    print(f"transformers.Trainer   {base['tok_s']:10.0f} tokens/s/device   MFU {mfu_base:.1%}   "
          "(same document mask as ours)")
    print(f"TRL SFTTrainer         {trl['tok_s']:10.0f} tokens/s/device   MFU {mfu_trl:.1%}   "
          f"(padding-free BFD packing, {trl['attn']}, {trl['tokens_per_step']:.0f} tokens/step)")
    print(f"pipe train text        {ours['tok_s']:10.0f} tokens/s/device   MFU {ours['mfu']:.1%}")
    print(f"RESULT train-mfu ratio={ratio:.3f} target=1.0 mfu={ours['mfu']:.4f} mfu_trl={mfu_trl:.4f} "
          f"ratio_trainer={ours['tok_s'] / base['tok_s']:.3f} mfu_trainer={mfu_base:.4f} "
          f"ratio_vs_unmasked={ours['tok_s'] / loose['tok_s']:.3f} trl_attn={trl['attn']} "
          f"device={dev.replace(' ', '_')} shape={a.shape} seq_len={a.seq_len}")


if __name__ == "__main__":
    main()
