"""Human-readable manifests (``pipe show``) and dataset cards (``pipe push``)."""

from __future__ import annotations

import json
from typing import Any


def format_manifest(m: dict[str, Any], path: str, units: bool = False) -> str:
    t = m["totals"]
    lines = [f"{path}  [{m.get('stage')}]  {'complete' if m.get('complete') else 'INCOMPLETE'}",
             f"  units     {t['units_done']}/{t['units_planned']} done",
             f"  rows      in {t['rows_in']:,} = out {t['rows_out']:,} + rejected {t['rows_rejected']:,}"
             f"   ({'balanced' if t['balanced'] else 'NOT BALANCED'})"]
    for reason, count in t["rejected_by_reason"].items():
        share = count / t["rows_in"] if t["rows_in"] else 0.0
        lines.append(f"    rejected {reason:<20s} {count:>10,}  ({share:.1%})")
    if m.get("stats"):
        lines.append("  stats     " + ", ".join(f"{k}={v:,}" for k, v in sorted(m["stats"].items())))
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
