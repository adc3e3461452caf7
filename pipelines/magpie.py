"""Magpie sampling (README: "`pipe run magpie`"): sample instructions from an instruct model's pre-query template, answer
them with the same model, filter — three resumable shard directories under ``--out``.

The requested number of instructions is spread over the (category × temperature) cells by weight,
with the largest-remainder rule so the counts add up exactly; each cell is cut into chunks, which are
the work units. Ids (``math-000123``) and per-request seeds are functions of (seed, category, index)
only, so the same command gives the same rows, and a resumed run gives the same rows as an
uninterrupted one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field, field_validator, model_validator

from lrpipe.chat import MESSAGE_TYPE, PreQuery, chat_prompt_ids, pre_query
from lrpipe.engines.base import Engine, GenRequest, GenResult, Sampling
from lrpipe.errors import InputError
from lrpipe.prompting import list_prompts, load_prompt
from lrpipe.runner import GenerationStage, RunReport, UnitOutput, run_stage
from lrpipe.seeding import seed_for
from lrpipe.shards import REJECT_DETAIL, REJECT_REASON, UnitSpec
from lrpipe.sources import ShardSource

log = logging.getLogger(__name__)

CATEGORIES = ("general", "math", "arithmetic", "code", "translation")


def parse_temps(spec: str) -> list[float]:
    """``a:b`` = ten evenly spaced values from a to b inclusive (the study's grid), ``a:b:k`` = k values,
    ``x,y,z`` = a list, ``x`` = one value."""
    s = spec.strip()
    try:
        if ":" in s:
            parts = [p for p in s.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            a, b = float(parts[0]), float(parts[1])
            k = int(parts[2]) if len(parts) == 3 else 10
            if k < 1 or (k == 1 and a != b):
                raise ValueError
            if k == 1:
                return [round(a, 6)]
            return [round(a + (b - a) * i / (k - 1), 6) for i in range(k)]
        vals = [round(float(x), 6) for x in s.split(",") if x.strip()]
        if not vals:
            raise ValueError
        return vals
    except ValueError as e:
        raise InputError(f"bad --temps '{spec}': use a:b (10 values), a:b:k, or a comma list", field="temps") from e


def spread(n: int, weights: list[float]) -> list[int]:
    """Largest-remainder apportionment of ``n`` over ``weights`` (ties by position): sums to n exactly."""
    total = sum(weights)
    if total <= 0:
        raise InputError("category weights must sum to a positive number", field="weights")
    raw = [n * w / total for w in weights]
    counts = [int(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def is_embedded(model: str | None) -> bool:
    """Whether ``model`` names the embedded default model (how the CLI and the tests name it)."""
    from lrpipe.models import DEFAULT_MODEL

    return model is None or str(model).startswith("embedded") or str(model) in (
        DEFAULT_MODEL, f"HuggingFaceTB/{DEFAULT_MODEL}")


def default_filters(quality: bool) -> list[str | dict[str, Any]]:
    """The study's four filters (A.1), dedup before the judging so duplicates are not rated. ``quality``
    is left out for the embedded 135M model, which rates everything "very poor" and would empty the
    quickstart (the CLI says so when it leaves it out)."""
    chain: list[str | dict[str, Any]] = ["empty", "unfinished", "dedup",
                                         {"name": "repetition", "field": ["instruction", "response"]}]
    if quality:
        chain.append({"name": "quality", "field": ["instruction", "response"]})
    return chain


class ResponseConfig(BaseModel):
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_tokens: int = Field(4096, gt=0)


class MagpieConfig(BaseModel):
    """Everything that determines the rows; hashed into the manifest (changing it into the same
    ``--out`` is refused)."""

    model: str
    n: int = Field(1000, gt=0)
    temps: list[float] = Field(default_factory=lambda: parse_temps("0.8:1.2"))
    categories: dict[str, float] = Field(default_factory=lambda: dict.fromkeys(CATEGORIES, 1.0))
    system_prompts: dict[str, str | None] = Field(default_factory=dict)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, gt=0)
    chunk_size: int = Field(500, gt=0)
    seed: int = 0
    response: ResponseConfig = Field(default_factory=ResponseConfig)
    # The study's filters (A.1): duplicates, repetitive prompts or responses, poor quality (judged by
    # the model itself, prompts or responses) and unfinished instructions: `default_filters`.
    # Without `filters`, the chain is `default_filters`, with `quality` unless the model is the embedded one.
    filters: list[str | dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _default_chain(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("filters"):
            data = {**data, "filters": default_filters(quality=not is_embedded(data.get("model")))}
        return data

    @field_validator("temps")
    @classmethod
    def _temps(cls, v: list[float]) -> list[float]:
        if not v or any(t < 0 for t in v):
            raise ValueError("temperatures must be non-negative and at least one")
        if len(set(v)) != len(v):
            raise ValueError("temperatures must be distinct")
        return v

    def resolved_system_prompts(self, prompts_dir: str | None = None) -> dict[str, str | None]:
        """System prompt text per category: given in the config, else the file in ``prompts/magpie``
        (an empty file means the model's default system prompt)."""
        out: dict[str, str | None] = {}
        for cat in self.categories:
            if cat in self.system_prompts:
                out[cat] = self.system_prompts[cat] or None
            else:
                if cat not in list_prompts("magpie", prompts_dir):
                    raise InputError(f"no system prompt for category '{cat}' (add prompts/magpie/{cat}.j2)",
                                     field="categories")
                out[cat] = load_prompt("magpie", cat, prompts_dir) or None
        return out


# ----------------------------------------------------------------------------------------- schemas
SAMPLE_SCHEMA = pa.schema([
    ("id", pa.string()), ("category", pa.string()), ("system_prompt", pa.string()),
    ("instruction", pa.string()), ("temperature", pa.float64()), ("top_p", pa.float64()),
    ("seed", pa.int64()), ("model", pa.string()), ("instruction_finish_reason", pa.string()),
    ("instruction_tokens", pa.int64()),
])
RESPONSE_FIELDS = [
    ("response", pa.string()), ("conversation", MESSAGE_TYPE), ("response_temperature", pa.float64()),
    ("response_top_p", pa.float64()), ("response_seed", pa.int64()), ("response_finish_reason", pa.string()),
    ("response_tokens", pa.int64()),
]
RESPOND_SCHEMA = pa.schema(list(SAMPLE_SCHEMA) + RESPONSE_FIELDS)


def _with_reject(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(REJECT_REASON, pa.string())).append(pa.field(REJECT_DETAIL, pa.string()))


def _unit_output(rows: list[tuple[dict[str, Any], GenResult]], text_field: str,
                 schema: pa.Schema) -> UnitOutput:
    """A generation unit's rows split into kept and rejected: a failed result (engine error, cut at
    ``max_tokens``, empty) is rejected with its reason and the raw, unstripped text in ``text_field``."""
    kept, rejected = [], []
    for row, res in rows:
        why = _reject_reason(res)
        if why:
            row[REJECT_REASON], row[REJECT_DETAIL] = why
            row[text_field] = res.text
            rejected.append(row)
        else:
            kept.append(row)
    return UnitOutput(kept=pa.Table.from_pylist(kept, schema),
                      rejected=pa.Table.from_pylist(rejected, _with_reject(schema)), rows_in=len(rows),
                      stats={"output_tokens": sum(res.output_tokens for _, res in rows)})


def _reject_reason(res: GenResult) -> tuple[str, str] | None:
    if res.finish_reason == "error":
        return "engine_error", (res.error or "")[:500]
    if res.finish_reason == "length":
        return "max_tokens", f"cut at {res.output_tokens} tokens"
    if not res.text.strip():
        return "empty", "the model produced only whitespace"
    return None


# ----------------------------------------------------------------------------------------- stages
@dataclass
class _Cell:
    category: str
    temp_index: int
    temperature: float
    start: int  # first index within the category
    count: int


class SampleStage(GenerationStage):
    """Instruction sampling from the pre-query template."""

    name = "magpie.sample"

    def __init__(self, cfg: MagpieConfig, engine: Engine, model_id: str, prompts_dir: str | None = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.model_id = model_id
        self.system_prompts = cfg.resolved_system_prompts(prompts_dir)
        self._pre: dict[str, PreQuery] = {}

    def pre(self, category: str) -> PreQuery:
        if category not in self._pre:
            self._pre[category] = pre_query(self.engine.tokenizer, self.system_prompts[category])
        return self._pre[category]

    def config(self) -> dict[str, Any]:
        c = self.cfg.model_dump(exclude={"response", "filters"})
        c["system_prompts"] = self.system_prompts
        c["pre_query"] = {cat: self.pre(cat).text for cat in self.cfg.categories}
        return c

    def provenance(self) -> dict[str, Any]:
        return {"engine": self.engine.describe(), "model": self.model_id}

    def cells(self) -> list[_Cell]:
        cats = list(self.cfg.categories)
        weights = [self.cfg.categories[c] / len(self.cfg.temps) for c in cats for _ in self.cfg.temps]
        counts = spread(self.cfg.n, weights)
        cells, k = [], 0
        for c in cats:
            start = 0
            for ti, t in enumerate(self.cfg.temps):
                cells.append(_Cell(c, ti, t, start, counts[k]))
                start += counts[k]
                k += 1
        return cells

    def plan(self) -> list[UnitSpec]:
        units: list[UnitSpec] = []
        for cell in self.cells():
            for j, s in enumerate(range(0, cell.count, self.cfg.chunk_size)):
                n = min(self.cfg.chunk_size, cell.count - s)
                units.append(UnitSpec(index=len(units), name=f"{cell.category}/t={cell.temperature:g}/chunk-{j}",
                                      params={"category": cell.category, "temperature": cell.temperature,
                                              "start": cell.start + s, "rows": n}))
        return units

    def requests(self, unit: UnitSpec) -> tuple[Any, list[GenRequest]]:
        p = unit.params
        pre = self.pre(p["category"])
        reqs = []
        for i in range(p["start"], p["start"] + p["rows"]):
            rid = f"{p['category']}-{i:06d}"
            s = Sampling(temperature=p["temperature"], top_p=self.cfg.top_p, max_tokens=self.cfg.max_tokens,
                         seed=seed_for(self.cfg.seed, "instruction", rid), stop=pre.stop,
                         stop_token_ids=pre.stop_token_ids)
            reqs.append(GenRequest(key=rid, prompt=list(pre.token_ids), sampling=s))
        return None, reqs

    def finalize(self, unit: UnitSpec, context: Any, results: dict[Any, GenResult]) -> UnitOutput:
        p = unit.params
        rows = []
        for rid in sorted(results):
            res = results[rid]
            row = {"id": rid, "category": p["category"], "system_prompt": self.system_prompts[p["category"]] or "",
                   "instruction": res.text.strip(), "temperature": p["temperature"], "top_p": self.cfg.top_p,
                   "seed": seed_for(self.cfg.seed, "instruction", rid), "model": self.model_id,
                   "instruction_finish_reason": res.finish_reason, "instruction_tokens": res.output_tokens}
            rows.append((row, res))
        return _unit_output(rows, "instruction", SAMPLE_SCHEMA)


class RespondStage(GenerationStage):
    """The same model answers each instruction under the same system prompt, via its chat template."""

    name = "magpie.respond"

    def __init__(self, source: ShardSource, cfg: MagpieConfig, engine: Engine, model_id: str) -> None:
        self.source = source
        self.cfg = cfg
        self.engine = engine
        self.model_id = model_id

    def config(self) -> dict[str, Any]:
        return {"model": self.cfg.model, "seed": self.cfg.seed, "response": self.cfg.response.model_dump(),
                "input": self.source.identity()}

    def inputs(self) -> list[dict[str, Any]]:
        return [self.source.describe()]

    def provenance(self) -> dict[str, Any]:
        return {"engine": self.engine.describe(), "model": self.model_id}

    def plan(self) -> list[UnitSpec]:
        return self.source.units()

    def requests(self, unit: UnitSpec) -> tuple[Any, list[GenRequest]]:
        table = self.source.read_unit(unit)
        rows = table.to_pylist()
        r = self.cfg.response
        reqs = []
        tok = self.engine.tokenizer
        for row in rows:
            msgs = ([{"role": "system", "content": row["system_prompt"]}] if row["system_prompt"] else []) + [
                {"role": "user", "content": row["instruction"]}]
            s = Sampling(temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                         seed=seed_for(self.cfg.seed, "response", row["id"]))
            reqs.append(GenRequest(key=row["id"], prompt=chat_prompt_ids(tok, msgs), sampling=s))
        return rows, reqs

    def finalize(self, unit: UnitSpec, context: Any, results: dict[Any, GenResult]) -> UnitOutput:
        r = self.cfg.response
        rows = []
        for row in context:
            res = results[row["id"]]
            out = dict(row)
            # The training conversation: the system prompt only steered generation (it stays in its own
            # column), as in Magpie's releases; and a translated row then differs in language only.
            msgs = [{"role": "user", "content": row["instruction"]},
                    {"role": "assistant", "content": res.text.strip()}]
            out.update(response=res.text.strip(), conversation=msgs, response_temperature=r.temperature,
                       response_top_p=r.top_p, response_seed=seed_for(self.cfg.seed, "response", row["id"]),
                       response_finish_reason=res.finish_reason, response_tokens=res.output_tokens)
            rows.append((out, res))
        return _unit_output(rows, "response", RESPOND_SCHEMA)


STEPS = ("sample", "respond", "filter")


def run_magpie(cfg: MagpieConfig, out: str | Path, engine: Engine, *, model_id: str,
               steps: tuple[str, ...] = STEPS, rank: int | None = None, world_size: int | None = None,
               overwrite: bool = False, progress: bool | None = None,
               prompts_dir: str | None = None) -> dict[str, RunReport]:
    """sample → respond → filter, each a shard directory ``out/<step>``. Each rank only needs the
    upstream units it produced itself (units keep their index from step to step), so ranks never wait
    for each other."""
    from lrpipe.pipelines.filter import make_filter_stage

    out = Path(out)
    reports: dict[str, RunReport] = {}
    if "sample" in steps:
        reports["sample"] = run_stage(SampleStage(cfg, engine, model_id, prompts_dir), out / "sample",
                                      engine=engine, rank=rank, world_size=world_size, overwrite=overwrite,
                                      progress=progress)
    if "respond" in steps:
        reports["respond"] = run_stage(RespondStage(ShardSource(out / "sample"), cfg, engine, model_id),
                                       out / "respond", engine=engine, rank=rank, world_size=world_size,
                                       overwrite=overwrite, progress=progress)
    if "filter" in steps:
        stage = make_filter_stage(ShardSource(out / "respond"), cfg.filters, engine)
        reports["filter"] = run_stage(stage, out / "filtered", engine=engine, rank=rank, world_size=world_size,
                                      overwrite=overwrite, progress=progress)
    return reports


def config_from_options(*, model: str | None, n: int, temps: str, categories: str, weights: str, steps: str,
                        filters: str | None, top_p: float, max_tokens: int, chunk_size: int, seed: int,
                        response_temperature: float, response_top_p: float,
                        response_max_tokens: int) -> tuple[MagpieConfig, tuple[str, ...]]:
    """The config and steps of ``pipe run magpie`` from its options as typed: ``--weights math=2``
    against ``--categories``, ``--steps`` against :data:`STEPS`, ``--filters`` as a chain (repetition
    and quality read instruction and response), and pydantic's refusal named by the option."""
    from pydantic import ValidationError

    from lrpipe.errors import PipeError, validation_message

    w = {c.strip(): 1.0 for c in categories.split(",") if c.strip()}
    for item in filter(None, (x.strip() for x in weights.split(","))):
        k, _, v = item.partition("=")
        if k not in w:
            raise PipeError(f"--weights names '{k}', which is not in --categories")
        w[k] = float(v)
    step_list = tuple(s.strip() for s in steps.split(",") if s.strip())
    bad = [s for s in step_list if s not in STEPS]
    if bad:
        raise PipeError(f"unknown step(s) {bad}; steps are {', '.join(STEPS)}")
    chain = None if filters is None else [
        {"name": f.strip(), "field": ["instruction", "response"]} if f.strip() in ("repetition", "quality")
        else f.strip() for f in filters.split(",") if f.strip()]
    try:
        cfg = MagpieConfig(model=model or "embedded:SmolLM2-135M-Instruct", n=n, temps=parse_temps(temps),
                           categories=w, top_p=top_p, max_tokens=max_tokens, chunk_size=chunk_size, seed=seed,
                           response={"temperature": response_temperature, "top_p": response_top_p,
                                     "max_tokens": response_max_tokens},
                           **({"filters": chain} if chain else {}))
    except ValidationError as e:
        raise PipeError(validation_message(e, {"response.max_tokens": "--response-max-tokens",
                                               "response.temperature": "--response-temperature",
                                               "response.top_p": "--response-top-p",
                                               "categories": "--categories"})) from e
    return cfg, step_list
