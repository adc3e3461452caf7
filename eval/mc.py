"""Multiple-choice scoring by log-likelihood (A-OKVQA's four choices, PixMo-CapQA's yes/no, and any
text task), batched so that a question's shared prefix is computed once (README: "Evaluation").

**How.** Per question the context (chat-templated question, with the image tokens for a
LLaVA-style model) and *all* its options go into one sequence: ``context, option 1, option 2, …``.
A block attention mask lets every option token see the context and the earlier tokens of its own
option only, and position ids restart after the context for each option, so each option is scored
exactly as if it followed the context alone — but the context (hundreds of tokens with an image) is
encoded once instead of once per option, and many questions share a forward pass (padded rows).
Only the hidden states at the positions that predict option tokens go through the LM head.

The reference path (``score_per_option``) runs one forward pass per option, as lmms-eval does; the
tests check both give the same log-likelihoods to 1e-4, and ``bench/eval_mc.py`` measures the speed.

**Metrics** (as lm-eval defines them): ``acc`` = the option with the highest total log-likelihood is
the gold one; ``acc_norm`` = the same after dividing each option's log-likelihood by its length in
characters (``len(text)``), which removes the bias towards short options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class MCItem:
    """One question: context token ids, option token ids (and texts, for acc_norm), the gold index,
    and optionally the image inputs of a LLaVA-style model (``pixel_values`` for this question)."""

    context: list[int]
    options: list[list[int]]
    gold: int | None = None
    option_texts: list[str] | None = None
    pixel_values: Any = None
    key: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _base_and_head(model: Any) -> tuple[Any, Any]:
    """The decoder (returning final-norm hidden states) and the LM head of a causal LM or LLaVA."""
    base = getattr(model, "model", None)
    head = model.get_output_embeddings()
    if base is None or head is None:
        raise ValueError(f"{type(model).__name__}: expected a '.model' decoder and an output embedding")
    return base, head


def score_batched(model: Any, items: list[MCItem], *, max_tokens: int = 4096, pad_id: int = 0) -> list[list[float]]:
    """Log-likelihood of every option of every item, several items per forward pass, each context
    computed once. ``max_tokens`` bounds the padded tokens per pass (memory)."""
    import torch

    out: list[list[float] | None] = [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: -_length(items[i]))  # similar lengths together
    batch: list[int] = []
    for i in order:
        longest = max([_length(items[j]) for j in batch] + [_length(items[i])])
        if batch and (len(batch) + 1) * longest > max_tokens:
            _run(model, items, batch, out, pad_id, torch)
            batch = []
        batch.append(i)
    if batch:
        _run(model, items, batch, out, pad_id, torch)
    return out  # type: ignore[return-value]


def _length(item: MCItem) -> int:
    return len(item.context) + sum(len(o) for o in item.options)


def _run(model: Any, items: list[MCItem], idx: list[int], out: list, pad_id: int, torch: Any) -> None:
    base, head = _base_and_head(model)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    T = max(_length(items[i]) for i in idx)
    B = len(idx)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    allowed = torch.zeros((B, T, T), dtype=torch.bool)
    gathers = []  # per item: (row, [(predecessor positions, target ids)] per option)
    for b, i in enumerate(idx):
        it = items[i]
        lc = len(it.context)
        seq = list(it.context)
        ids_pos = list(range(lc))
        allowed[b, :lc, :lc] = torch.tril(torch.ones(lc, lc, dtype=torch.bool))
        opts = []
        start = lc
        for o in it.options:
            k = len(o)
            seq += o
            ids_pos += list(range(lc, lc + k))
            allowed[b, start:start + k, :lc] = True
            allowed[b, start:start + k, start:start + k] = torch.tril(torch.ones(k, k, dtype=torch.bool))
            preds = [lc - 1] + list(range(start, start + k - 1))
            opts.append((preds, o))
            start += k
        n = len(seq)
        ids[b, :n] = torch.tensor(seq)
        pos[b, :n] = torch.tensor(ids_pos)
        for p in range(n, T):  # padding attends to itself only (no empty rows in the softmax)
            allowed[b, p, p] = True
        gathers.append((b, opts))
    mask = torch.zeros((B, 1, T, T), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                              "position_ids": pos.to(device)}
    pixels = [items[i].pixel_values for i in idx]
    if any(p is not None for p in pixels):
        kwargs["pixel_values"] = torch.cat([p for p in pixels if p is not None]).to(device, dtype)
    with torch.inference_mode():
        hidden = base(**kwargs).last_hidden_state
        rows, cols, targets, owner = [], [], [], []
        for b, opts in gathers:
            for k, (preds, toks) in enumerate(opts):
                rows += [b] * len(preds)
                cols += preds
                targets += toks
                owner += [(b, k)] * len(preds)
        logits = head(hidden[torch.tensor(rows), torch.tensor(cols)]).float()
        lp = torch.log_softmax(logits, dim=-1)[torch.arange(len(targets)), torch.tensor(targets, device=device)]
    sums: dict[tuple[int, int], float] = {}
    for o, v in zip(owner, lp.cpu().tolist()):
        sums[o] = sums.get(o, 0.0) + v
    for b, i in enumerate(idx):
        out[i] = [sums[(b, k)] for k in range(len(items[i].options))]


def score_per_option(model: Any, items: list[MCItem]) -> list[list[float]]:
    """The reference: one forward pass per (question, option) on ``context + option``."""
    import torch

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = []
    for it in items:
        scores = []
        for o in it.options:
            ids = torch.tensor([it.context + o], device=device)
            kwargs: dict[str, Any] = {"input_ids": ids}
            if it.pixel_values is not None:
                kwargs["pixel_values"] = it.pixel_values.to(device, dtype)
            with torch.inference_mode():
                logits = model(**kwargs).logits[0].float()
            lc = len(it.context)
            lp = torch.log_softmax(logits[lc - 1:lc - 1 + len(o)], dim=-1)
            scores.append(float(lp[torch.arange(len(o)), torch.tensor(o, device=device)].sum()))
        out.append(scores)
    return out


def accuracy(items: list[MCItem], scores: list[list[float]]) -> dict[str, float]:
    """``acc`` and ``acc_norm`` (log-likelihood per character of the option text) over the items."""
    acc, acc_norm = [], []
    for it, s in zip(items, scores):
        if it.gold is None:
            continue
        acc.append(int(np.argmax(s)) == it.gold)
        texts = it.option_texts or [str(k) for k in range(len(s))]
        acc_norm.append(int(np.argmax([v / max(len(t), 1) for v, t in zip(s, texts)])) == it.gold)
    return {"acc": float(np.mean(acc)) if acc else float("nan"),
            "acc_norm": float(np.mean(acc_norm)) if acc_norm else float("nan"), "n": len(acc)}
