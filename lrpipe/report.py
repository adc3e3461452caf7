"""Human-readable manifests (``pipe show``) and dataset cards (``pipe push``)."""

from __future__ import annotations

import json
from typing import Any


def format_manifest(m: dict[str, Any], path: str, units: bool = False) -> str:
    t = m["totals"]
    out = (f"out {t['rows_out']:,}" if "rows_consumed" not in t else
           f"packed {t['rows_consumed']:,} (into {t['rows_out']:,} rows)")
    lines = [f"{path}  [{m.get('stage')}]  {'complete' if m.get('complete') else 'INCOMPLETE'}",
             f"  units     {t['units_done']}/{t['units_planned']} done",
             f"  rows      in {t['rows_in']:,} = {out} + rejected {t['rows_rejected']:,}"
             f"   ({'balanced' if t['balanced'] else 'NOT BALANCED'})"]
    for reason, count in t["rejected_by_reason"].items():
        share = count / t["rows_in"] if t["rows_in"] else 0.0
        lines.append(f"    rejected {reason:<20s} {count:>10,}  ({share:.1%})")
    if m.get("stats"):
        lines.append("  stats     " + ", ".join(f"{k}={v:,}" for k, v in sorted(m["stats"].items())))
    st = m.get("stats") or {}
    if m.get("stage") == "pack" and st.get("bins"):
        total = st["tokens_in"] + st["pad_tokens"]
        lines.append(f"  packing   tokens in {st['tokens_in']:,}, loss tokens {st['loss_tokens']:,} "
                     f"({st['loss_tokens'] / max(st['tokens_in'], 1):.1%}), padding waste "
                     f"{st['pad_tokens'] / max(total, 1):.2%}, documents per row {st['documents'] / st['bins']:.2f}")
    prov = m.get("provenance") or {}
    if prov:
        lines.append("  provenance " + json.dumps(prov, default=str))
    for inp in m.get("inputs") or []:
        lines.append("  input     " + json.dumps(inp, default=str))
    lines.append(f"  version   lrpipe {m.get('version')}   config hash {m.get('config_hash')}")
    lines.append("  config    " + json.dumps(m.get("config"), default=str)[:2000])
    if units:
        for u in m["units"]:
            lines.append(f"    {u['file']:<18s} {u['status']:<8s} {u['name']:<40s} "
                         + (f"in {u['rows_in']} out {u['rows_out']} rej {u['rows_rejected']}" if u["status"] == "done"
                            else ""))
    return "\n".join(lines)


def dataset_card(m: dict[str, Any], repo_id: str, files: dict[str, list[str]]) -> str:
    t = m["totals"]
    configs = "\n".join(f"  - split: {split}\n    path: \"{split_files[0].rsplit('/', 1)[0]}/*\""
                        for split, split_files in files.items() if split_files)
    reasons = "\n".join(f"| {k} | {v:,} |" for k, v in t["rejected_by_reason"].items()) or "| (none) | 0 |"
    return f"""---
configs:
- config_name: default
  data_files:
{configs}
tags:
- lrpipe
- synthetic
---

# {repo_id}

Made with [pipe](https://pypi.org/project/lrpipe/) (lrpipe {m.get('version')}), stage `{m.get('stage')}`.

## Counts

| | rows |
|---|---:|
| in | {t['rows_in']:,} |
| kept (train) | {t['rows_out']:,} |
| rejected | {t['rows_rejected']:,} |

Rejected rows by reason:

| reason | rows |
|---|---:|
{reasons}

## Provenance

```json
{json.dumps(m.get('provenance'), indent=2, default=str)}
```

Inputs:

```json
{json.dumps(m.get('inputs'), indent=2, default=str)}
```

## Configuration (hash `{m.get('config_hash')}`)

```json
{json.dumps(m.get('config'), indent=2, default=str)}
```
"""


def format_packed_row(row: dict[str, Any], tokenizer: Any, max_chars: int = 4000) -> str:
    """One packed row decoded, documents separated by ``║``, loss spans in ``⟦…⟧``, padding counted:
    what the model will be trained on, for a human to check."""
    out, start = [], 0
    n_docs = len(row["source_ids"])
    for k, n in enumerate(row["seq_lens"]):
        ids, labels = row["input_ids"][start:start + n], row["labels"][start:start + n]
        start += n
        if k >= n_docs:
            out.append(f"║ <{n} padding tokens>")
            break
        parts, run, in_loss = [], [], False
        for t, lab in zip(ids, labels):
            has = lab != -100
            if has != in_loss and run:
                text = tokenizer.decode(run)
                parts.append(f"⟦{text}⟧" if in_loss else text)
                run = []
            in_loss = has
            run.append(t)
        if run:
            text = tokenizer.decode(run)
            parts.append(f"⟦{text}⟧" if in_loss else text)
        out.append(f"║ [{row['source_ids'][k]}, {n} tokens] " + "".join(parts))
    text = "\n".join(out)
    return text if len(text) <= max_chars else text[:max_chars] + f"... ({len(text) - max_chars} more chars)"
