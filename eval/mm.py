"""``pipe eval mm``: multimodal close-ended benchmarks in two languages on the same instances (SPEC §9).

Tasks are YAML files in ``eval/tasks/mm/`` (adding one needs no Python): ``kind: vqa`` (greedy
short-answer generation; official VQA accuracy and the inclusion variant, ``eval/vqa.py``) or
``kind: mc`` (log-likelihood of each option given image and question, batched with the shared
context once, ``eval/mc.py``; ``acc`` and ``acc_norm``).

**Data.** ``--data DIR`` holds, per task, what ``pipe translate --sample`` wrote (``DIR/<task>/``
with ``translated/``, or any shard directory/file): the English columns and their ``<column>_<lang>``
translations side by side, so both languages are read from the same rows and scored on identical
ids. The report shows each metric per language side by side and the per-instance agreement between
languages (both right or both wrong).

**Models.** Any transformers image-text-to-text model with a processor (``LlavaForConditionalGeneration``
and friends; the project's own MLLM, which ``pipe train export`` writes as a LLaVA folder). Generation
is greedy, through vLLM when it is installed and a GPU is present (every request queued at once, images
decoded as the engine pulls them), through transformers otherwise (batches with left padding). The
prompt is the processor's chat template in both cases, so both backends see the same text. Multiple
choice is scored with transformers (``eval/mc.py``: one forward pass per block of questions, which vLLM's
per-request prompt log-probabilities cannot share); generation tasks run first and the vLLM engine is
closed before the transformers model is loaded, so both never hold the GPU together.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict

from lrpipe.errors import InputError
from lrpipe.eval.mc import MCItem, accuracy, score_batched
from lrpipe.eval.vqa import vqa_accuracy, vqa_inclusion_accuracy

TASKS = Path(__file__).parent / "tasks" / "mm"


class ReleasedSet(BaseModel):
    """A published benchmark set in one language (``--data released``): where it is, and which of its
    columns hold the task's fields (``columns: {choices: options}``; unnamed fields keep the task's)."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    split: str = "test"
    columns: dict[str, str] = {}


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
    p = Path(name) if Path(name).suffix == ".yaml" else TASKS / f"{name}.yaml"
    if not p.exists():
        have = ", ".join(sorted(x.stem for x in TASKS.glob("*.yaml")))
        raise InputError(f"no multimodal task '{name}' (have: {have})", path=str(p))
    try:
        return MMTask.model_validate(yaml.safe_load(p.read_text()))
    except Exception as e:
        raise InputError(f"invalid task ({e})", path=str(p)) from e


def _table(data: Path, task: str) -> tuple[Any, str]:
    """The task's rows: DIR/<task>/translated, DIR/<task>, or DIR itself (shard dir or file)."""
    from lrpipe.shards import ShardDir
    from lrpipe.sources import read_table

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


def _image(value: Any, where: str) -> Any:
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
            from lrpipe.sources import read_table

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
    from lrpipe.pipelines.images import URL_COLUMNS, require_images

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
            opts = (as_list(col(r, "choices"), where, i, task.choices) if task.choices else
                    (task.options or {}).get(lang))
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
                if gold is None and own is None:  # the source-language answer decides when the translation cannot
                    gold = leading_option(r.get(task.gold_answer), task.options)
            elif task.gold_answer:
                a = str(col(r, "gold_answer") or "").strip().lower().rstrip(".")
                gold = next((k for k, o in enumerate(opts) if str(o).lower() == a), None)
            inst["options"], inst["gold"] = [str(o) for o in opts], gold
        out.append(inst)
    return out


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


def mm_prompt(processor: Any, question: str, instruction: str | None) -> str:
    """The user turn (image first, then question and the task's instruction) in the processor's chat
    template, ending with the generation prompt."""
    text = f"{question}\n{instruction}" if instruction else question
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True)


class EngineVision:
    """Greedy generation through the engine layer (vLLM): all requests streamed into the engine, which
    keeps its batch full; images are decoded lazily as the engine pulls requests."""

    def __init__(self, engine: Any, processor: Any) -> None:
        if not getattr(engine, "supports_images", False):
            raise InputError(f"engine {engine.name} cannot take images; use vllm or the transformers backend")
        self.engine, self.processor = engine, processor

    def answer(self, insts: list[dict[str, Any]], instruction: str | None, max_new_tokens: int) -> dict[str, str]:
        from lrpipe.engines import GenRequest, Sampling

        sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_new_tokens, seed=0)
        reqs = (GenRequest(key=k, prompt=mm_prompt(self.processor, x["question"], instruction), sampling=sampling,
                           images=[_image(x["image"], x["where"])]) for k, x in enumerate(insts))
        out: dict[str, str] = {}
        for res in self.engine.generate(reqs):
            x = insts[res.key]
            if res.finish_reason == "error":
                raise InputError(f"generation failed: {res.error}", path=x["where"])
            out[x["id"]] = res.text
        return out

    def close(self) -> None:
        self.engine.close()


class HFVisionModel:
    """A transformers image-text-to-text model and its processor (greedy generation, MC scoring)."""

    def __init__(self, path: str, device: str | None = None, dtype: str = "auto") -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        td = (torch.bfloat16 if self.device == "cuda" else torch.float32) if dtype == "auto" else getattr(torch, dtype)
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=td).to(self.device).eval()
        self.tok = self.processor.tokenizer

    def prompt(self, question: str, instruction: str | None) -> str:
        return mm_prompt(self.processor, question, instruction)

    def answer(self, insts: list[dict[str, Any]], instruction: str | None, max_new_tokens: int,
               batch_size: int = 8) -> dict[str, str]:
        out: dict[str, str] = {}
        for s in range(0, len(insts), batch_size):
            chunk = insts[s:s + batch_size]
            texts = self.generate([(_image(x["image"], x["where"]), self.prompt(x["question"], instruction))
                                   for x in chunk], max_new_tokens)
            out.update({x["id"]: o for x, o in zip(chunk, texts)})
        return out

    def close(self) -> None:
        self.model = None

    def generate(self, batch: list[tuple[Any, str]], max_new_tokens: int) -> list[str]:
        self.tok.padding_side = "left"
        enc = self.processor(text=[p for _, p in batch], images=[im for im, _ in batch], padding=True,
                             return_tensors="pt").to(self.device)
        with self.torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        return self.tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def mc_item(self, image: Any, prompt: str, options: list[str], gold: int | None) -> MCItem:
        enc = self.processor(text=[prompt], images=[image], return_tensors="pt")
        opts = [self.tok(o, add_special_tokens=False)["input_ids"] for o in options]
        return MCItem(enc["input_ids"][0].tolist(), opts, gold=gold, option_texts=options,
                      pixel_values=enc["pixel_values"])


def evaluate(model: HFVisionModel | EngineVision, task: MMTask, data: Path | str, langs: list[str], *,
             limit: int | None = None, batch_size: int = 8, source_lang: str = "en") -> dict[str, Any]:
    """Scores of one task in every language, and the per-instance agreement between languages.
    Generation tasks take either backend; multiple choice needs the transformers model."""
    per_lang: dict[str, dict[str, Any]] = {}
    records: dict[str, dict[str, dict[str, Any]]] = {}
    aligned = aligned_instances(task, data, langs, source_lang, limit)
    for lang in langs:
        insts = aligned[lang]
        instr = task.instruction.get(lang)
        recs: dict[str, dict[str, Any]] = {}
        if task.kind == "vqa":
            kw = {"batch_size": batch_size} if isinstance(model, HFVisionModel) else {}
            outs = model.answer(insts, instr, task.max_new_tokens, **kw)
            for x in insts:
                o = outs[x["id"]]
                recs[x["id"]] = {"prediction": o.strip(), "vqa_acc": vqa_accuracy(o, x["answers"]),
                                 "inclusion_acc": vqa_inclusion_accuracy(o, x["answers"])}
            metrics = {"vqa_acc": float(np.mean([r["vqa_acc"] for r in recs.values()])) if recs else float("nan"),
                       "inclusion_acc": float(np.mean([r["inclusion_acc"] for r in recs.values()])) if recs
                       else float("nan"), "n": len(recs)}
        else:
            if not isinstance(model, HFVisionModel):
                raise InputError(f"task {task.name}: multiple choice is scored with the transformers model")
            usable = [x for x in insts if x["gold"] is not None]
            items = [model.mc_item(_image(x["image"], x["where"]), model.prompt(x["question"], instr), x["options"],
                                   x["gold"]) for x in usable]
            pad = model.tok.pad_token_id if model.tok.pad_token_id is not None else 0
            scores = score_batched(model.model, items, pad_id=pad)
            metrics = accuracy(items, scores) | {"skipped_no_gold": len(insts) - len(usable)}
            for x, s in zip(usable, scores):
                recs[x["id"]] = {"scores": s, "prediction": x["options"][int(np.argmax(s))],
                                 "correct": float(int(np.argmax(s)) == x["gold"])}
        per_lang[lang] = metrics
        records[lang] = recs
    result: dict[str, Any] = {"task": task.name, "kind": task.kind, "metrics": per_lang}
    if len(langs) >= 2:
        a, b = langs[0], langs[1]
        shared = sorted(records[a].keys() & records[b].keys())
        key = "vqa_acc" if task.kind == "vqa" else "correct"
        same = [(records[a][i][key] > 0) == (records[b][i][key] > 0) for i in shared]
        result["agreement"] = {"languages": [a, b], "instances": len(shared),
                               "same_outcome": float(np.mean(same)) if same else float("nan")}
    result["records"] = records
    return result


def report_markdown(results: list[dict[str, Any]], langs: list[str]) -> str:
    lines = ["| task | metric | " + " | ".join(langs) + " | agreement |", "|---|---|" + "---:|" * (len(langs) + 1)]
    for r in results:
        metrics = [m for m in next(iter(r["metrics"].values())) if m not in ("n", "skipped_no_gold")]
        for m in metrics:
            vals = " | ".join(f"{100 * r['metrics'][lang][m]:.2f}" for lang in langs)
            agr = r.get("agreement", {}).get("same_outcome")
            lines.append(f"| {r['task']} | {m} | {vals} | {'' if agr is None else f'{100 * agr:.1f}%'} |")
    return "\n".join(lines) + "\n"


def default_backend() -> str:
    """vLLM when it is installed and a GPU is present; transformers otherwise (vLLM's CPU build cannot
    load LLaVA-style models without torchvision, which the CPU install leaves out)."""
    from lrpipe.engines.vllm_engine import _on_cpu, vllm_available

    return "vllm" if vllm_available() and not _on_cpu() else "transformers"


def run_eval_mm(model_path: str, tasks: list[str], langs: list[str], data: str | Path, out: str | Path, *,
                limit: int | None = None, batch_size: int = 8, source_lang: str = "en",
                backend: str | None = None, engine: Any = None) -> list[dict[str, Any]]:
    """Run the tasks and write results.json, results.md and per-instance records. ``engine`` (an
    already built engine that takes images) overrides ``backend`` for generation tasks."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = [load_task(t) for t in tasks]
    backend = backend or default_backend()
    if backend not in ("vllm", "transformers"):
        raise InputError(f"unknown backend '{backend}' (vllm or transformers)")
    # Generation first, through the engine when there is one; then multiple choice with transformers.
    order = sorted(range(len(loaded)), key=lambda i: loaded[i].kind != "vqa")
    model: HFVisionModel | EngineVision | None = None
    own_engine = engine is None
    by_index: dict[int, dict[str, Any]] = {}
    for i in order:
        task = loaded[i]
        want_engine = task.kind == "vqa" and (engine is not None or backend == "vllm")
        if model is None or isinstance(model, EngineVision) != want_engine:
            if model is not None and (isinstance(model, HFVisionModel) or own_engine):
                model.close()
            if want_engine:
                from transformers import AutoProcessor

                if engine is None:
                    from lrpipe.engines import make_engine

                    engine = make_engine("vllm", model_path, dtype="auto", limit_mm_per_prompt={"image": 1})
                model = EngineVision(engine, AutoProcessor.from_pretrained(model_path))
            else:
                model = HFVisionModel(model_path)
        by_index[i] = evaluate(model, task, data if str(data) == "released" else Path(data), langs, limit=limit,
                               batch_size=batch_size,
                               source_lang=source_lang)
    if model is not None and (isinstance(model, HFVisionModel) or own_engine):
        model.close()
    results = []
    for i in range(len(loaded)):
        task, res = loaded[i], by_index[i]
        with open(out / f"{task.name}.records.jsonl", "w") as fh:
            for lang, recs in res.pop("records").items():
                for iid, rec in recs.items():
                    fh.write(json.dumps({"id": iid, "language": lang, **rec}, ensure_ascii=False) + "\n")
        results.append(res)
    (out / "results.json").write_text(json.dumps({"model": model_path, "languages": langs, "results": results},
                                                 indent=2) + "\n")
    (out / "results.md").write_text(report_markdown(results, langs))
    return results
