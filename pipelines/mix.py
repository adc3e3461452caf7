"""``pipe mix``: bilingual training mixtures from shard directories, files or Hub datasets (README: "Mixtures" and "Packing for training").

A mixture is a YAML recipe (:class:`MixRecipe`) of sources, each with a language and a quantity:
every row once (the default), ``epochs`` (up- or down-sampling factor), an absolute ``rows`` or
``tokens`` budget, or a ``weight`` that takes its share of the recipe's ``total`` rows or tokens.

**Parallel swap.** A source may be ``parallel``: an English and a target-language version of the
same rows (same ids, as ``pipe translate`` writes them). ``target_share`` picks the target version
for that share of the ids and the English one for the rest. Ids are ordered by a hash of
``(seed, id)`` and the target ids are the *first* ``round(share × n)`` of that order, so the share
is exact, each id appears once, the id set does not depend on the share, and the target ids at a
smaller share are a subset of those at a larger one: 0/20/80/100 splits differ only in language.
Ids present in one language only are counted and either dropped (``unpaired: drop``) or kept in
their only language (``keep``).

**Sampling** is deterministic too: rows are ordered by a hash of ``(seed, id)`` (not of the source
name, so two sources holding the same ids, such as the English and target instruction sets of the
study's EN+EU grid cells, sample the same ids); a quantity of ``q`` times the pool takes ``floor(q)``
copies of every row plus the first rows of that order up to the remainder (in rows, or in tokens
counted with the training model's tokenizer exactly as ``pipe pack`` will count them).

**How it runs.** ``prepare`` indexes every source unit once (ids and token counts, resumable files
under ``.work/``, split across ranks and worker processes), then computes the selection from the
index in memory (NumPy; seconds for millions of rows, identical on every rank). Each output unit is
one input unit: its selected rows with ``id``, ``source``, ``language`` and ``copy`` columns, cast
to the union schema of all sources so ``datasets`` reads the directory as one table. Rows not
selected go to ``rejected/`` as slim records (id and reason: ``not_sampled``, ``swapped``,
``unpaired``), so every input row is accounted for without copying the data again. The output is
not globally shuffled: training shuffles packed rows, and ``pipe pack`` packs per unit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lrpipe.chat import is_message_type
from lrpipe.errors import InputError
from lrpipe.languages import language_view
from lrpipe.phases import run_phase
from lrpipe.pipelines.mix_recipe import MixRecipe, MixSource
from lrpipe.runner import MapStage, RunReport, UnitOutput, run_stage
from lrpipe.shards import REJECT_DETAIL, REJECT_REASON, ShardDir, UnitSpec, atomic_ipc_file, read_arrow
from lrpipe.sources import Source, open_source

INDEX_SCHEMA = pa.schema([("id", pa.string()), ("tokens", pa.int64())])
ADDED = [("id", pa.string()), ("source", pa.string()), ("language", pa.string()), ("copy", pa.int32())]


# ------------------------------------------------------------------------------------------ selection
def order_key(ids: list[str], seed: int, salt: str = "") -> np.ndarray:
    """A uint64 per id from ``(seed, salt, id)``: the deterministic random order of sampling/swap."""
    import xxhash

    prefix = f"{seed}:{salt}:".encode()
    return np.fromiter((xxhash.xxh3_64_intdigest(prefix + i.encode()) for i in ids), np.uint64, len(ids))


def multiplicity(order: np.ndarray, sizes: np.ndarray, target: float) -> np.ndarray:
    """Copies of each row so that the sum of ``sizes`` over copies comes closest to ``target``:
    ``floor(target / total)`` full copies, then whole rows in ``order`` (indices) up to the rest."""
    n = len(sizes)
    counts = np.zeros(n, np.int64)
    total = float(sizes.sum())
    if n == 0 or total <= 0 or target <= 0:
        return counts
    full = int(target // total)
    counts += full
    rest = target - full * total
    if rest > 0:
        cum = np.cumsum(sizes[order], dtype=np.float64)
        m = int(np.searchsorted(cum, rest))  # first prefix reaching `rest`: m + 1 rows
        if m >= n:
            m = n - 1
        below = cum[m - 1] if m > 0 else 0.0
        take = m + 1 if cum[m] - rest <= rest - below else m
        counts[order[:take]] += 1
    return counts


def hash_order(keys: np.ndarray) -> np.ndarray:
    """Indices sorted by key, ties by position (stable), so equal inputs give equal orders."""
    return np.argsort(keys, kind="stable")


# ------------------------------------------------------------------------------------------ stage
class MixStage(MapStage):
    name = "mix"

    def __init__(self, recipe: MixRecipe, tokenizer: Any | None, tokenizer_id: str | None,
                 sources: dict[tuple[str, str], Source] | None = None) -> None:
        self.recipe, self.tok, self.tokenizer_id = recipe, tokenizer, tokenizer_id
        self.langs = recipe.languages()
        self.sources = sources or {}
        for s in recipe.sources:
            for lang, spec in (s.parallel or {s.language: s.input}).items():  # type: ignore[dict-item]
                if (s.name, lang) not in self.sources:
                    self.sources[(s.name, lang)] = open_source(spec, split=s.split, rows_per_unit=recipe.rows_per_unit,
                                                               id_field=s.id_field)
        self._plan: list[UnitSpec] | None = None
        self.counts: dict[int, np.ndarray] = {}  # unit index -> copies per row
        self.reasons: dict[int, np.ndarray] = {}  # unit index -> reason code per row (0 = selected)
        self.schema: pa.Schema | None = None
        self.report: dict[str, Any] = {}
        self._unit_ids: dict[int, list[str]] = {}
        self._unit_tokens: dict[int, np.ndarray] = {}

    # ---------------------------------------------------------------- plan / config
    def config(self) -> dict[str, Any]:
        return {"recipe": self.recipe.model_dump(exclude={"description"}), "tokenizer": self.tokenizer_id,
                "inputs": {f"{n}:{lang}": src.identity() for (n, lang), src in self.sources.items()}}

    def inputs(self) -> list[dict[str, Any]]:
        return [{"source": n, "language": lang, **src.describe()} for (n, lang), src in self.sources.items()]

    def plan(self) -> list[UnitSpec]:
        if self._plan is None:
            plan = []
            for s in self.recipe.sources:
                for lang in (s.parallel or {s.language: None}):
                    for u in self.sources[(s.name, lang)].units():  # type: ignore[index]
                        plan.append(UnitSpec(index=len(plan), name=f"{s.name}:{lang}:{u.name}",
                                             params={"source": s.name, "language": lang, "rows": u.params.get("rows", 0),
                                                     "inner": {"index": u.index, "name": u.name, "params": u.params}}))
            self._plan = plan
        return self._plan

    def _inner(self, unit: UnitSpec) -> tuple[MixSource, Source, UnitSpec]:
        p = unit.params
        spec = next(s for s in self.recipe.sources if s.name == p["source"])
        return spec, self.sources[(p["source"], p["language"])], UnitSpec(**p["inner"])

    def read(self, unit: UnitSpec) -> pa.Table:
        """The unit's rows as its side's language sees them (:func:`lrpipe.languages.language_view`),
        with the source's ``id``."""
        spec, src, inner = self._inner(unit)
        t = src.read_unit(inner)
        if spec.language_columns:
            t = language_view(t, unit.params["language"], self.langs)
        return t

    def source_rejects(self, unit: UnitSpec) -> pa.Table | None:
        _, src, inner = self._inner(unit)
        return src.rejects(inner)

    # ---------------------------------------------------------------- prepare: index, select
    def prepare(self, shard: ShardDir, rank: int, world_size: int) -> None:
        plan = self.plan()
        files = run_phase(shard.path / ".work" / "mix" / "index", plan, lambda u: f"{u.part}.arrow",
                          lambda u, f: self._index(f, u), rank=rank, world_size=world_size, workers=self.workers,
                          what="mix index")
        self._select(plan, files)
        if rank == 0:
            atomic_json(shard.path / "mix.json", self.report)

    def _index(self, path: Path, unit: UnitSpec) -> None:
        t = self.read(unit)
        # only text columns reach the counter (an image column would be copied into Python for nothing)
        text_cols = [f.name for f in t.schema if f.name != "id" and (
            pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or is_message_type(f.type))]
        rows = t.select(text_cols).to_pylist() if self.tok is not None else []
        from lrpipe.tokenization import count_tokens

        tokens = count_tokens(self.tok, rows) if self.tok is not None else [0] * t.num_rows
        idx = pa.table({"id": t.column("id"), "tokens": pa.array(tokens, pa.int64())}, schema=INDEX_SCHEMA)
        # the unit's own schema (with the added columns) rides along, for the union schema
        schema = pa.schema(list(t.schema) + [pa.field(n, ty) for n, ty in ADDED if n != "id"])
        meta = {b"schema": schema.serialize().to_pybytes()}
        batches = idx.to_batches() if idx.num_rows else [pa.RecordBatch.from_pylist([], INDEX_SCHEMA)]
        atomic_ipc_file(path, batches, INDEX_SCHEMA.with_metadata(meta))

    def _select(self, plan: list[UnitSpec], files: list[Path]) -> None:
        r = self.recipe
        ids: dict[int, list[str]] = {}
        toks: dict[int, np.ndarray] = {}
        schemas = []
        for u, f in zip(plan, files):
            t = read_arrow(f)
            ids[u.index] = t.column("id").to_pylist()
            toks[u.index] = t.column("tokens").to_numpy(zero_copy_only=False).astype(np.int64)
            schemas.append(pa.ipc.read_schema(pa.py_buffer(t.schema.metadata[b"schema"])))
        self._unit_ids, self._unit_tokens = ids, toks
        try:
            self.schema = pa.unify_schemas(schemas, promote_options="permissive") if schemas else None
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise InputError(f"the sources' columns have conflicting types ({e}); rename or cast them") from e
        # quantities in the unit of the recipe's total (weights) or the source's own
        pools: dict[str, dict[str, Any]] = {}
        for s in r.sources:
            units = [u for u in plan if u.params["source"] == s.name]
            pools[s.name] = self._pool(s, units, ids, toks)
        weights = sum(s.weight or 0 for s in r.sources)
        report_sources = []
        for s in r.sources:
            pool = pools[s.name]
            sizes_rows = np.ones(len(pool["ids"]), np.float64)
            sizes_tok = pool["tokens"].astype(np.float64)
            if s.quantity == "weight":
                assert r.total is not None
                kind = "rows" if r.total.rows else "tokens"
                target = (r.total.rows or r.total.tokens or 0) * s.weight / weights  # type: ignore[operator]
            elif s.quantity in ("rows", "tokens"):
                kind, target = s.quantity, float(getattr(s, s.quantity))
            else:
                kind, target = "rows", (s.epochs if s.epochs is not None else 1.0) * len(pool["ids"])
            sizes = sizes_rows if kind == "rows" else sizes_tok
            order = hash_order(order_key(pool["ids"], r.seed))
            counts = multiplicity(order, sizes, target)
            entry = {"name": s.name, "quantity": s.quantity, "requested": {kind: target},
                     "pool_rows": len(pool["ids"]), "pool_tokens": int(sizes_tok.sum())}
            if s.weight is not None:
                entry["requested_share"] = {kind: s.weight / weights}
            self._assign(s, pool, counts, entry)
            report_sources.append(entry)
        # realized totals and shares
        tot_rows = sum(e["rows"] for e in report_sources)
        tot_tok = sum(e["tokens"] for e in report_sources)
        for e in report_sources:
            e["share"] = {"rows": e["rows"] / tot_rows if tot_rows else 0.0,
                          "tokens": e["tokens"] / tot_tok if tot_tok and self.tok is not None else None}
        self.report = {"name": r.name, "seed": r.seed, "target_lang": r.target_lang, "tokenizer": self.tokenizer_id,
                       "total": r.total.model_dump(exclude_none=True) if r.total else None,
                       "rows": tot_rows, "tokens": tot_tok if self.tok is not None else None,
                       "sources": report_sources}

    def _pool(self, s: MixSource, units: list[UnitSpec], ids: dict[int, list[str]],
              toks: dict[int, np.ndarray]) -> dict[str, Any]:
        """The source's sampling pool: one entry per id (parallel) or per row, with where it lives."""
        if s.parallel is None:  # the pool is the units' rows in plan order: (unit, first row, rows) spans
            spans, start = [], 0
            for u in units:
                spans.append((u.index, start, len(ids[u.index])))
                start += len(ids[u.index])
            return {"ids": [x for u in units for x in ids[u.index]],
                    "tokens": np.concatenate([toks[u.index] for u in units]) if units else np.zeros(0, np.int64),
                    "spans": spans}
        langs = list(s.parallel)
        where: dict[str, dict[str, tuple[int, int]]] = {}
        tok_of: dict[str, dict[str, int]] = {}
        dups: list[tuple[int, int]] = []
        for lang in langs:
            where[lang], tok_of[lang] = {}, {}
            for u in (u for u in units if u.params["language"] == lang):
                for i, x in enumerate(ids[u.index]):
                    if x in where[lang]:  # a second row with this id on this side: it cannot pair
                        dups.append((u.index, i))
                        continue
                    where[lang][x] = (u.index, i)
                    tok_of[lang][x] = int(toks[u.index][i])
        a, b = langs
        paired = [x for x in where[a] if x in where[b]]
        if not paired and where[a] and where[b]:
            from lrpipe.errors import InputError

            raise InputError(
                f"parallel source '{s.name}': its {a} and {b} sides share no id ({len(where[a])} and "
                f"{len(where[b])} rows): a translation released without its source rows' ids cannot be paired. "
                f"Name the column both sides have (id_field: uuid), or use the translation as a source of its "
                f"own (input + language) instead of a parallel one")
        only = {lang: [x for x in where[lang] if x not in where[a if lang == b else b]] for lang in langs}
        pool_ids = paired + (only[a] + only[b] if s.unpaired == "keep" else [])
        # share-independent size per id (mean of both versions), so the sampled id set is the same at
        # every target share
        tokens = np.array([(tok_of[a][x] + tok_of[b][x]) / 2 if x in where[a] and x in where[b] else
                           tok_of[a].get(x, tok_of[b].get(x, 0)) for x in pool_ids], np.float64)
        return {"ids": pool_ids, "tokens": tokens, "paired": len(paired), "where": where, "tok_of": tok_of,
                "only": only, "dups": dups}

    def _target_ids(self, ids: list[str], counts: np.ndarray, n_paired: int,
                    share: float) -> tuple[np.ndarray, np.ndarray]:
        """The selected paired ids, and which of them go in the target language: the first
        ``round(share × n)`` in the seeded swap order, so a smaller share's set is inside a larger one's."""
        chosen = np.flatnonzero(counts[:n_paired] > 0)
        swap_order = chosen[hash_order(order_key([ids[k] for k in chosen], self.recipe.seed, "swap"))]
        is_tgt = np.zeros(len(ids), bool)
        is_tgt[swap_order[:int(round(share * len(chosen)))]] = True
        return chosen, is_tgt

    def _assign(self, s: MixSource, pool: dict[str, Any], counts: np.ndarray, entry: dict[str, Any]) -> None:
        """Turn per-pool-entry copies into per-unit-row copies and reasons; fill the report entry."""
        r = self.recipe
        per_unit: dict[int, np.ndarray] = {}
        reason: dict[int, np.ndarray] = {}

        def put(u: int, i: int, c: int, why: int) -> None:
            if u not in per_unit:
                n = len(self._unit_ids[u])
                per_unit[u] = np.zeros(n, np.int64)
                reason[u] = np.full(n, NOT_SAMPLED, np.int8)
            per_unit[u][i] = c
            reason[u][i] = SELECTED if c > 0 else why

        lang_rows: dict[str, int] = {}
        lang_tokens: dict[str, int] = {}
        if s.parallel is None:
            for u, start, n in pool["spans"]:
                c = counts[start:start + n]
                per_unit[u] = c
                reason[u] = np.where(c > 0, SELECTED, NOT_SAMPLED).astype(np.int8)
            lang_rows[s.language] = int(counts.sum())  # type: ignore[index]
            lang_tokens[s.language] = int((counts * pool["tokens"]).sum())  # type: ignore[index]
        else:
            tgt = r.target_lang
            eng = next(x for x in s.parallel if x != tgt)
            share = s.target_share if s.target_share is not None else 0.0
            ids, n_paired = pool["ids"], pool["paired"]
            chosen, is_tgt = self._target_ids(ids, counts, n_paired, share)
            n_tgt = int(is_tgt.sum())
            where, tok_of = pool["where"], pool["tok_of"]
            for lang in (eng, tgt):
                lang_rows[lang] = lang_tokens[lang] = 0
            for k, x in enumerate(ids):
                c = int(counts[k])
                if k < n_paired:
                    lang, other = (tgt, eng) if is_tgt[k] else (eng, tgt)
                    put(*where[lang][x], c, NOT_SAMPLED)
                    put(*where[other][x], 0, SWAPPED if c > 0 else NOT_SAMPLED)
                else:
                    lang = eng if x in where[eng] else tgt
                    put(*where[lang][x], c, NOT_SAMPLED)
                lang_rows[lang] += c
                lang_tokens[lang] += c * tok_of[lang][x]
            if s.unpaired == "drop":
                for lang in (eng, tgt):
                    for x in pool["only"][lang]:
                        put(*where[lang][x], 0, UNPAIRED)
            for u, i in pool["dups"]:
                put(u, i, 0, DUPLICATE)
            entry["parallel"] = {
                "target_share_requested": share, "paired_ids": n_paired, "paired_selected": len(chosen),
                "target_ids": n_tgt, "target_share": n_tgt / len(chosen) if len(chosen) else 0.0,
                f"only_{eng}": len(pool["only"][eng]), f"only_{tgt}": len(pool["only"][tgt]),
                "unpaired": s.unpaired, "duplicate_ids": len(pool["dups"])}
        self.counts.update(per_unit)
        self.reasons.update(reason)
        entry["rows"] = sum(lang_rows.values())
        entry["tokens"] = sum(lang_tokens.values())
        entry["by_language"] = {lang: {"rows": lang_rows[lang], "tokens": lang_tokens[lang]} for lang in lang_rows}

    # ---------------------------------------------------------------- process
    def process(self, unit: UnitSpec) -> UnitOutput:
        t = self.read(unit)
        counts = self.counts.get(unit.index, np.zeros(t.num_rows, np.int64))
        reasons = self.reasons.get(unit.index, np.full(t.num_rows, NOT_SAMPLED, np.int8))
        if len(counts) != t.num_rows:
            raise InputError(f"unit {unit.name} has {t.num_rows} rows, the mixture index {len(counts)}: the input "
                             "changed since it was indexed (start a new output directory)")
        take = np.repeat(np.arange(t.num_rows), counts)
        copy = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, np.int64)
        kept = t.take(pa.array(take, pa.int64()))
        src, lang = unit.params["source"], unit.params["language"]
        n = kept.num_rows
        kept = kept.append_column("source", pa.array([src] * n, pa.string()))
        kept = kept.append_column("language", pa.array([lang] * n, pa.string()))
        kept = kept.append_column("copy", pa.array(copy, pa.int32()))
        kept = conform(kept, self.schema) if self.schema is not None else kept
        rej = np.flatnonzero(counts == 0)
        rejected = pa.table({"id": t.column("id").take(pa.array(rej, pa.int64())),
                             "source": pa.array([src] * len(rej), pa.string()),
                             "language": pa.array([lang] * len(rej), pa.string()),
                             REJECT_REASON: pa.array([REASONS[int(x)] for x in reasons[rej]], pa.string()),
                             REJECT_DETAIL: pa.array([REASON_DETAIL[int(x)] for x in reasons[rej]], pa.string())})
        tokens = int((counts * self._tokens_of(unit)).sum())
        stats = {f"rows:{src}": n, f"tokens:{src}": tokens, f"rows:{src}:{lang}": n, f"tokens:{src}:{lang}": tokens}
        return UnitOutput(kept=kept, rejected=rejected, rows_in=t.num_rows, stats=stats,
                          rows_consumed=int((counts > 0).sum()))

    def _tokens_of(self, unit: UnitSpec) -> np.ndarray:
        return self._unit_tokens[unit.index]


SELECTED, NOT_SAMPLED, SWAPPED, UNPAIRED, DUPLICATE = 0, 1, 2, 3, 4
REASONS = {NOT_SAMPLED: "not_sampled", SWAPPED: "swapped", UNPAIRED: "unpaired", DUPLICATE: "duplicate_id"}
REASON_DETAIL = {NOT_SAMPLED: "outside the source's row/token budget",
                 SWAPPED: "the other language's version of this id is in the mixture",
                 UNPAIRED: "id present in one language only (unpaired: drop)",
                 DUPLICATE: "an earlier row on this side of the parallel source has the same id"}


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast ``table`` to ``schema``: missing columns as nulls, the schema's column order."""
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.table(cols, schema=schema)


def atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)

def build_mix(rec: MixRecipe, out: str | Path, *, workers: int = 1, rank: int | None = None,
              world_size: int | None = None, overwrite: bool = False, progress: bool | None = None) -> RunReport:
    """Build one mixture: the recipe's tokenizer (``none`` for row quantities only) loaded once."""

    tok, tok_id = None, None
    if (rec.tokenizer or "").lower() != "none":
        from lrpipe.models import load_tokenizer, resolve_model

        tok_id = resolve_model(rec.tokenizer)
        tok = load_tokenizer(tok_id)
    return run_stage(MixStage(rec, tok, tok_id), out, rank=rank, world_size=world_size, overwrite=overwrite,
                     progress=progress, workers=workers)
