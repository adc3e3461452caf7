"""``pipe translate <recipe>``: few-shot LLM translation of conversations and question-answer items
under per-row JSON schemas, with validation and retries (SPEC §5).

A **recipe** (YAML, ``pipelines/recipes/translate/`` or any path) says what a row's item is
(``conversation``: a list of messages; ``qa``: a question with zero, one or a list of answers), which
columns hold it, the mode (``completion`` for base LLMs, Fig. 7 of the instruction study; ``chat`` for
instruct LLMs, Figs. 4-7 of the multimodal study), the output format (JSON under a schema derived per
row, or the paper's ``**Galdera:** … **Erantzuna:** …`` text), the few-shot file, sampling, retries and
checks. Adding a dataset is a new YAML file.

Every row ends in ``data/`` (original columns, untouched images, translated columns ``<field>_<tgt>``
and ``translate_attempts``) or in ``rejected/`` with the reason of its last failed attempt. A failed
attempt is retried with a new seed, in the same engine stream as everything else, so retries never
drain the engine.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lrpipe.engines.base import GenRequest, GenResult, Sampling
from lrpipe.errors import InputError
from lrpipe.pipelines.magpie import seed_for
from lrpipe.prompting import load_prompt
from lrpipe.runner import GenerationStage, MapStage, UnitOutput
from lrpipe.shards import REJECT_DETAIL, REJECT_REASON, UnitSpec
from lrpipe.sources import Source

RECIPES = Path(__file__).parent / "recipes" / "translate"
FEWSHOT = Path(__file__).resolve().parent.parent / "fewshot" / "translate"
CHECKS = ("parse", "count", "empty", "preserve", "span_repetition", "language")


# ------------------------------------------------------------------------------------------ recipes
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

    def output_column(self, col: str) -> str:
        return f"{col}_{self.target_lang}"


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load_recipe(name_or_path: str, **overrides: Any) -> Recipe:
    """A shipped recipe by name, or a YAML file by path; ``overrides`` (None values ignored) win."""
    import yaml

    p = Path(name_or_path)
    path = p if p.suffix in (".yaml", ".yml") and p.exists() else RECIPES / f"{name_or_path}.yaml"
    if not path.exists():
        raise InputError(f"no recipe '{name_or_path}' (have: {', '.join(list_recipes())}; or pass a .yaml path)")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"invalid YAML ({e})", path=str(path)) from e
    for k, v in overrides.items():
        if v is None:
            continue
        if k in RecipeSampling.model_fields:
            doc.setdefault("sampling", {})[k] = v
        elif k == "id_field":
            doc.setdefault("fields", {})["id"] = v
        else:
            doc[k] = v
    try:
        return Recipe(**doc)
    except ValidationError as e:
        first = e.errors()[0]
        raise InputError(f"invalid recipe: {first['msg']}", path=str(path),
                         field=".".join(str(x) for x in first["loc"]) or None) from e


# ------------------------------------------------------------------------------------------ items
@dataclass
class Shots:
    examples: list[dict[str, Any]]
    meta: dict[str, Any]


def load_shots(recipe: Recipe) -> Shots:
    if not recipe.fewshot:
        return Shots([], {})
    p = Path(recipe.fewshot)
    path = p if p.suffix == ".jsonl" and p.exists() else FEWSHOT / f"{recipe.fewshot}.{recipe.source_lang}-{recipe.target_lang}.jsonl"
    if not path.exists():
        raise InputError(f"no few-shot file for {recipe.source_lang}->{recipe.target_lang} (set fewshot: null for "
                         "zero-shot, or write one; see fewshot/README.md)", path=str(path))
    meta, examples = {}, []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"invalid JSON ({e.msg})", path=str(path), row=i) from e
        if "_meta" in obj:
            meta = obj["_meta"]
        elif "source" in obj and "target" in obj:
            examples.append(obj)
        else:
            raise InputError("a few-shot line needs 'source' and 'target'", path=str(path), row=i)
    return Shots(examples, meta)


def _answers_of(value: Any, key: str | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v.get(key) if isinstance(v, dict) and key else v) for v in value]


def extract(row: dict[str, Any], recipe: Recipe) -> Any:
    """The item to translate: a message list, or ``{"question", "answers"|"answer"}``. Raises
    ``ValueError`` naming the field when the row does not have the recipe's shape."""
    f = recipe.fields
    if recipe.kind == "conversation":
        if f.conversation:
            from lrpipe.chat import normalize_conversation
            from lrpipe.errors import RowError

            try:
                return normalize_conversation(row.get(f.conversation), field=f.conversation)
            except RowError as e:
                raise ValueError(str(e)) from e
        out = []
        for m in f.messages or []:
            v = row.get(m.field)
            if not isinstance(v, str):
                raise ValueError(f"field '{m.field}': expected a string, got {type(v).__name__}")
            out.append({"role": m.role, "content": v})
        return out
    q = row.get(f.question)
    if not isinstance(q, str):
        raise ValueError(f"field '{f.question}': expected a string, got {type(q).__name__}")
    item: dict[str, Any] = {"question": q}
    if f.answer:
        a = row.get(f.answer)
        if not isinstance(a, str):
            raise ValueError(f"field '{f.answer}': expected a string, got {type(a).__name__}")
        item["answer"] = a
    elif f.answers:
        v = row.get(f.answers)
        if v is None or isinstance(v, str) or not isinstance(v, list | tuple):
            raise ValueError(f"field '{f.answers}': expected a list, got {type(v).__name__}")
        item["answers"] = _answers_of(v, f.answer_key)
        if recipe.answers_count and len(item["answers"]) != recipe.answers_count:
            raise ValueError(f"field '{f.answers}': {len(item['answers'])} answers, the recipe expects "
                             f"{recipe.answers_count}")
    return item


def texts_of(item: Any) -> list[str]:
    """The translatable strings of an item, in order."""
    if isinstance(item, list):
        return [m["content"] for m in item]
    out = [item["question"]]
    if "answer" in item:
        out.append(item["answer"])
    out += item.get("answers", [])
    return out


def schema_for(item: Any) -> dict[str, Any]:
    """JSON schema of the translation of ``item``: the same messages with the same roles in order, or
    the same keys with exactly as many answers."""
    if isinstance(item, list):
        msgs = [{"type": "object", "properties": {"role": {"type": "string", "enum": [m["role"]]},
                                                  "content": {"type": "string"}},
                 "required": ["role", "content"], "additionalProperties": False} for m in item]
        return {"type": "array", "prefixItems": msgs, "items": False, "minItems": len(item), "maxItems": len(item)}
    props: dict[str, Any] = {"question": {"type": "string"}}
    if "answer" in item:
        props["answer"] = {"type": "string"}
    if "answers" in item:
        n = len(item["answers"])
        props["answers"] = {"type": "array", "items": {"type": "string"}, "minItems": n, "maxItems": n}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


# ------------------------------------------------------------------------------------------ text format
def format_text(item: dict[str, Any], labels: dict[str, str]) -> str:
    """The paper's text format: ``**Question:** … **Answer:** 1.a, 2.b`` (lists numbered)."""
    out = f"**{labels.get('question', 'Question')}:** {item['question']}"
    if "answer" in item:
        out += f" **{labels.get('answer', 'Answer')}:** {item['answer']}"
    elif item.get("answers"):
        if len(item["answers"]) == 1:
            out += f" **{labels.get('answer', 'Answer')}:** {item['answers'][0]}"
        else:
            out += f" **{labels.get('answer', 'Answer')}:** " + ", ".join(
                f"{i}.{a}" for i, a in enumerate(item["answers"], 1))
    return out


def parse_text(text: str, labels: dict[str, str], like: dict[str, Any]) -> dict[str, Any]:
    """Tolerant parser of the text format: labels with or without ``**``, any case, with ':' inside or
    outside the bold; answers numbered ``1.`` / ``1)`` and separated by commas or new lines. Raises
    ``ValueError`` when the question label is missing."""
    ql, al = re.escape(labels.get("question", "Question")), re.escape(labels.get("answer", "Answer"))
    lab = r"\**\s*{}\s*(?::\s*\**|\**\s*:)"
    m = re.search(lab.format(ql) + r"\s*(.*?)(?:\s*" + lab.format(al) + r"\s*(.*))?\s*$", text, re.S | re.I)
    if not m:
        raise ValueError(f"no '{labels.get('question', 'Question')}:' label")
    out: dict[str, Any] = {"question": m.group(1).strip()}
    ans = (m.group(2) or "").strip()
    if "answer" in like:
        out["answer"] = ans
    elif "answers" in like:
        n = len(like["answers"])
        if n <= 1:
            out["answers"] = [re.sub(r"^\s*1\s*[.)]\s*", "", ans)] if n else []
        else:
            parts = re.split(r"(?:^|[,;\n]\s*)\s*\d+\s*[.)]\s*", ans)
            out["answers"] = [p.strip().rstrip(",;").strip() for p in parts if p.strip()]
    return out


# ------------------------------------------------------------------------------------------ checks
_FENCE = re.compile(r"```.*?```", re.S)
_INLINE = re.compile(r"`[^`\n]+`")
_URL = re.compile(r"https?://[^\s)\]>\"']+")
_LATEX = re.compile(r"\$\$.+?\$\$|\$[^$\n]+\$|\\\[.+?\\\]|\\\(.+?\\\)", re.S)
_TEXTCMD = re.compile(r"\\(?:text|mathrm|textbf|textit|operatorname)\{[^{}]*\}")
_DIGITS = re.compile(r"\d+")


def protected(text: str) -> dict[str, list[str]]:
    """What a translation must keep verbatim: fenced and inline code, URLs, LaTeX (ignoring the words
    inside ``\\text{…}``) and digit runs (so ``750,000`` may become ``750.000``)."""
    fences = _FENCE.findall(text)
    rest = _FENCE.sub(" ", text)
    inline = _INLINE.findall(rest)
    rest = _INLINE.sub(" ", rest)
    urls = _URL.findall(rest)
    rest = _URL.sub(" ", rest)
    latex = [_TEXTCMD.sub("", x) for x in _LATEX.findall(rest)]
    return {"code block": [f.strip() for f in fences], "inline code": inline, "URL": urls, "LaTeX": latex,
            "number": _DIGITS.findall(_LATEX.sub(" ", rest))}


def missing_protected(src: str, tgt: str) -> str | None:
    """The first protected piece of ``src`` that ``tgt`` lost, described; None when all survive."""
    want = protected(src)
    if not any(want.values()):
        return None
    have = protected(tgt)
    for kind in ("code block", "inline code", "URL", "LaTeX"):
        have_set = [re.sub(r"\s+", " ", x) for x in have[kind]] + [re.sub(r"\s+", " ", tgt)]
        for piece in want[kind]:
            p = re.sub(r"\s+", " ", piece)
            if not any(p in h for h in have_set):
                return f"{kind} not preserved: {piece[:60]!r}"
    # numbers: each digit run as many times as in the source, anywhere in the target
    need, got = Counter(want["number"]), Counter(_DIGITS.findall(tgt))
    for num, k in need.items():
        if got[num] < k:
            return f"number not preserved: {num!r} ({k}x in source, {got[num]}x in translation)"
    return None


#: reasons that another attempt cannot fix: rejected at once, without retries
FINAL_REASONS = {"too_long"}


class Checker:
    """Runs a recipe's checks on one translated item against its source item."""

    def __init__(self, recipe: Recipe) -> None:
        from lrpipe.filters.span_repetition import SpanRepetition
        from lrpipe.languages import lingua_knows

        self.recipe = recipe
        self.checks = set(recipe.checks)
        self.notes: list[str] = []
        # also measures outputs cut at max_tokens: a loop is worth a retry, a long translation is not
        self._span = SpanRepetition(field="tgt", source_field="src")
        self._lang = None
        if "language" in self.checks:
            if not lingua_knows(recipe.target_lang):
                self.notes.append(f"the language check is skipped: the detector (lingua) has no model for "
                                  f"'{recipe.target_lang}'")
            else:
                from lrpipe.filters.language import LanguageFilter

                cands = recipe.language_candidates or sorted(
                    {c for c in (recipe.source_lang, "en", "es", "fr") if lingua_knows(c)} - {recipe.target_lang})
                self._lang = LanguageFilter(field="t", language=recipe.target_lang, candidates=cands)
                self._src_known = lingua_knows(recipe.source_lang)

    def parse(self, text: str, src: Any, labels: dict[str, str]) -> Any:
        if self.recipe.format == "text":
            return parse_text(text, labels, src)
        return json.loads(text)

    def __call__(self, src: Any, text: str, finish_reason: str, labels: dict[str, str]) -> tuple[Any, str, str]:
        """(parsed translation or None, reject reason or "", detail)."""
        if finish_reason == "error":
            return None, "engine_error", text[:200]
        if finish_reason == "length":
            return None, *self._cut(src, text)
        try:
            tgt = self.parse(text, src, labels)
        except (json.JSONDecodeError, ValueError) as e:
            return None, "invalid_json" if self.recipe.format == "json" else "unparseable", f"{e}: {text[:120]!r}"
        problem = self._count(src, tgt)
        if problem and "count" in self.checks:
            return None, "count_mismatch", problem
        if problem:  # without the count check a wrong shape still cannot be written
            return None, "invalid_json", problem
        s_texts, t_texts = texts_of(src), texts_of(tgt)
        if "empty" in self.checks:
            for k, (a, b) in enumerate(zip(s_texts, t_texts)):
                if a.strip() and not b.strip():
                    return None, "empty", f"text {k} is empty"
        if "preserve" in self.checks:
            for k, (a, b) in enumerate(zip(s_texts, t_texts)):
                miss = missing_protected(a, b)
                if miss:
                    return None, "not_preserved", f"text {k}: {miss}"
        if "span_repetition" in self.checks:
            verdicts = self._span.keep_batch(pa.table({"src": s_texts, "tgt": t_texts}))
            for k, (ok, detail) in enumerate(verdicts):
                if not ok:
                    return None, "span_repetition", f"text {k}: {detail.split(': ', 1)[-1]}"
        if self._lang is not None:
            wrong = self.wrong_language(s_texts, t_texts)
            if wrong:
                return None, "wrong_language", wrong
        return tgt, "", ""

    def _cut(self, src: Any, text: str) -> tuple[str, str]:
        """An output cut at max_tokens: a loop (retried with a new seed) or a translation longer than the
        row's budget (final: another attempt would be cut the same way)."""
        source = json.dumps(src, ensure_ascii=False) if self.recipe.format == "json" else "\n".join(texts_of(src))
        ok, detail = self._span.keep_batch(pa.table({"src": [source], "tgt": [text]}))[0]
        if not ok:
            return "span_repetition", f"cut at max_tokens in a loop: {detail.split(': ', 1)[-1]}"
        return "too_long", f"cut at max_tokens: {text[-120:]!r}"

    def wrong_language(self, s_texts: list[str], t_texts: list[str]) -> str:
        """Each text on its own: a translation must be in the target language, unless its source text is
        not in the source language either (code, a quote, the French answer to a request to translate
        into French), in which case either language passes. "" when every text passes."""
        assert self._lang is not None
        det = self._lang.detect(t_texts)
        src_det = self._lang.detect(s_texts) if self._src_known else [self.recipe.source_lang] * len(s_texts)
        for k, (got, was) in enumerate(zip(det, src_det)):
            if got is None or got == self.recipe.target_lang:
                continue
            if was is not None and was != self.recipe.source_lang:
                continue  # the source text is in another language: left as it was is fine
            return f"text {k}: detected {got}, expected {self.recipe.target_lang}"
        return ""

    @staticmethod
    def _count(src: Any, tgt: Any) -> str | None:
        if isinstance(src, list):
            if not isinstance(tgt, list) or not all(isinstance(m, dict) for m in tgt):
                return "expected a list of messages"
            if len(tgt) != len(src):
                return f"{len(tgt)} messages, expected {len(src)}"
            for k, (a, b) in enumerate(zip(src, tgt)):
                if b.get("role") != a["role"] or not isinstance(b.get("content"), str):
                    return f"message {k}: role {b.get('role')!r}, expected {a['role']!r} with string content"
            return None
        if not isinstance(tgt, dict) or not isinstance(tgt.get("question"), str):
            return "expected an object with a string 'question'"
        if "answer" in src and not isinstance(tgt.get("answer"), str):
            return "expected a string 'answer'"
        if "answers" in src:
            a = tgt.get("answers")
            if not isinstance(a, list) or not all(isinstance(x, str) for x in a):
                return "expected a list of strings 'answers'"
            if len(a) != len(src["answers"]):
                return f"{len(a)} answers, expected {len(src['answers'])}"
        return None


# ------------------------------------------------------------------------------------------ prompts
class PromptBuilder:
    """Renders a row's prompt (token ids) for the recipe's mode, with the shared few-shot prefix first
    so that the engine's prefix cache serves it to every row."""

    def __init__(self, recipe: Recipe, tokenizer: Any, shots: Shots) -> None:
        self.recipe, self.tok, self.shots = recipe, tokenizer, shots
        meta = shots.meta
        from lrpipe.languages import language_name

        self.src_name = language_name(recipe.source_lang, recipe.source_name)
        self.tgt_name = language_name(recipe.target_lang, recipe.target_name)
        self.labels_src = meta.get("labels", {}).get("source", {"question": "Question", "answer": "Answer"})
        self.labels_tgt = meta.get("labels", {}).get("target", {"question": "Question", "answer": "Answer"})
        style = recipe.style or meta.get("style") or f"standard {self.tgt_name}"
        self.json = recipe.format == "json"
        self.system = load_prompt("translate", recipe.system_prompt, src_name=self.src_name, tgt_name=self.tgt_name,
                                  style=style, json=self.json)

    def render_item(self, item: Any, target: bool = False) -> str:
        if self.json:
            return json.dumps(item, ensure_ascii=False)
        return format_text(item, self.labels_tgt if target else self.labels_src)

    def _user(self, item: Any) -> str:
        return load_prompt("translate", self.recipe.user_prompt, tgt_name=self.tgt_name, src_name=self.src_name,
                           json=self.json, query=self.render_item(item))

    def text(self, item: Any) -> str | list[dict[str, str]]:
        if self.recipe.mode == "completion":
            examples = [{"source": self.render_item(e["source"]), "target": self.render_item(e["target"], True)}
                        for e in self.shots.examples]
            return load_prompt("translate", self.recipe.completion_prompt, system=self.system, examples=examples,
                               src_name=self.src_name, tgt_name=self.tgt_name,
                               query=self.render_item(item)) + "\n"
        msgs = [{"role": "system", "content": self.system}]
        for e in self.shots.examples:
            msgs.append({"role": "user", "content": self._user(e["source"])})
            msgs.append({"role": "assistant", "content": self.render_item(e["target"], True)})
        msgs.append({"role": "user", "content": self._user(item)})
        return msgs

    def ids(self, item: Any) -> list[int]:
        t = self.text(item)
        if isinstance(t, str):
            bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
            return bos + list(self.tok(t, add_special_tokens=False)["input_ids"])
        from lrpipe.chat import chat_prompt_ids

        return chat_prompt_ids(self.tok, t)

    def stop(self) -> tuple[str, ...]:
        """Completion mode without a schema: stop where the next example would start."""
        if self.recipe.mode == "completion" and not self.json:
            return (f"\n{self.src_name}:",)
        return ()


# ------------------------------------------------------------------------------------------ stage
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
        self._chosen: dict[int, set[int]] | None = None
        self._selected: dict[int, set[int]] = {}

    def config(self) -> dict[str, Any]:
        return {"n": self.n, "seed": self.seed, "select": self.recipe.select, "input": self.source.identity()}

    def inputs(self) -> list[dict[str, Any]]:
        return [self.source.describe()]

    def plan(self) -> list[UnitSpec]:
        return self.source.units()

    def _select(self, t: pa.Table) -> list[int]:
        if not self.recipe.select:
            return list(range(t.num_rows))
        rows = t.select([c for c in self.recipe.select if c in t.column_names]).to_pylist()
        return [i for i, r in enumerate(rows) if selected(r, self.recipe.select)]

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
                   "not_selected": f"does not match select {self.recipe.select}"}
        rejected = pa.table({"id": t.column("id").take(pa.array(rest, pa.int64())),
                             REJECT_REASON: pa.array(reasons, pa.string()),
                             REJECT_DETAIL: pa.array([details[r] for r in reasons], pa.string())})
        return UnitOutput(kept=t.take(pa.array(keep, pa.int64())), rejected=rejected, rows_in=t.num_rows,
                          stats={"selected": len(sel), "sampled": len(keep)})


@dataclass
class _Row:
    item: Any
    max_tokens: int = 0
    attempts: int = 0
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
        if self.context:
            budget = min(budget, self.context - prompt_len)
        return budget

    def _request(self, i: int, rid: str, st: _Row, prompt: list[int]) -> GenRequest:
        s = self.recipe.sampling
        sampling = Sampling(temperature=s.temperature, top_p=s.top_p, max_tokens=st.max_tokens,
                            repetition_penalty=s.repetition_penalty,
                            seed=seed_for(self.recipe.seed, "translate", rid, st.attempts),
                            stop=self.prompts.stop(),
                            json_schema=schema_for(st.item) if self.recipe.format == "json" else None)
        return GenRequest(key=(i, st.attempts), prompt=prompt, sampling=sampling)

    def requests(self, unit: UnitSpec) -> tuple[Any, list[GenRequest]]:
        table = self.source.read_unit(unit)
        rows = table.to_pylist()
        states: dict[int, _Row] = {}
        bad: dict[int, tuple[str, str]] = {}
        prompts: dict[int, list[int]] = {}
        reqs = []
        for i, row in enumerate(rows):
            try:
                item = extract(row, self.recipe)
            except ValueError as e:
                bad[i] = ("bad_input", f"{unit.name} row {i}: {e}")
                continue
            prompt = self.prompts.ids(item)
            st = _Row(item, max_tokens=self.budget(item, len(prompt)))
            if st.max_tokens < 16:
                bad[i] = ("too_long", f"prompt of {len(prompt)} tokens leaves {st.max_tokens} of the model's "
                                      f"{self.context}-token context for the translation")
                continue
            states[i], prompts[i] = st, prompt
            reqs.append(self._request(i, row["id"], st, prompt))
        return {"table": table, "rows": rows, "states": states, "bad": bad, "prompts": prompts}, reqs

    def _judge(self, ctx: dict[str, Any], results: dict[Any, GenResult]) -> None:
        """Check every row's newest result that has not been checked yet."""
        for i, st in ctx["states"].items():
            if st.translation is not None or st.judged == st.attempts:
                continue
            res = results.get((i, st.attempts))
            if res is None:
                continue
            text = (res.error or res.text) if res.finish_reason == "error" else res.text
            st.translation, st.reason, st.detail = self.checker(st.item, text, res.finish_reason,
                                                                self.prompts.labels_tgt)
            st.judged = st.attempts

    def review(self, unit: UnitSpec, context: Any, results: dict[Any, GenResult]) -> list[GenRequest]:
        self._judge(context, results)
        more = []
        for i, st in context["states"].items():
            if st.translation is None and st.reason not in FINAL_REASONS and st.attempts < self.recipe.retries:
                st.attempts += 1
                more.append(self._request(i, context["rows"][i]["id"], st, context["prompts"][i]))
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
        kept_t = kept_t.append_column("translate_attempts", pa.array([states[i].attempts + 1 for i in kept], pa.int32()))
        reasons = {i: (st.reason, st.detail) for i, st in states.items() if st.translation is None}
        reasons.update(context["bad"])
        rej_idx = sorted(reasons)
        rej = table.take(pa.array(rej_idx, pa.int64()))
        rej = rej.append_column(REJECT_REASON, pa.array([f"translate_{reasons[i][0]}" for i in rej_idx], pa.string()))
        rej = rej.append_column(REJECT_DETAIL, pa.array([reasons[i][1][:300] for i in rej_idx], pa.string()))
        out = UnitOutput(kept=kept_t, rejected=rej, rows_in=table.num_rows)
        out.stats = {"output_tokens": sum(r.output_tokens for r in results.values()),
                     "attempts": sum(st.attempts + 1 for st in states.values())}
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


# ------------------------------------------------------------------------------------------ dry run
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
