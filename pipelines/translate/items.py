"""A row's item (a conversation or a question with answers), its texts, its JSON schema, and the paper's
text format."""

from __future__ import annotations

import re
from typing import Any

from lrpipe.pipelines.translate.recipe import Recipe


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


def schema_for(item: Any, max_length_ratio: float | None = None) -> dict[str, Any]:
    """JSON schema of the translation of ``item``: the same messages with the same roles in order, or
    the same keys with exactly as many answers. With ``max_length_ratio`` each text may be at most that
    many times as long as its source (in characters, plus 32, rounded up to 64 so few distinct schemas
    compile): a model that would loop or ramble closes the text there instead of running to max_tokens."""
    def text(src: str) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string"}
        if max_length_ratio:
            out["maxLength"] = -(-int(max_length_ratio * len(src) + 32) // 64) * 64
        return out

    if isinstance(item, list):
        msgs = [{"type": "object", "properties": {"role": {"type": "string", "enum": [m["role"]]},
                                                  "content": text(m["content"])},
                 "required": ["role", "content"], "additionalProperties": False} for m in item]
        return {"type": "array", "prefixItems": msgs, "items": False, "minItems": len(item), "maxItems": len(item)}
    props: dict[str, Any] = {"question": text(item["question"])}
    if "answer" in item:
        props["answer"] = text(item["answer"])
    if "answers" in item:
        n = len(item["answers"])
        longest = max((len(a) for a in item["answers"]), default=0)
        props["answers"] = {"type": "array", "items": text("x" * longest), "minItems": n, "maxItems": n}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


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
