"""``pipe eval mm``: multimodal close-ended benchmarks in two languages on the same instances (README: "Evaluation").

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

import json
from pathlib import Path
from typing import Any

import numpy as np

from lrpipe.errors import InputError
from lrpipe.eval.mc import MCItem, accuracy, score_batched
from lrpipe.eval.mm_data import (
    MMTask,
    aligned_instances,
    load_image,
    load_task,
)
from lrpipe.eval.vqa import vqa_accuracy, vqa_inclusion_accuracy


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
        if not engine.supports_images:
            raise InputError(f"engine {engine.name} cannot take images; use vllm or the transformers backend")
        self.engine, self.processor = engine, processor

    def answer(self, insts: list[dict[str, Any]], instruction: str | None, max_new_tokens: int) -> dict[str, str]:
        from lrpipe.engines import GenRequest, Sampling

        sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_new_tokens, seed=0)
        reqs = (GenRequest(key=k, prompt=mm_prompt(self.processor, x["question"], instruction), sampling=sampling,
                           images=[load_image(x["image"], x["where"])]) for k, x in enumerate(insts))
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
            texts = self.generate([(load_image(x["image"], x["where"]), self.prompt(x["question"], instruction))
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
            items = [model.mc_item(load_image(x["image"], x["where"]), model.prompt(x["question"], instr), x["options"],
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
