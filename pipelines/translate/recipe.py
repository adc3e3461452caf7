"""A translation recipe (YAML): what a row's item is, where it is, how it is prompted, sampled and checked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "translate"


FEWSHOT = Path(__file__).resolve().parents[2] / "fewshot" / "translate"


CHECKS = ("parse", "count", "empty", "preserve", "span_repetition", "language")


class MessageField(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str
    role: str


class Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: the id column (``uuid``, ``question_id``); None: ``id`` or another usual id column, else an id
    #: derived from the row's content (see :mod:`lrpipe.sources`)
    id: str | None = None
    # conversation items
    messages: list[MessageField] | None = None
    conversation: str | None = None
    # qa items
    question: str | None = None
    answer: str | None = None
    answers: str | None = None
    answer_key: str | None = None  # answers are dicts (VQAv2): the key holding the text


class RecipeSampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.15, gt=0, le=1)
    #: the cap; each row gets ``min(cap, output_factor × source tokens + output_margin)``, and never
    #: more than the model's context leaves after the prompt
    max_tokens: int = Field(2048, gt=0)
    output_factor: float = Field(2.0, gt=0)
    output_margin: int = Field(64, ge=0)
    repetition_penalty: float = 1.0


class Recipe(BaseModel):
    """A translation recipe, validated; errors name the file and the field."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    kind: Literal["conversation", "qa"]
    mode: Literal["completion", "chat"]
    format: Literal["json", "text"] = "json"
    model: str | None = None
    source_lang: str = "en"
    target_lang: str = "eu"
    #: names used in prompts (default: the built-in table of ISO codes, :mod:`lrpipe.languages`)
    source_name: str | None = None
    target_name: str | None = None
    style: str | None = None
    input: str | None = None
    #: the split of an ``hf://`` input (benchmarks: the split the study evaluated on)
    split: str | None = None
    #: rows kept before sampling: ``{column: regex}``, every regex must match the column's text
    #: (PixMo-CapQA: answers starting with yes/no)
    select: dict[str, str] = Field(default_factory=dict)
    #: the ids of the rows to keep (a benchmark filtered by hand: the multimodal study kept 199 of
    #: WildVision's 500 questions), listed here or in ``keep_ids_file`` (one id per line, relative to the
    #: recipe); the others are ``not_selected``
    keep_ids: list[str] | None = None
    keep_ids_file: str | None = None
    fields: Fields
    answers_count: int | None = None
    fewshot: str | None = None
    system_prompt: str = "system"
    user_prompt: str = "user"
    completion_prompt: str = "completion"
    benchmark: bool = False
    sample: int | None = None
    sampling: RecipeSampling = Field(default_factory=RecipeSampling)
    retries: int = 3
    seed: int = 0
    checks: list[str] = Field(default_factory=lambda: list(CHECKS))
    language_candidates: list[str] | None = None
    #: bound every translated text to this many times its source's characters (JSON format): a loop or a
    #: runaway ends as a finished, shorter text the checks judge, instead of a cut output (None: no bound)
    max_length_ratio: float | None = Field(None, gt=0)
    output_ratio: float = 1.3  # target/source tokens, for --dry-run estimates

    def model_post_init(self, _: Any) -> None:
        bad = [c for c in self.checks if c not in CHECKS]
        if bad:
            raise ValueError(f"unknown checks {bad}; available: {', '.join(CHECKS)}")
        for col, rx in self.select.items():
            try:
                re.compile(rx)
            except re.error as e:
                raise ValueError(f"select.{col}: invalid regex ({e})") from e
        if self.keep_ids is not None and self.keep_ids_file is not None:
            raise ValueError("give keep_ids or keep_ids_file, not both")
        if self.sample is not None and self.sample < 0:
            raise ValueError("sample must be >= 0 (0: every row)")
        f = self.fields
        if self.kind == "conversation":
            if bool(f.messages) == bool(f.conversation):
                raise ValueError("a conversation recipe needs exactly one of fields.messages and fields.conversation")
            if self.format != "json":
                raise ValueError("conversations are translated in the json format")
        else:
            if not f.question:
                raise ValueError("a qa recipe needs fields.question")
            if f.answer and f.answers:
                raise ValueError("give fields.answer (one string) or fields.answers (a list), not both")

    def input_columns(self) -> list[str]:
        """Columns every input must have (the id column is not one: rows without it get derived ids)."""
        f = self.fields
        cols = [f.conversation] if f.conversation else [m.field for m in f.messages or []]
        cols += [c for c in (f.question, f.answer, f.answers) if c]
        return [c for c in cols if c] + list(self.select)

    def kept_ids(self) -> set[str] | None:
        """The ids the recipe keeps (``keep_ids`` or the lines of ``keep_ids_file``), or None for all."""
        if self.keep_ids is not None:
            return {str(x) for x in self.keep_ids}
        if self.keep_ids_file is None:
            return None
        from lrpipe.errors import InputError

        path = Path(self.keep_ids_file)
        if not path.exists():
            raise InputError("keep_ids_file not found", path=str(path))
        return {ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")}

    def output_column(self, col: str) -> str:
        return f"{col}_{self.target_lang}"


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load_recipe(name_or_path: str, **overrides: Any) -> Recipe:
    """A shipped recipe by name, or a YAML file by path; ``overrides`` (None values ignored) win."""
    from lrpipe.config_files import load

    def update(doc: dict[str, Any], path: Path) -> None:
        ids_file = doc.get("keep_ids_file")
        if isinstance(ids_file, str) and not Path(ids_file).is_absolute():
            doc["keep_ids_file"] = str(path.parent / ids_file)  # relative to the recipe
        shots = doc.get("fewshot")
        if isinstance(shots, str) and shots.endswith(".jsonl") and (path.parent / shots).exists():
            doc["fewshot"] = str(path.parent / shots)  # a few-shot file beside the recipe
        for k, v in overrides.items():
            if v is None:
                continue
            if k in RecipeSampling.model_fields:
                doc.setdefault("sampling", {})[k] = v
            elif k == "id_field":
                doc.setdefault("fields", {})["id"] = v
            elif k == "conversation_field":
                if (doc.get("fields") or {}).get("messages"):
                    raise ValueError("--conversation-field: this recipe reads its messages from several columns "
                                     "(fields.messages), not one conversation column")
                doc.setdefault("fields", {})["conversation"] = v
            else:
                doc[k] = v

    return load(Recipe, name_or_path, RECIPES, kind="recipe", update=update)


def recipe_table() -> str:
    """``pipe translate --list``: each shipped recipe with its mode, kind, languages, fields and model."""
    lines = []
    for name in list_recipes():
        r = load_recipe(name)
        lines.append(f"{name:21s} {r.mode:10s} {r.kind:12s} {r.source_lang}->{r.target_lang}  "
                     f"fields={','.join(r.input_columns())}  model={r.model}"
                     + (f"  split={r.split}" if r.split else "") + (f"  sample={r.sample}" if r.sample else "")
                     + (f"  select={r.select}" if r.select else ""))
    return "\n".join(lines)
