"""Letter-choice scoring of models behind an API (the instruction study's GPT-4o and Claude rows).

An API gives no log-probabilities, so the study scored proprietary models only on the benchmarks written
as explicit letter choices (A, B, C, ...), prompting them to "Respond always with a single letter: A, B,
C or D." with the same few-shot examples as the open models (chat template, few-shot as multi-turn), and
MGSM as the generative task it is. Here lm-eval builds every prompt exactly as it does for the open
models (its own ``fewshot_context`` with the system instruction, few-shot turns and document), the
conversation goes to the model through pipe's engine layer (an OpenAI-compatible chat endpoint: retries,
concurrency, several servers), the letter is parsed from the reply, and the scores are written as
lm-eval results dicts, so the suite's summary reads them as it reads any run. A reply with no letter of
the document's choices is counted wrong and reported (``unparseable``); each reply is kept in
``samples_letters_<task>.jsonl``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lrpipe.errors import InputError

#: the system instruction the study gave the API models (its lm-eval scripts)
STUDY_INSTRUCTION = "Respond always with a single letter: A, B, C or D."
_LETTER = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")


def letters_of(task: Any, doc: dict[str, Any]) -> list[str] | None:
    """The document's choices when they are letters (A, B, C...), else None (a log-likelihood task)."""
    try:
        choices = task.doc_to_choice(doc)
    except Exception:  # noqa: BLE001 - a task without choices (generative)
        return None
    if isinstance(choices, list) and choices and all(isinstance(c, str) and re.fullmatch(r"\s*[A-Z]\s*", c)
                                                     for c in choices):
        return [c.strip() for c in choices]
    return None


def parse_letter(reply: str, letters: list[str]) -> str | None:
    """The first standalone capital letter of the reply that is one of ``letters`` ("B", "(B)", "B.",
    "Erantzuna: B", "**B**"); None when there is none."""
    for m in _LETTER.finditer(reply or ""):
        if m.group(1) in letters:
            return m.group(1)
    return None


def gold_letter(task: Any, doc: dict[str, Any], letters: list[str]) -> str:
    target = task.doc_to_target(doc)
    if isinstance(target, int):
        return letters[target]
    t = str(target).strip()
    if t in letters:
        return t
    if t.isdigit():
        return letters[int(t)]
    raise InputError(f"task {task.config.task}: target {target!r} is neither an index nor one of {letters}")


def classify(task: Any) -> str:
    """``letters`` (scored here), ``generate`` (lm-eval's chat-completions model) or ``loglikelihood``
    (not scorable through an API)."""
    if task.OUTPUT_TYPE == "generate_until":
        return "generate"
    docs = list(task.eval_docs)
    if task.OUTPUT_TYPE == "multiple_choice" and docs and letters_of(task, docs[0]) is not None:
        return "letters"
    return "loglikelihood"


def _messages(task: Any, doc: dict[str, Any], shots: int, instruction: str) -> list[dict[str, str]]:
    captured: list[list[dict[str, str]]] = []

    def capture(messages: list[dict[str, str]], **_: Any) -> str:
        captured.append([{"role": m["role"], "content": m["content"]} for m in messages])
        return ""

    task.fewshot_context(doc, shots, system_instruction=instruction, apply_chat_template=True,
                         fewshot_as_multiturn=shots > 0, chat_template=capture)
    if not captured:  # pragma: no cover - lm-eval always renders through the template here
        raise InputError(f"task {task.config.task}: lm-eval built no conversation")
    msgs = captured[-1]
    # lm-eval leaves the target delimiter at the end of user turns ("Erantzuna: "): a chat model needs none
    return [dict(m, content=m["content"].rstrip()) if m["role"] == "user" else m for m in msgs]


def score_letters(engine: Any, tasks: dict[str, Any], shots: int, out: Path, *, limit: int | None = None,
                  instruction: str = STUDY_INSTRUCTION, max_tokens: int = 8) -> dict[str, Any]:
    """Every document of ``tasks`` (name → lm-eval Task) through ``engine``; an lm-eval-shaped results
    dict (``acc``, ``unparseable``), and one samples file per task in ``out``."""
    from lrpipe.chat import chat_request
    from lrpipe.engines.base import Sampling

    items = []
    for name, task in tasks.items():
        docs = list(task.eval_docs)[:limit] if limit else list(task.eval_docs)
        for k, doc in enumerate(docs):
            letters = letters_of(task, doc)
            if letters is None:
                raise InputError(f"task {name}: document {k} has choices that are not letters")
            items.append((name, k, doc, letters, gold_letter(task, doc, letters), _messages(task, doc, shots,
                                                                                           instruction)))
    sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=0)
    reqs = (chat_request(engine, i, it[5], sampling) for i, it in enumerate(items))
    replies: dict[int, Any] = {res.key: res for res in engine.generate(reqs)}
    results: dict[str, Any] = {"results": {}, "configs": {}, "n-samples": {}}
    out.mkdir(parents=True, exist_ok=True)
    for name in tasks:
        rows = []
        for i, (n, k, _doc, letters, gold, msgs) in enumerate(items):
            if n != name:
                continue
            res = replies[i]
            if res.finish_reason == "error":
                raise InputError(f"task {name}, document {k}: the model's endpoint failed ({res.error})")
            got = parse_letter(res.text, letters)
            rows.append({"doc_id": k, "messages": msgs, "reply": res.text, "parsed": got, "gold": gold,
                         "correct": got == gold})
        n_docs = len(rows)
        acc = sum(r["correct"] for r in rows) / n_docs if n_docs else 0.0
        bad = sum(r["parsed"] is None for r in rows)
        results["results"][name] = {"alias": name, "acc,none": acc, "unparseable,none": bad}
        results["configs"][name] = {"metric_list": [{"metric": "acc"}], "num_fewshot": shots,
                                    "scoring": "letter choice (API)", "system_instruction": instruction}
        results["n-samples"][name] = {"original": len(list(tasks[name].eval_docs)), "effective": n_docs}
        with open(out / f"samples_letters_{name}.jsonl", "w") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return results
