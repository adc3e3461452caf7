"""Batched multiple-choice log-likelihood scoring against one forward pass per option (lmms-eval's way).

Both sides score the same ``--questions`` four-option questions (seeded; a short passage and a
question through the model's chat template, options scored as the assistant's answer) on the
embedded model (SmolLM2-135M-Instruct, transformers, float32 on CPU / bf16 on GPU):

* ours: ``lrpipe.eval.mc.score_batched`` — every option of several questions in one forward pass, the
  shared context once per question (block attention mask, restarted position ids);
* per option: ``score_per_option`` — ``context + option`` per forward pass (lmms-eval's LLaVA models
  score each request alone);
* lm-eval (text only; the strongest baseline a user has for text MC): ``HFLM._loglikelihood_tokens``
  on the same token ids, every (context, option) a request, sorted by length and padded into
  batches of ``--lmeval-batch`` (lm-eval's own batching and its one-forward reuse of shared
  contexts for one-token options). The headline ratio is against the faster baseline.

It checks that every side gives the same log-likelihoods (max abs difference printed) and the same
accuracy. With ``--llava`` there is no lm-eval side (its HF model takes no images).

``--llava``: the same on a LLaVA-shaped model, what the multimodal benchmarks score: a CLIP-shaped
vision tower at 336 px / patch 14 (576 image tokens per question, as the study's CLIP ViT-L/14-336 gives;
the tower itself is 2 layers wide 64, so the figure is about the LLM side) in front of the embedded
model's LLM, each question with its own image; the shared context is then mostly image tokens.

    .venv/bin/python bench/eval_mc.py [--questions 2000] [--max-tokens 4096]
    .venv/bin/python bench/eval_mc.py --llava [--questions 100]

Last line: ``RESULT eval-mc ratio=<ours/strongest baseline questions per s> target=1 ...``.
"""

from __future__ import annotations

import argparse
import random
import time

WORDS = ("river mountain bread window teacher garden music winter summer engine letter forest island "
         "market bridge doctor camera pencil village ocean").split()


def make_items(tok, n: int, seed: int) -> list:
    from lrpipe.eval.mc import MCItem

    rng = random.Random(seed)
    items = []
    for _ in range(n):
        facts = [f"The {rng.choice(WORDS)} is next to the {rng.choice(WORDS)}." for _ in range(rng.randint(3, 8))]
        target = rng.choice(WORDS)
        options = rng.sample([w for w in WORDS if w != target], 3) + [target]
        rng.shuffle(options)
        question = (" ".join(facts) + f" Which word means a {target}? Options: " + ", ".join(options) +
                    ". Answer with one word.")
        ctx = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=True,
                                      add_generation_prompt=True, return_dict=True)["input_ids"]
        opts = [tok(o, add_special_tokens=False)["input_ids"] for o in options]
        items.append(MCItem(list(ctx), opts, gold=options.index(target), option_texts=options))
    return items


def llava_model_and_items(path: str, n: int, seed: int, device: str, dtype) -> tuple:
    """A LLaVA around the embedded LLM (weights loaded) with a small 336/14 vision tower, and ``n``
    four-option questions whose context holds 576 image tokens and whose pixel values differ."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    tok = AutoTokenizer.from_pretrained(path)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_id = tok.convert_tokens_to_ids("<image>")
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lm.resize_token_embeddings(len(tok))
    vc = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                          image_size=336, patch_size=14, projection_dim=64)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vc, text_config=lm.config, image_token_index=image_id,
                                                      vision_feature_layer=-2, vision_feature_select_strategy="default"))
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.load_state_dict(lm.lm_head.state_dict())
    model = model.to(device=device, dtype=dtype).eval()
    items = make_items(tok, n, seed)
    n_patches = (336 // 14) ** 2
    gen = torch.Generator().manual_seed(seed)
    for it in items:
        head = tok.apply_chat_template([{"role": "user", "content": "<image>\n"}], tokenize=True,
                                       add_generation_prompt=False, return_dict=True)["input_ids"]
        k = head.index(image_id)
        it.context = head[:k] + [image_id] * n_patches + head[k + 1:] + it.context
        it.pixel_values = torch.randn(1, 3, 336, 336, generator=gen).to(device=device, dtype=dtype)
    return model, tok, items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=2000)
    ap.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batched forward pass")
    ap.add_argument("--model", default=None, help="HF id or folder (default: the embedded model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llava", action="store_true", help="a LLaVA-shaped model with an image per question")
    ap.add_argument("--lmeval-batch", type=int, default=32, help="lm-eval's batch size (requests per pass)")
    args = ap.parse_args()
    if args.llava and args.questions == 2000:
        args.questions = 100

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lrpipe.eval.mc import accuracy, score_batched, score_per_option
    from lrpipe.models import resolve_model

    path = resolve_model(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.llava:
        model, tok, items = llava_model_and_items(path, args.questions, args.seed, device, dtype)
    else:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        items = make_items(tok, args.questions, args.seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    score_batched(model, items[:8], max_tokens=args.max_tokens, pad_id=pad)  # warm-up both paths
    score_per_option(model, items[:2])

    t0 = time.perf_counter()
    ours = score_batched(model, items, max_tokens=args.max_tokens, pad_id=pad)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = score_per_option(model, items)
    t_base = time.perf_counter() - t0

    t_lm, lm = None, None
    if not args.llava:
        from lm_eval.models.huggingface import HFLM

        hflm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.lmeval_batch)
        reqs = [(("", ""), list(it.context), list(o)) for it in items for o in it.options]
        hflm._loglikelihood_tokens(reqs[:16], disable_tqdm=True)  # warm-up
        t0 = time.perf_counter()
        flat = hflm._loglikelihood_tokens(reqs, disable_tqdm=True)
        t_lm = time.perf_counter() - t0
        it_ = iter(ll for ll, _ in flat)
        lm = [[next(it_) for _ in it.options] for it in items]

    diff = max(abs(a - b) for r, s in zip(ours, base) for a, b in zip(r, s))
    acc_o, acc_b = accuracy(items, ours), accuracy(items, base)
    tokens = sum(len(it.context) + sum(len(o) for o in it.options) for it in items)
    naive = sum(len(it.context) * len(it.options) + sum(len(o) for o in it.options) for it in items)
    print(f"questions {len(items)}, tokens per question: {tokens / len(items):.0f} batched vs "
          f"{naive / len(items):.0f} per option; device {device}")
    print(f"per-option  {t_base:8.1f} s  {len(items) / t_base:8.1f} questions/s  acc {acc_b['acc']:.3f} "
          f"acc_norm {acc_b['acc_norm']:.3f}")
    if lm is not None:
        d_lm = max(abs(a - b) for r, s in zip(ours, lm) for a, b in zip(r, s))
        diff = max(diff, d_lm)
        print(f"lm-eval     {t_lm:8.1f} s  {len(items) / t_lm:8.1f} questions/s  acc "
              f"{accuracy(items, lm)['acc']:.3f}   (HFLM, batch {args.lmeval_batch})")
    print(f"batched     {t_ours:8.1f} s  {len(items) / t_ours:8.1f} questions/s  acc {acc_o['acc']:.3f} "
          f"acc_norm {acc_o['acc_norm']:.3f}   max |Δ log-likelihood| {diff:.2e}")
    name = "eval-mc-llava" if args.llava else "eval-mc"
    best = min(t for t in (t_base, t_lm) if t is not None)
    strongest = "lm-eval" if best == t_lm else "per-option"
    extra = f" lmeval_ratio={t_lm / t_ours:.2f}" if t_lm is not None else ""
    print(f"RESULT {name} ratio={best / t_ours:.2f} target=1 strongest={strongest} per_option_ratio="
          f"{t_base / t_ours:.2f}{extra} questions={len(items)} max_abs_diff={diff:.1e} "
          f"device={device}" + (" image_tokens=576" if args.llava else ""))


if __name__ == "__main__":
    main()
