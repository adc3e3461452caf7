"""``pipe show``: a shard directory's manifest in human form (counts, reasons, mixture and packing
tables, the first packed row decoded). Dataset cards are in :mod:`lrpipe.hub`, pages in :mod:`lrpipe.page`."""

from __future__ import annotations

import json
from typing import Any


def first_row(sd: Any) -> dict[str, Any] | None:
    """The first row of a shard directory's first non-empty data file (units may have kept no row)."""
    from lrpipe.shards import read_arrow

    for f in sd.data_files():
        t = read_arrow(f)
        if t.num_rows:
            return t.slice(0, 1).to_pylist()[0]
    return None


def format_manifest(m: dict[str, Any], path: str, units: bool = False) -> str:
    t = m["totals"]
    verb = "packed" if m.get("stage") == "pack" else "used"
    out = (f"out {t['rows_out']:,}" if "rows_consumed" not in t else
           f"{verb} {t['rows_consumed']:,} (into {t['rows_out']:,} rows)")
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
    if m.get("stage") == "mix" and m.get("mix"):
        lines.extend(format_mix(m["mix"], st))
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
                            else "")
                         + (f"  rank {u['rank']} on {u.get('host') or '?'}" if u.get("rank") is not None else ""))
    return "\n".join(lines)


def mix_rows(plan: dict[str, Any], stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The mixture per source: requested quantity and share, realized rows and tokens with their shares
    (realized = what the finished units hold), and rows and tokens per language. ``pipe show`` prints
    it, ``pipe report`` draws it."""
    rows_total = sum(v for k, v in stats.items() if k.startswith("rows:") and k.count(":") == 1)
    tok_total = sum(v for k, v in stats.items() if k.startswith("tokens:") and k.count(":") == 1)
    out = []
    for e in plan.get("sources", []):
        name = e["name"]
        kind, q = next(iter(e["requested"].items()))
        r, tk = stats.get(f"rows:{name}", 0), stats.get(f"tokens:{name}", 0)
        out.append({"source": name, "requested": f"{q:,.0f} {kind}", "requested_share": e.get("requested_share", {}).get(kind),
                    "rows": r, "row_share": r / rows_total if rows_total else 0.0, "tokens": tk,
                    "token_share": tk / tok_total if tok_total else 0.0,
                    "languages": {lang: stats.get(f"rows:{name}:{lang}", 0) for lang in e.get("by_language", {})},
                    "language_tokens": {lang: stats.get(f"tokens:{name}:{lang}", 0) for lang in e.get("by_language", {})},
                    "parallel": e.get("parallel")})
    return out


def format_mix(plan: dict[str, Any], stats: dict[str, Any]) -> list[str]:
    """The mixture table of :func:`mix_rows` as text."""
    lines = [f"  mixture   {plan.get('name')}  seed {plan.get('seed')}  tokenizer {plan.get('tokenizer')}",
             f"    {'source':<22s} {'requested':>22s} {'req. share':>10s} {'rows':>12s} {'row share':>9s} "
             f"{'tokens':>14s} {'tok share':>9s}"]
    for m in mix_rows(plan, stats):
        r, tk, req_share = m["rows"], m["tokens"], m["requested_share"]
        lines.append(f"    {m['source']:<22s} {m['requested']:>22s} "
                     f"{(f'{req_share:.2%}' if req_share is not None else '-'):>10s} {r:>12,} "
                     f"{m['row_share']:>9.2%} {tk:>14,} {m['token_share']:>9.2%}")
        for lang, lr in m["languages"].items():
            lt = m["language_tokens"][lang]
            lines.append(f"      {lang:<20s} {'':>22s} {'':>10s} {lr:>12,} {(lr / r if r else 0):>9.2%} {lt:>14,} "
                         f"{(lt / tk if tk else 0):>9.2%}")
        par = m["parallel"]
        if par:
            extra = ", ".join(f"{k} {v:,}" for k, v in par.items() if k.startswith("only_"))
            lines.append(f"      swap: target share {par['target_share']:.4f} (requested {par['target_share_requested']}) "
                         f"of {par['paired_selected']:,} paired ids; unpaired {extra} -> {par['unpaired']}")
    return lines


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


def describe(path: str | Any, as_json: bool = False, units: bool = False) -> str:
    """``pipe show``: the manifest of a shard directory, or of every shard directory in a folder (a
    pipeline's ``--out``), as text or JSON; a packed directory adds its first row decoded."""
    from pathlib import Path

    from lrpipe.errors import InputError
    from lrpipe.shards import ShardDir

    path = Path(path)
    dirs = [path] if ShardDir.is_shard_dir(path) else sorted(
        p for p in path.iterdir() if ShardDir.is_shard_dir(p)) if path.is_dir() else []
    if not dirs:
        raise InputError("not a shard directory (and holds none)", path=str(path))
    parts = []
    for d in dirs:
        sd = ShardDir.open(d)
        m = sd.manifest()
        parts.append(json.dumps(m, indent=2, default=str) if as_json else format_manifest(m, str(d), units))
        first = first_row(sd) if m.get("stage") == "pack" and not as_json else None
        if first is not None:
            from lrpipe.models import load_tokenizer

            parts.append("  first packed row (documents ║, loss ⟦…⟧):\n"
                         + format_packed_row(first, load_tokenizer(m["config"]["tokenizer"])))
    return "\n".join(parts)
