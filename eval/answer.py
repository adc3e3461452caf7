"""``pipe answer``: a model's answers to a prompt set, as a shard directory that ``pipe judge``,
``pipe arena`` and ``pipe eval safety`` read (README: "Evaluation").

Both studies end in answers that people or a judge compare: the instruction study's arena (every model
under the same system prompt, temperature 0.9, top-p 0.95) and safety prompts, and the multimodal
study's WildVision questions (an image and a question, answered by each MLLM). A prompt row holds one
turn (a text column), several (a list of user turns, answered one after the other with the model's own
earlier answers in the context) or a conversation whose user turns are replayed; an image column gives
the first turn its image.

It is a :class:`~lrpipe.runner.GenerationStage`: the source's units, every turn of every row streamed
into one engine job (turn k+1 of a row joins the stream as soon as turn k is back), resumable after a
crash, ``--rank/--world-size`` like every stage. Output rows keep every input column and add ``model``,
``system_prompt``, ``answer`` (the last turn's), ``answer_conversation`` (the whole exchange, messages
form, without the system prompt), ``answer_finish_reason`` and token counts. An answer cut at
``max_tokens`` is still the model's answer (kept, with finish reason ``length``); a request the engine
failed is rejected as ``engine_error`` and a row without a prompt (or an unreadable image) as
``bad_input``.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from lrpipe.chat import MESSAGE_TYPE, chat_request, conversation_of
from lrpipe.engines.base import Engine, GenResult, Sampling
from lrpipe.errors import InputError, RowError
from lrpipe.runner import GenerationStage, UnitOutput, parse_rows
from lrpipe.seeding import seed_for
from lrpipe.shards import REJECT_DETAIL, REJECT_REASON, UnitSpec
from lrpipe.sources import Source

#: recipes of answer settings shipped with pipe (``pipe answer --recipe arena``)
RECIPES = Path(__file__).resolve().parents[1] / "pipelines" / "recipes" / "answer"
#: where a prompt is looked for when no ``prompt_field`` is named, in this order
PROMPT_COLUMNS = ("turns", "instruction", "prompt", "question")


class AnswerConfig(BaseModel):
    """How a model answers (a YAML recipe, ``pipe answer --recipe``, or flags). The defaults are the
    instruction study's arena: temperature 0.9, top-p 0.95."""

    model_config = ConfigDict(extra="forbid")
    name: str = "answers"
    description: str = ""
    #: the system prompt as text, or ``system_template``: a ``prompts/answer/<name>.j2`` (or a .j2 path)
    #: rendered with ``variables`` (and ``date``, today's, unless given)
    system_prompt: str | None = None
    system_template: str | None = None
    variables: dict[str, str] = {}
    #: the prompt column (default: the first of turns, instruction, prompt, question, else a conversation)
    prompt_field: str | None = None
    image_field: str | None = None
    temperature: float = Field(0.9, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(2048, gt=0)
    seed: int = 0
    rows_per_unit: int = Field(100, gt=0)

    def system_text(self) -> str | None:
        """The system prompt this configuration gives every model."""
        if self.system_prompt is not None and self.system_template is not None:
            raise InputError("give system_prompt or system_template, not both")
        if self.system_template is None:
            return self.system_prompt
        from lrpipe.prompting import load_prompt

        variables = {"date": datetime.date.today().isoformat(), **self.variables}
        p = Path(self.system_template)
        if p.suffix == ".j2":
            return load_prompt("answer", p.stem, root=p.parent, **variables)
        return load_prompt("answer", self.system_template, **variables)


def load_answer_config(path: str | None, **overrides: Any) -> AnswerConfig:
    """A recipe (a path, or the name of one shipped with pipe) with ``overrides`` (None values ignored)
    on top; without a recipe, the defaults."""
    from lrpipe.config_files import load

    def update(data: dict[str, Any], _: Path) -> None:
        data.update({k: v for k, v in overrides.items() if v is not None})

    if path is None:
        return AnswerConfig.model_validate({k: v for k, v in overrides.items() if v is not None})
    return load(AnswerConfig, path, RECIPES, kind="answer recipe", update=update)


def user_turns(row: dict[str, Any], field: str | None) -> list[str]:
    """The user turns of a prompt row (see the module docstring); a row without one is a RowError."""
    for c in [field] if field else [c for c in PROMPT_COLUMNS if c in row]:
        v = row.get(c)
        if isinstance(v, str) and v.strip():
            return [v]
        if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            return list(v)
    conv = conversation_of(row, field)
    turns = [m["content"] for m in conv or [] if m["role"] == "user"]
    if turns:
        return turns
    raise RowError(f"no prompt (looked for {field or ', '.join(PROMPT_COLUMNS)} and a conversation)",
                   field=field)


class AnswerStage(GenerationStage):
    name = "answer"

    def __init__(self, source: Source, engine: Engine, model_name: str, cfg: AnswerConfig) -> None:
        self.source, self.engine, self.model_name, self.cfg = source, engine, model_name, cfg
        self.system = cfg.system_text()
        if cfg.image_field and not engine.supports_images:
            raise InputError(f"answering with images (image_field '{cfg.image_field}') needs an engine that "
                             f"takes them (vllm, transformers with a multimodal model, openai --openai-api chat), "
                             f"not {engine.name} with {engine.model}")
        if cfg.image_field:
            from lrpipe.images import require_images

            require_images(source.columns(), cfg.image_field, source.where() or "the input")

    def config(self) -> dict[str, Any]:
        return {"model": self.model_name, **self.cfg.model_dump(exclude={"system_prompt", "variables"}),
                "system_prompt": self.system}

    def inputs(self) -> list[dict[str, Any]]:
        return [self.source.identity()]

    def provenance(self) -> dict[str, Any]:
        return {"engine": self.engine.describe(), "model": self.model_name}

    def plan(self) -> list[UnitSpec]:
        return self.source.units()

    # ------------------------------------------------------------------ requests
    def _parse(self, row: dict[str, Any]) -> tuple[list[str], Any]:
        turns = user_turns(row, self.cfg.prompt_field)
        image = None
        if self.cfg.image_field:
            from lrpipe.eval.mm_data import load_image

            value = row.get(self.cfg.image_field)
            if value is None:
                raise RowError("no image", field=self.cfg.image_field)
            try:
                image = load_image(value, f"field {self.cfg.image_field}")
            except (InputError, OSError) as e:
                raise RowError(f"unreadable image ({e})", field=self.cfg.image_field) from e
        return turns, image

    def _request(self, ctx: dict[str, Any], i: int) -> Any:
        turns, image = ctx["items"][i]
        done = ctx["answers"][i]
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for k, q in enumerate(turns[:len(done) + 1]):
            messages.append({"role": "user", "content": q})
            if k < len(done):
                messages.append({"role": "assistant", "content": done[k]})
        c = self.cfg
        sampling = Sampling(temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_tokens,
                            seed=seed_for(c.seed, "answer", self.model_name, ctx["rows"][i]["id"], len(done)))
        return chat_request(self.engine, (i, len(done)), messages, sampling, images=[image] if image else None)

    def requests(self, unit: UnitSpec) -> tuple[Any, list[Any]]:
        rows = self.source.read_unit(unit).to_pylist()
        items, bad = parse_rows(rows, self._parse, unit)
        ctx = {"rows": rows, "items": items, "bad": bad, "answers": {i: [] for i in items},
               "results": {i: [] for i in items}}
        return ctx, [self._request(ctx, i) for i in items]

    def review(self, unit: UnitSpec, context: Any, results: dict[Any, GenResult]) -> list[Any]:
        """A row whose newest turn is back asks its next turn, with its own answers in the context."""
        more = []
        for i, (turns, _) in context["items"].items():
            got = context["results"][i]
            if i in context["bad"] or len(got) == len(turns):
                continue
            res = results.get((i, len(got)))
            if res is None:
                continue
            got.append(res)
            if res.finish_reason == "error":
                context["bad"][i] = ("engine_error", f"turn {len(got)}: {(res.error or '')[:300]}")
                continue
            context["answers"][i].append(res.text)
            if len(got) < len(turns):
                more.append(self._request(context, i))
        return more

    def finalize(self, unit: UnitSpec, context: Any, results: dict[Any, GenResult]) -> UnitOutput:
        rows, keep = context["rows"], []
        extra: dict[str, list[Any]] = {k: [] for k in ("model", "system_prompt", "answer", "answer_conversation",
                                                       "answer_finish_reason", "prompt_tokens", "answer_tokens")}
        for i, (turns, _) in context["items"].items():
            if i in context["bad"]:
                continue
            got, answers = context["results"][i], context["answers"][i]
            conv = []
            for q, a in zip(turns, answers):
                conv += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            keep.append(i)
            extra["model"].append(self.model_name)
            extra["system_prompt"].append(self.system)
            extra["answer"].append(answers[-1])
            extra["answer_conversation"].append(conv)
            extra["answer_finish_reason"].append(got[-1].finish_reason)
            extra["prompt_tokens"].append(got[-1].prompt_tokens)
            extra["answer_tokens"].append(sum(r.output_tokens for r in got))
        table = pa.Table.from_pylist([rows[i] for i in keep]) if keep else pa.Table.from_pylist(
            [], schema=pa.Table.from_pylist(rows[:1]).schema if rows else pa.schema([]))
        types = {"answer_conversation": MESSAGE_TYPE, "prompt_tokens": pa.int64(), "answer_tokens": pa.int64()}
        for k, v in extra.items():
            name = k if k not in table.column_names else f"{k}_{self.name}"
            table = table.append_column(name, pa.array(v, types.get(k, pa.string())))
        bad = sorted(context["bad"])
        rejected = pa.table({"id": [str(rows[i].get("id")) for i in bad],
                             REJECT_REASON: [context["bad"][i][0] for i in bad],
                             REJECT_DETAIL: [context["bad"][i][1] for i in bad]},
                            schema=pa.schema([("id", pa.string()), (REJECT_REASON, pa.string()),
                                              (REJECT_DETAIL, pa.string())]))
        return UnitOutput(kept=table, rejected=rejected, rows_in=len(rows),
                          stats={"requests": sum(len(r) for r in context["results"].values()),
                                 "answer_tokens": sum(extra["answer_tokens"])})


def model_names(models: list[str], names: list[str] | None) -> list[str]:
    """A short, unique name per model (its folder or Hub name, or ``names``): the answers' ``model``
    column and the folder under ``--out``."""
    if names:
        if len(names) != len(models):
            raise InputError(f"--name given {len(names)} times for {len(models)} models")
        out = list(names)
    else:
        from lrpipe.eval.analyses import model_label

        out = [model_label(m) for m in models]  # the name pipe eval report gives the same model
    dup = {n for n in out if out.count(n) > 1}
    if dup:
        raise InputError(f"two models would share the name {sorted(dup)}: give each a --name")
    for n in out:
        if not n or "/" in n or n.startswith("."):
            raise InputError(f"not a usable model name: {n!r} (give --name)")
    return out
