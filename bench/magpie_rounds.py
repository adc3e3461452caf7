"""Engine kept full vs. the synchronous rounds of the original Magpie generation scripts.

Baseline: what the original Magpie generation scripts do — for each round, one pre-query prompt with
``SamplingParams(n=200)``, waiting for the slowest of the 200 samples before the next round starts, so
the running batch shrinks to a few stragglers at the end of every round. Ours: ``SampleStage`` through
the runner, which streams every request into the engine and keeps the batch full. Same model, same
pre-query prompts, temperatures and max_tokens, the same number of instructions; the ratio is of
output tokens per second.

    .venv/bin/python bench/magpie_rounds.py [--rounds 2] [--max-tokens 64]

Last line: ``RESULT magpie_rounds ratio=<ours/baseline> target=1.5 ...``.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2, help="rounds of n=200 in the baseline")
    ap.add_argument("--per-round", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    from vllm import SamplingParams

    from lrpipe.engines import make_engine
    from lrpipe.models import resolve_model
    from lrpipe.pipelines.magpie import MagpieConfig, SampleStage
    from lrpipe.runner import run_stage

    engine = make_engine("vllm", resolve_model(args.model), gpu_memory_utilization=0.2, max_model_len=2048)
    n = args.rounds * args.per_round
    # one category and one temperature per round, as the original scripts loop over configurations
    temps = [round(0.8 + 0.4 * i / max(args.rounds - 1, 1), 6) for i in range(args.rounds)]
    cfg = MagpieConfig(model=args.model or "embedded", n=n, temps=temps, categories={"general": 1.0},
                       max_tokens=args.max_tokens, chunk_size=100)
    stage = SampleStage(cfg, engine, "bench")
    pre = stage.pre("general")
    engine.llm.generate([{"prompt_token_ids": list(pre.token_ids)}] * 8, SamplingParams(max_tokens=8), use_tqdm=False)

    t0 = time.perf_counter()
    base_tokens = 0
    for i, t in enumerate(temps):
        params = SamplingParams(n=args.per_round, temperature=t, top_p=1.0, max_tokens=args.max_tokens, seed=i,
                                stop_token_ids=list(pre.stop_token_ids))
        out = engine.llm.generate([{"prompt_token_ids": list(pre.token_ids)}], params, use_tqdm=False)
        base_tokens += sum(len(c.token_ids) for c in out[0].outputs)
    base_dt = time.perf_counter() - t0
    print(f"baseline (rounds of n={args.per_round}): {base_tokens} tokens in {base_dt:.1f}s = "
          f"{base_tokens / base_dt:.1f} tok/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rep = run_stage(stage, f"{tmp}/sample", engine=engine, progress=False)
        dt = time.perf_counter() - t0
    print(f"pipe (streaming): {rep.output_tokens} tokens in {dt:.1f}s = {rep.output_tokens / dt:.1f} tok/s", flush=True)
    ratio = (rep.output_tokens / dt) / (base_tokens / base_dt)
    print(f"RESULT magpie_rounds ratio={ratio:.3f} target=1.5 base_tok_s={base_tokens / base_dt:.1f} "
          f"pipe_tok_s={rep.output_tokens / dt:.1f} n={n} max_tokens={args.max_tokens}")


if __name__ == "__main__":
    main()
