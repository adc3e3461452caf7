"""The two stages: a seeded, selected sample of the input (benchmarks) and the translation itself;
``--dry-run``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from lrpipe.engines.base import GenRequest, GenResult, Sampling
from lrpipe.pipelines.translate.checks import CHECK_REASONS, FINAL_REASONS, Checker
from lrpipe.pipelines.translate.items import extract, schema_for, texts_of
from lrpipe.pipelines.translate.prompts import PromptBuilder, load_shots
from lrpipe.pipelines.translate.recipe import Recipe
from lrpipe.runner import Attempts, GenerationStage, MapStage, UnitOutput, parse_rows
from lrpipe.seeding import seed_for
from lrpipe.shards import REJECT_DETAIL, REJECT_REASON, UnitSpec
from lrpipe.sources import Source

#: every ``reject_reason`` the two stages write: a failed translation, a row that could not be read, and
#: (the sample stage's slim records) a row outside the select or the seeded sample
REASONS = (*(f"translate_{r}" for r in (*CHECK_REASONS, "bad_input")), "not_sampled", "not_selected")


def selected(row: dict[str, Any], select: dict[str, str]) -> bool:
    """Whether the row passes the recipe's ``select``: every column's text matches its regex."""
    for col, rx in select.items():
        v = row.get(col)
        if not isinstance(v, str) or not re.search(rx, v):
            return False
    return True


class SampleStage(MapStage):
    """The recipe's ``select`` (PixMo-CapQA: yes/no questions), then a seeded subset of ``n`` of the
    selected rows (benchmarks: 2,500 in the study; ``n=None``: all of them), the same for any unit
    layout: the selected rows with the ``n`` smallest hashes of (seed, id). Selection comes first, so no
    compute is spent on rows the evaluation would skip, and both languages keep the same instances.

    Writes the source-language version (``source/``), whose ids the translation keeps. Rows left out
    are accounted for as slim rejected records (id and reason: ``not_selected``, ``not_sampled``)
    rather than copies of the data."""

    name = "sample"

    def __init__(self, source: Source, recipe: Recipe, n: int | None, seed: int) -> None:
        self.source, self.recipe, self.n, self.seed = source, recipe, n, seed
        self._kept_ids = recipe.kept_ids()
        self._chosen: dict[int, set[int]] | None = None
        self._selected: dict[int, set[int]] = {}

    def config(self) -> dict[str, Any]:
        return {"n": self.n, "seed": self.seed, "select": self.recipe.select, "input": self.source.identity(),
                "keep_ids": sorted(self._kept_ids) if self._kept_ids is not None else None}

    def inputs(self) -> list[dict[str, Any]]:
        return [self.source.describe()]

    def plan(self) -> list[UnitSpec]:
        return self.source.units()

    def _select(self, t: pa.Table) -> list[int]:
        keep = self._kept_ids
        ids = t.column("id").to_pylist() if keep is not None else None
        if not self.recipe.select:
            return [i for i in range(t.num_rows) if keep is None or ids[i] in keep]
        rows = t.select([c for c in self.recipe.select if c in t.column_names]).to_pylist()
        return [i for i, r in enumerate(rows) if selected(r, self.recipe.select) and (keep is None or ids[i] in keep)]

    def chosen(self) -> dict[int, set[int]]:
        if self._chosen is None:
            import heapq

            import xxhash

            scored = []
            for u in self.plan():
                t = self.source.read_unit(u)
                keep = self._select(t)
                self._selected[u.index] = set(keep)
                ids = t.column("id").to_pylist()
                for i in keep:
                    scored.append((xxhash.xxh3_64_intdigest(f"{self.seed}:{ids[i]}".encode()), ids[i], u.index, i))
            picked = scored if self.n is None else heapq.nsmallest(self.n, scored)
            self._chosen = {}
            for _, _, ui, i in picked:
                self._chosen.setdefault(ui, set()).add(i)
        return self._chosen

    def prepare(self, shard: Any, rank: int, world_size: int) -> None:
        self.chosen()

    def process(self, unit: UnitSpec) -> UnitOutput:
        t = self.source.read_unit(unit)
        chosen = self.chosen().get(unit.index, set())
        sel = self._selected.get(unit.index, set())
        keep = sorted(chosen)
        rest = [i for i in range(t.num_rows) if i not in chosen]
        reasons = ["not_sampled" if i in sel else "not_selected" for i in rest]
        details = {"not_sampled": f"outside the seeded sample of {self.n}",
                   "not_selected": f"does not match select {self.recipe.select}" if self.recipe.select
                   else "not among the recipe's keep_ids"}
        rejected = pa.table({"id": t.column("id").take(pa.array(rest, pa.int64())),
                             REJECT_REASON: pa.array(reasons, pa.string()),
                             REJECT_DETAIL: pa.array([details[r] for r in reasons], pa.string())})
        return UnitOutput(kept=t.take(pa.array(keep, pa.int64())), rejected=rejected, rows_in=t.num_rows,
                          stats={"selected": len(sel), "sampled": len(keep)})


def _max_lengths(schema: Any) -> int:
    """The sum of a schema's string ``maxLength`` bounds (an array of n items counts n times)."""
    if isinstance(schema, dict):
        own = int(schema.get("maxLength") or 0)
        mult = int(schema.get("maxItems") or 1) if schema.get("type") == "array" and "items" in schema and \
            isinstance(schema["items"], dict) else 1
        return own + sum(_max_lengths(v) * (mult if k == "items" else 1) for k, v in schema.items()
                         if isinstance(v, (dict, list)))
    if isinstance(schema, list):
        return sum(_max_lengths(v) for v in schema)
    return 0


@dataclass
class _Row:
    item: Any
    max_tokens: int = 0
    translation: Any = None
    reason: str = ""
    detail: str = ""
    judged: int = -1


class TranslateStage(GenerationStage):
    """Translates every row's item; retries failed attempts with new seeds in the same engine stream.

    Output columns are ``<column>_<tgt>`` for every translated column. A ``conversation:`` recipe's
    column is written in the source column's own form (ShareGPT stays ShareGPT, roles as they were), so
    both languages share one schema; a ``messages:`` recipe (Magpie's ``instruction``/``response``)
    also gets ``conversation_<tgt>``, the translated conversation in messages form. On a
    target-language row (``pipe mix``, ``pipe pack --language``) these take the place of the source
    columns, so what is trained is the translation."""

    name = "translate"

    def __init__(self, source: Source, recipe: Recipe, engine: Any, model_id: str) -> None:
        self.source, self.recipe, self.engine, self.model_id = source, recipe, engine, model_id
        self.shots = load_shots(recipe)
        self.prompts = PromptBuilder(recipe, engine.tokenizer, self.shots)
        self.checker = Checker(recipe)
        self.context = getattr(engine, "context_length", None)

    def config(self) -> dict[str, Any]:
        import hashlib

        from lrpipe.prompting import prompt_root

        r = self.recipe
        templates = [(prompt_root() / "translate" / f"{n}.j2").read_text()
                     for n in (r.system_prompt, r.user_prompt, r.completion_prompt)
                     if (prompt_root() / "translate" / f"{n}.j2").exists()]
        digest = hashlib.sha256(json.dumps([self.shots.examples, self.prompts.system, templates], sort_keys=True,
                                           ensure_ascii=False).encode()).hexdigest()[:16]
        # shots, system text and templates are in the hash (editing them is a different job), not spelled out
        return {"recipe": self.recipe.model_dump(), "model": self.model_id, "input": self.source.identity(),
                "prompt_sha256": digest, "fewshot_examples": len(self.shots.examples)}

    def inputs(self) -> list[dict[str, Any]]:
        return [self.source.describe()]

    def provenance(self) -> dict[str, Any]:
        return {"engine": self.engine.describe(), "model": self.model_id, "recipe": self.recipe.name,
                "fewshot_provenance": self.shots.meta.get("provenance"), "notes": self.checker.notes}

    def plan(self) -> list[UnitSpec]:
        return self.source.units()

    def budget(self, item: Any, prompt_len: int) -> int:
        """Output tokens for one row: the recipe's factor × the item's own tokens + margin, capped by
        ``max_tokens`` and by what the model's context leaves after the prompt."""
        s = self.recipe.sampling
        n = len(self.engine.tokenizer(self.prompts.render_item(item), add_special_tokens=False)["input_ids"])
        budget = min(s.max_tokens, int(n * s.output_factor) + s.output_margin)
        if self.recipe.max_length_ratio and self.recipe.format == "json":
            # room for every text at its character bound, one token per character at worst, plus JSON
            bound = _max_lengths(schema_for(item, self.recipe.max_length_ratio))
            budget = min(s.max_tokens, max(budget, bound + 24 * len(texts_of(item))))
        if self.context:
            budget = min(budget, self.context - prompt_len)
        return budget

    def _request(self, i: int, rid: str, st: _Row, prompt: list[int], attempt: int) -> GenRequest:
        s = self.recipe.sampling
        sampling = Sampling(temperature=s.temperature, top_p=s.top_p, max_tokens=st.max_tokens,
                            repetition_penalty=s.repetition_penalty,
                            seed=seed_for(self.recipe.seed, "translate", rid, attempt),
                            stop=self.prompts.stop(),
                            json_schema=schema_for(st.item, self.recipe.max_length_ratio) if self.recipe.format == "json" else None)
        return GenRequest(key=(i, attempt), prompt=prompt, sampling=sampling)

    def requests(self, unit: UnitSpec) -> tuple[Any, list[GenRequest]]:
        table = self.source.read_unit(unit)
        rows = table.to_pylist()
        items, bad = parse_rows(rows, lambda r: extract(r, self.recipe), unit)
        states: dict[int, _Row] = {}
        prompts: dict[int, list[int]] = {}
        reqs = []
        attempts = Attempts(self.recipe.retries)
        for i, item in items.items():
            row = rows[i]
            prompt = self.prompts.ids(item)
            st = _Row(item, max_tokens=self.budget(item, len(prompt)))
            if st.max_tokens < 16:
                bad[i] = ("too_long", f"prompt of {len(prompt)} tokens leaves {st.max_tokens} of the model's "
                                      f"{self.context}-token context for the translation")
                continue
            states[i], prompts[i] = st, prompt
            reqs.append(self._request(i, row["id"], st, prompt, attempts.start(i)))
        return {"table": table, "rows": rows, "states": states, "bad": bad, "prompts": prompts,
                "attempts": attempts}, reqs

    def _judge(self, ctx: dict[str, Any], results: dict[Any, GenResult]) -> None:
        """Check every row's newest result that has not been checked yet."""
        for i, st in ctx["states"].items():
            attempt = ctx["attempts"][i]
            if st.translation is not None or st.judged == attempt:
                continue
            res = results.get((i, attempt))
            if res is None:
                continue
            text = (res.error or res.text) if res.finish_reason == "error" else res.text
            st.translation, st.reason, st.detail = self.checker(st.item, text, res.finish_reason,
                                                                self.prompts.labels_tgt)
            st.judged = attempt

    def review(self, unit: UnitSpec, context: Any, results: dict[Any, GenResult]) -> list[GenRequest]:
        self._judge(context, results)
        more, attempts = [], context["attempts"]
        for i, st in context["states"].items():
            if st.translation is None:
                nxt = attempts.again(i, final=st.reason in FINAL_REASONS)
                if nxt is not None:
                    more.append(self._request(i, context["rows"][i]["id"], st, context["prompts"][i], nxt))
        return more

    def finalize(self, unit: UnitSpec, context: Any, results: dict[Any, GenResult]) -> UnitOutput:
        self._judge(context, results)
        table: pa.Table = context["table"]
        states: dict[int, _Row] = context["states"]
        kept = sorted(i for i, st in states.items() if st.translation is not None)
        out_cols = self._output_columns(kept, states, context["rows"], table.schema)
        kept_t = table.take(pa.array(kept, pa.int64()))
        for name, values in out_cols.items():
            if name in kept_t.column_names:
                kept_t = kept_t.drop_columns([name])
            kept_t = kept_t.append_column(name, values)
        kept_t = kept_t.append_column("translate_attempts", pa.array([context["attempts"].tries(i) for i in kept], pa.int32()))
        reasons = {i: (st.reason, st.detail) for i, st in states.items() if st.translation is None}
        reasons.update(context["bad"])
        rej_idx = sorted(reasons)
        rej = table.take(pa.array(rej_idx, pa.int64()))
        rej = rej.append_column(REJECT_REASON, pa.array([f"translate_{reasons[i][0]}" for i in rej_idx], pa.string()))
        rej = rej.append_column(REJECT_DETAIL, pa.array([reasons[i][1][:300] for i in rej_idx], pa.string()))
        out = UnitOutput(kept=kept_t, rejected=rej, rows_in=table.num_rows)
        out.stats = {"output_tokens": sum(r.output_tokens for r in results.values()),
                     "attempts": context["attempts"].tries()}
        return out

    def _output_columns(self, kept: list[int], states: dict[int, _Row], rows: list[dict[str, Any]],
                        schema: pa.Schema) -> dict[str, pa.Array]:
        from lrpipe.chat import MESSAGE_TYPE, like_source

        r, f = self.recipe, self.recipe.fields
        cols: dict[str, pa.Array] = {}
        if r.kind == "conversation":
            if f.conversation:
                vals = [like_source(states[i].translation, rows[i][f.conversation]) for i in kept]
                cols[r.output_column(f.conversation)] = pa.array(vals, schema.field(f.conversation).type)
            else:
                for k, m in enumerate(f.messages or []):
                    cols[r.output_column(m.field)] = pa.array([states[i].translation[k]["content"] for i in kept],
                                                              pa.string())
                # the translated conversation, so a target-language row trains on the translation
                cols[r.output_column("conversation")] = pa.array(
                    [[{"role": m["role"], "content": m["content"]} for m in states[i].translation] for i in kept],
                    MESSAGE_TYPE)
        else:
            cols[r.output_column(f.question)] = pa.array([states[i].translation["question"] for i in kept], pa.string())
            if f.answer:
                cols[r.output_column(f.answer)] = pa.array([states[i].translation["answer"] for i in kept],
                                                           pa.string())
            if f.answers:
                cols[r.output_column(f.answers)] = pa.array([states[i].translation["answers"] for i in kept],
                                                            pa.list_(pa.string()))
        return cols


def dry_run(source: Source, recipe: Recipe, tokenizer: Any, show: int = 2) -> dict[str, Any]:
    """Render the first prompts and estimate the whole job's tokens without an engine: exact prompt
    tokens for every row (the items are tokenized in batches; the shared prefix once), output tokens
    as the item's tokens × ``recipe.output_ratio`` plus the JSON/format overhead of the source side.
    """
    shots = load_shots(recipe)
    pb = PromptBuilder(recipe, tokenizer, shots)
    first: list[str] = []
    rows = bad = prompt_tokens = item_tokens = 0
    longest = 0
    probe = None
    for u in source.units():
        table = source.read_unit(u)
        items = []
        for r in table.to_pylist():
            rows += 1
            try:
                items.append(extract(r, recipe))
            except ValueError:
                bad += 1
        if not items:
            continue
        if probe is None:  # prompt tokens = a constant around the item + the item's own tokens
            probe = items[0]
            base = len(pb.ids(probe)) - len(tokenizer(pb.render_item(probe), add_special_tokens=False)["input_ids"])
        for item in items[:max(0, show - len(first))]:
            t = pb.text(item)
            first.append(t if isinstance(t, str) else tokenizer.apply_chat_template(t, tokenize=False,
                                                                                     add_generation_prompt=True))
        enc = tokenizer([pb.render_item(it) for it in items], add_special_tokens=False)["input_ids"]
        lengths = [len(x) for x in enc]
        item_tokens += sum(lengths)
        prompt_tokens += sum(base + n for n in lengths)
        longest = max(longest, base + max(lengths))
    n_ok = rows - bad
    out_tokens = int(item_tokens * recipe.output_ratio)
    return {"recipe": recipe.name, "mode": recipe.mode, "format": recipe.format, "rows": rows, "bad_rows": bad,
            "prompt_tokens": prompt_tokens, "template_tokens_per_row": base if probe is not None else 0,
            "item_tokens": item_tokens, "translatable_rows": n_ok,
            "output_tokens_estimate": out_tokens, "longest_prompt": longest,
            "max_tokens": recipe.sampling.max_tokens, "first_prompts": first}


def format_dry_run(est: dict[str, Any]) -> str:
    """``pipe translate --dry-run``'s report: the first prompts, then the job's estimate."""
    lines = [f"----- prompt {i} -----\n{p}" for i, p in enumerate(est.pop("first_prompts"))]
    lines.append("----- estimate (whole input) -----")
    lines += [f"{k:30s} {v:,}" if isinstance(v, int) else f"{k:30s} {v}" for k, v in est.items()]
    return "\n".join(lines)


def sample_first(source: Source, recipe: Recipe, out: Path, run: dict[str, Any]) -> tuple[Source, Path]:
    """A benchmark's rows selected and sampled (seeded) into ``out/source``, kept in the source
    language; every rank waits for the whole subset. Returns the subset and where its translation goes
    (``out/translated``)."""
    import sys

    from lrpipe.runner import run_stage
    from lrpipe.shards import wait_until_complete
    from lrpipe.sources import ShardSource

    sampled = out / "source"
    rep = run_stage(SampleStage(source, recipe, recipe.sample or None, recipe.seed), sampled,
                    **(run | {"progress": False}))
    if not rep.complete:
        wait_until_complete(sampled)
    print(f"{sampled}: {rep.rows_out} rows selected and sampled (source language)", file=sys.stderr)
    return ShardSource(sampled), out / "translated"
