"""The data of ``pipe eval mm``: task YAMLs (``eval/tasks/mm/``), where each language's rows come from
(``pipe translate --sample`` output with ``<column>_<lang>`` beside the source columns, copies of
released sets, or the released sets on the Hub), values stored as text parsed back (released sets),
and the instances both languages are scored on."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from lrpipe.errors import InputError

TASKS = Path(__file__).parent / "tasks" / "mm"


class ReleasedSet(BaseModel):
    """A published benchmark set in one language (``--data released``): where it is, and which of its
    columns hold the task's fields (``columns: {choices: options}``; unnamed fields keep the task's)."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    split: str = "test"
    columns: dict[str, str] = {}
    #: how a language's rows meet the other language's: by the task's id column, or by position (the
    #: released sets keep each language in a split of one dataset, row for row, with no shared id)
    pair_by: Literal["id", "position"] = "id"


class MMTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["vqa", "mc"]
    id: str = "id"
    question: str = "question"
    image: str = "image"
    answers: str | None = None
    choices: str | None = None
    options: dict[str, list[str]] | None = None
    gold_index: str | None = None
    gold_answer: str | None = None
    #: how a gold answer picks its option: ``exact`` (the answer is an option) or ``leading-word`` (its
    #: first word is one, in any language of ``options``: "Yes, the dog is brown." is "yes")
    gold_rule: Literal["exact", "leading-word"] = "exact"
    instruction: dict[str, str] = {}
    max_new_tokens: int = 16
    released: dict[str, ReleasedSet] = {}

    def field(self, name: str, lang: str) -> str:
        """The column holding task field ``name`` (``question``, ``choices``...) in a released set."""
        default = getattr(self, name)
        rel = self.released.get(lang)
        return rel.columns.get(name, default) if rel else default


def load_task(name: str) -> MMTask:
    from lrpipe.config_files import load

    return load(MMTask, name, TASKS, kind="multimodal task")


def _table(data: Path, task: str) -> tuple[Any, str]:
    """The task's rows: DIR/<task>/translated, DIR/<task>, or DIR itself (shard dir or file)."""
    from lrpipe.readers import read_table
    from lrpipe.shards import ShardDir

    for cand in (data / task / "translated", data / task, data):
        if ShardDir.is_shard_dir(cand):
            return ShardDir.open(cand).read_all(), str(cand)
    files = sorted((data / task).glob("*")) if (data / task).is_dir() else []
    files = [f for f in files if f.suffix in (".parquet", ".jsonl", ".arrow", ".json")]
    if files:
        return read_table(str(files[0])), str(files[0])
    raise InputError(f"no data for task {task} (expected {data / task}/translated from pipe translate --sample)",
                     path=str(data))


def _col(row: dict[str, Any], name: str, lang: str, source_lang: str) -> Any:
    return row.get(name) if lang == source_lang else row.get(f"{name}_{lang}")


def load_image(value: Any, where: str) -> Any:
    from PIL import Image

    if isinstance(value, dict):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
        if value.get("path"):
            return Image.open(value["path"]).convert("RGB")
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value)).convert("RGB")
    if isinstance(value, str):
        return Image.open(value).convert("RGB")
    raise InputError(f"cannot read the image ({type(value).__name__})", path=where)


def _language_table(task: MMTask, data: Path | str, lang: str) -> tuple[Any, str] | None:
    """A table holding the task in ``lang`` alone (a released set): ``--data released`` reads the task's
    ``released`` entry; a folder may hold copies as ``DIR/<task>/<lang>.{parquet,jsonl,arrow}``."""
    if str(data) == "released":
        rel = task.released.get(lang)
        if rel is None:
            raise InputError(f"task {task.name} names no released set for '{lang}' (have {sorted(task.released)})")
        from lrpipe.sources import open_source

        src = open_source(rel.dataset, split=rel.split)
        import pyarrow as pa

        tables = [src.read_unit(u) for u in src.units()]
        return pa.concat_tables(tables, promote_options="permissive"), rel.dataset
    folder = Path(data) / task.name
    for ext in (".parquet", ".jsonl", ".arrow", ".json"):
        if (folder / f"{lang}{ext}").exists():
            from lrpipe.readers import read_table

            return read_table(str(folder / f"{lang}{ext}")), str(folder / f"{lang}{ext}")
    return None


def as_list(value: Any, where: str, row: int, field: str) -> list[Any]:
    """A list, also when a release stores it as text (``'["a", "b"]'`` or Python's ``"['a', 'b']"``)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, str):
        import ast

        for parse in (json.loads, ast.literal_eval):
            try:
                value = parse(value)
                break
            except (ValueError, SyntaxError):
                continue
    if not isinstance(value, (list, tuple)):
        raise InputError(f"expected a list, or text holding one; got {str(value)[:80]!r}", path=where, row=row,
                         field=field)
    return list(value)


def as_index(value: Any, where: str, row: int, field: str) -> int:
    """An option index, also when a release stores it as text (``"2"``)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, str):
            value = value.strip()
        out = int(value)
        if str(out) != str(value).strip() and not isinstance(value, (int, np.integer)):
            raise ValueError
        return out
    except (TypeError, ValueError):
        raise InputError(f"expected an option index, got {value!r}", path=where, row=row, field=field) from None


def leading_option(answer: Any, options: dict[str, list[str]] | None) -> int | None:
    """The option an answer starts with, in any language: "Yes, the dog is brown." → ``yes`` (0); "Ez,
    ez dago." → ``ez`` (1). None when its first word is none of the options."""
    if not isinstance(answer, str) or not options:
        return None
    words = answer.strip().lower().split()
    if not words:
        return None
    first = words[0].strip(".,;:!?¡¿\"'()")
    for opts in options.values():
        low = [o.lower() for o in opts]
        if first in low:
            return low.index(first)
    return None


def instances(task: MMTask, data: Path | str, lang: str, source_lang: str = "en",
              limit: int | None = None) -> list[dict]:
    """The task's instances in one language: id, image, question, answers / options + gold.

    Two layouts: a ``pipe translate --sample`` output (``X`` in the source language, ``X_<lang>``
    beside it, one table for both languages), or one table per language (a released set, or
    ``DIR/<task>/<lang>.parquet``), whose columns the task's ``released`` entry may rename. Values stored
    as text (a list of choices, an option index) are parsed; one that cannot be is an error naming it."""
    from lrpipe.images import URL_COLUMNS, require_images

    own = _language_table(task, data, lang)
    if own is not None:
        table, where = own
        col = lambda row, name: row.get(task.field(name, lang))  # noqa: E731
        image_col = task.field("image", lang)
    else:
        table, where = _table(Path(data), task.name)
        def col(row: dict[str, Any], name: str) -> Any:
            column = getattr(task, name)
            if name == "gold_index":  # not translated: the same index in every language
                return row.get(f"{column}_{lang}", row.get(column))
            return _col(row, column, lang, source_lang)
        image_col = task.image
    require_images(table.column_names, image_col, where)
    rows = table.to_pylist()[:limit] if limit else table.to_pylist()
    out = []
    for i, r in enumerate(rows):
        q = col(r, "question")
        if q is None:
            raise InputError(f"no {lang} question", path=where, row=i, field=task.question)
        if own is not None and str(data) == "released" and task.released[lang].pair_by == "position":
            rid = i
        else:
            rid = r.get(task.field("id", lang)) if own is not None else r.get(task.id)
        inst: dict[str, Any] = {"id": str(rid if rid is not None else i), "image": r.get(image_col), "question": q,
                                "where": f"{where} row {i}"}
        if inst["image"] is None:
            url = next((r[c] for c in URL_COLUMNS if r.get(c)), None)
            raise InputError("no image" + (f" (only the URL {url}: fetch the images with pipe images)" if url else ""),
                             path=where, row=i, field=image_col)
        if task.kind == "vqa":
            ans = as_list(col(r, "answers") if task.answers else r.get("answers"), where, i, task.answers or "answers")
            inst["answers"] = [a["answer"] if isinstance(a, dict) else str(a) for a in ans]
        else:
            opts, gold = _options_and_gold(task, r, col, lang, where, i, translated=own is None)
            inst["options"], inst["gold"] = [str(o) for o in opts], gold
        out.append(inst)
    return out


def _options_and_gold(task: MMTask, r: dict[str, Any], col: Any, lang: str, where: str, i: int, *,
                      translated: bool) -> tuple[list[Any], int | None]:
    """A multiple-choice row's options in ``lang`` and the gold option's index (None: no gold)."""
    opts = as_list(col(r, "choices"), where, i, task.choices) if task.choices else (task.options or {}).get(lang)
    if not opts:
        raise InputError(f"no options for language {lang}", path=where, row=i, field=task.choices or "options")
    gold = None
    if task.gold_index and col(r, "gold_index") is not None:
        gold = as_index(col(r, "gold_index"), where, i, task.gold_index)
        if not 0 <= gold < len(opts):
            raise InputError(f"option index {gold} out of range for {len(opts)} options", path=where,
                             row=i, field=task.gold_index)
    elif task.gold_answer and task.gold_rule == "leading-word":
        gold = leading_option(col(r, "gold_answer"), task.options)
        if gold is None and translated:  # the source-language answer decides when the translation cannot
            gold = leading_option(r.get(task.gold_answer), task.options)
    elif task.gold_answer:
        a = str(col(r, "gold_answer") or "").strip().lower().rstrip(".")
        gold = next((k for k, o in enumerate(opts) if str(o).lower() == a), None)
    return opts, gold


def aligned_instances(task: MMTask, data: Path | str, langs: list[str], source_lang: str = "en",
                      limit: int | None = None) -> dict[str, list[dict]]:
    """Every language's instances, on the same ids: a multiple-choice gold is decided once per instance
    (the first language that decides it, the source language first), and an instance without a gold in
    any language is left out of all of them, so both languages are scored on identical instances.
    Different id sets (released sets that do not match) are an error."""
    per = {lang: instances(task, data, lang, source_lang, limit) for lang in langs}
    ids = {lang: [x["id"] for x in v] for lang, v in per.items()}
    first = ids[langs[0]]
    for lang in langs[1:]:
        if sorted(ids[lang]) != sorted(first):
            only_a, only_b = set(first) - set(ids[lang]), set(ids[lang]) - set(first)
            raise InputError(f"task {task.name}: the {langs[0]} and {lang} instances differ ({len(only_a)} only in "
                             f"{langs[0]}, {len(only_b)} only in {lang}, e.g. {sorted(only_a | only_b)[:3]})")
    if task.kind == "mc":
        order = sorted(langs, key=lambda x: x != source_lang)
        gold = {}
        for lang in order:
            for x in per[lang]:
                if gold.get(x["id"]) is None:
                    gold[x["id"]] = x["gold"]
        for lang in langs:
            for x in per[lang]:
                x["gold"] = gold[x["id"]]
    return per
