"""pipe's Magpie sampling stage vs. the raw engine on the same requests, in one process.

Raw: one ``vllm.LLM.generate(prompts, [SamplingParams per request])`` call, the fastest way to use the
offline engine. Ours: ``SampleStage`` through the runner (streaming requests, per-unit commits,
Arrow writes, manifest). Same prompts, temperatures, seeds and max_tokens, so the same tokens are
generated; the ratio is of output tokens per second (the machine is noisy: compare ratios, not times).

    .venv/bin/python bench/engine_overhead.py [--n 192] [--max-tokens 48] [--engine vllm|transformers]

Last line: ``RESULT engine_overhead ratio=<ours/raw> target=0.95 ...``.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=192)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from lrpipe.engines import make_engine
    from lrpipe.models import resolve_model
    from lrpipe.pipelines.magpie import MagpieConfig, SampleStage
    from lrpipe.runner import run_stage

    path = resolve_model(args.model)
    engine = make_engine(args.engine, path, gpu_memory_utilization=0.2 if args.engine == "vllm" else None,
                         max_model_len=2048, batch_size=32)
    cfg = MagpieConfig(model=args.model or "embedded", n=args.n, max_tokens=args.max_tokens,
                       chunk_size=args.chunk_size)
    stage = SampleStage(cfg, engine, "bench")
    reqs = [r for u in stage.plan() for r in stage.requests(u)[1]]

    def raw() -> tuple[int, float]:
        t0 = time.perf_counter()
        if args.engine == "vllm":
            prompts = [{"prompt_token_ids": list(r.prompt)} for r in reqs]
            params = [engine._params(r.sampling) for r in reqs]
            outs = engine.llm.generate(prompts, params, use_tqdm=False)
            toks = sum(len(o.outputs[0].token_ids) for o in outs)
        else:
            toks = sum(r.output_tokens for r in engine.generate(reqs))
        return toks, time.perf_counter() - t0

    def ours() -> tuple[int, float]:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            rep = run_stage(SampleStage(cfg, engine, "bench"), f"{tmp}/sample", engine=engine, progress=False)
            dt = time.perf_counter() - t0
            return rep.output_tokens, dt

    # warm-up (first requests pay allocation and kernel selection)
    if args.engine == "vllm":
        from vllm import SamplingParams

        engine.llm.generate([{"prompt_token_ids": list(reqs[0].prompt)}] * 8, SamplingParams(max_tokens=8),
                            use_tqdm=False)
    raw_tps, our_tps = [], []
    for i in range(args.repeats):  # interleaved, so drift of the machine hits both sides
        t, dt = raw()
        raw_tps.append(t / dt)
        print(f"round {i}: raw  {t} tokens in {dt:.1f}s = {t / dt:.1f} tok/s", flush=True)
        t2, dt2 = ours()
        our_tps.append(t2 / dt2)
        print(f"round {i}: pipe {t2} tokens in {dt2:.1f}s = {t2 / dt2:.1f} tok/s", flush=True)
    r, o = max(raw_tps), max(our_tps)
    print(f"RESULT engine_overhead ratio={o / r:.3f} target=0.95 raw_tok_s={r:.1f} pipe_tok_s={o:.1f} "
          f"engine={args.engine} n={args.n} max_tokens={args.max_tokens}")


if __name__ == "__main__":
    main()
