"""Translation throughput, in one process on the same rows:

* **overhead** — ``pipe translate`` (TranslateStage through the runner: prompts, schemas, streaming,
  checks, Arrow writes, manifest; no retries) against the raw engine: one ``vllm.LLM.generate`` call
  with the very same prompt ids and sampling parameters (JSON schemas included). Target ≥ 0.95.
* **constrained** — the same stage with the per-row JSON schema against the same stage without it
  (prompts unchanged). Target ≥ 0.85: structured outputs must not cost much throughput.

Rows are A-OKVQA-shaped items (question + 4 choices) or Magpie conversations (``--recipe magpie``);
the ratio is of output tokens per second (noisy machines: compare ratios, not times).

    .venv/bin/python bench/translate.py [--rows 96] [--max-tokens 96] [--recipe a-okvqa] [--repeats 2]

Last two lines: ``RESULT translate-overhead ratio=...`` and ``RESULT translate-constrained ratio=...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path


def make_input(path: Path, recipe: str, n: int) -> Path:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    nouns = ["man", "woman", "dog", "bus", "tree", "kitchen", "street", "bicycle", "table", "window", "boat", "cake"]
    if recipe == "magpie":
        rows = [{"id": f"r{i:05d}", "instruction": f"Explain why the {rng.choice(nouns)} is next to the "
                                                      f"{rng.choice(nouns)} in {int(rng.integers(2, 9))} sentences.",
                 "response": f"The {rng.choice(nouns)} stands there because {int(rng.integers(1, 99))} people "
                             f"moved it. It is useful for the {rng.choice(nouns)}."} for i in range(n)]
        path = path.with_suffix(".jsonl")
        path.write_text("\n".join(json.dumps(r) for r in rows))
        return path
    rows = [{"question_id": f"q{i:05d}", "question": f"What is next to the {rng.choice(nouns)}?",
             "choices": [str(x) for x in rng.choice(nouns, 4, replace=False)]} for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--recipe", default="a-okvqa")
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from lrpipe.engines.vllm_engine import VLLMEngine
    from lrpipe.models import resolve_model
    from lrpipe.pipelines import translate as tr
    from lrpipe.runner import run_stage
    from lrpipe.sources import FileSource

    work = Path(tempfile.mkdtemp(prefix="bench-translate-"))
    src = make_input(work / "in.parquet", args.recipe, args.rows)
    engine = VLLMEngine(resolve_model(args.model), gpu_memory_utilization=0.2, max_model_len=2048)

    def recipe() -> tr.Recipe:
        r = tr.load_recipe(args.recipe, retries=0)
        r.sampling.max_tokens = args.max_tokens
        return r

    class Unconstrained(tr.TranslateStage):
        def _request(self, *args, **kw):  # type: ignore[no-untyped-def]
            q = super()._request(*args, **kw)
            return dataclasses.replace(q, sampling=dataclasses.replace(q.sampling, json_schema=None))

    def ours(constrained: bool, tag: str) -> tuple[int, float]:
        cls = tr.TranslateStage if constrained else Unconstrained
        stage = cls(FileSource([str(src)], rows_per_unit=16), recipe(), engine, "bench")
        t0 = time.perf_counter()
        rep = run_stage(stage, work / f"out-{tag}", engine=engine, progress=False, overwrite=True)
        return rep.output_tokens, time.perf_counter() - t0

    def raw() -> tuple[int, float]:
        stage = tr.TranslateStage(FileSource([str(src)], rows_per_unit=16), recipe(), engine, "bench")
        reqs = [q for u in stage.plan() for q in stage.requests(u)[1]]
        t0 = time.perf_counter()
        outs = engine.llm.generate([{"prompt_token_ids": list(q.prompt)} for q in reqs],
                                   [engine._params(q.sampling) for q in reqs], use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs), time.perf_counter() - t0

    ours(True, "warmup")  # compiles grammars, allocates; not measured
    best: dict[str, float] = {"raw": 0.0, "ours": 0.0, "free": 0.0}
    for i in range(args.repeats):  # interleaved, so drift of the machine hits every side
        for name, fn in (("raw", raw), ("ours", lambda i=i: ours(True, f"c{i}")),
                         ("free", lambda i=i: ours(False, f"u{i}"))):
            toks, dt = fn()
            best[name] = max(best[name], toks / dt)
            print(f"round {i}: {name:5s} {toks} tokens in {dt:.1f}s = {toks / dt:.1f} tok/s", flush=True)
    engine.close()
    print(f"RESULT translate-overhead ratio={best['ours'] / best['raw']:.3f} target=0.95 "
          f"pipe_tok_s={best['ours']:.1f} raw_tok_s={best['raw']:.1f} recipe={args.recipe} rows={args.rows}")
    print(f"RESULT translate-constrained ratio={best['ours'] / best['free']:.3f} target=0.85 "
          f"constrained_tok_s={best['ours']:.1f} unconstrained_tok_s={best['free']:.1f} recipe={args.recipe}")


if __name__ == "__main__":
    main()
