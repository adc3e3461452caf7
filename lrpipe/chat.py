"""Chat-template helpers: Magpie pre-query templates and conversation normalization.

The Magpie pre-query template (everything the model sees before the user's words) is *derived from the
model's own chat template*: render a conversation whose user message is a sentinel and cut at the
sentinel. The end-of-user-turn stop is derived the same way, from what the template renders right
after the sentinel. No per-model table to keep up to date, and no stop word such as "assistant" that
would cut real instructions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from lrpipe.errors import ModelError, RowError

SENTINEL = "\u27e6PIPE_USER_SENTINEL_7c1f\u27e7"
ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
            "bot": "assistant", "chatgpt": "assistant", "system": "system", "tool": "tool"}


@dataclass(frozen=True)
class PreQuery:
    """What Magpie feeds the model, and how the user turn ends."""

    text: str                      # rendered template up to the user's words
    token_ids: tuple[int, ...]     # ``text`` tokenized without adding special tokens a second time
    stop_token_ids: tuple[int, ...]
    stop: tuple[str, ...]          # stop strings, for templates whose turn end is not a special token
    system_prompt: str | None


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"model '{getattr(tokenizer, 'name_or_path', '?')}' has no chat template: Magpie needs an instruct "
            "(chat) model whose template marks where the user's turn starts. Pass an instruct model with --model.")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja errors, templates that refuse a system message, ...
        raise ModelError(f"the chat template of '{getattr(tokenizer, 'name_or_path', '?')}' cannot render "
                         f"{[m['role'] for m in messages]}: {e}") from e


def pre_query(tokenizer: Any, system_prompt: str | None) -> PreQuery:
    """Derive the Magpie pre-query template and end-of-user-turn stops for ``system_prompt``
    (``None``: the model's default, i.e. whatever the template renders without a system message)."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": SENTINEL}]
    rendered = _render(tokenizer, messages, add_generation_prompt=True)
    if rendered.count(SENTINEL) != 1:
        raise ModelError(f"chat template of '{getattr(tokenizer, 'name_or_path', '?')}' does not render the "
                         "user message verbatim; cannot derive a Magpie pre-query template")
    if system_prompt and system_prompt.strip() not in rendered:
        raise ModelError(f"chat template of '{getattr(tokenizer, 'name_or_path', '?')}' drops the system prompt")
    prefix, suffix = rendered.split(SENTINEL)
    # The BOS the template writes is part of the text; tokenizing with add_special_tokens=False keeps it
    # exactly once (vLLM and tokenizers would otherwise add a second one).
    ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    stop_ids: list[int] = []
    stops: list[str] = []
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = {v for k, v in (tokenizer.get_added_vocab() or {}).items()} if hasattr(tokenizer, "get_added_vocab") else set()
    if suffix_ids and (suffix_ids[0] in special or suffix_ids[0] in added):
        stop_ids.append(suffix_ids[0])
    elif suffix.strip():
        # A template whose user turn ends in plain text (e.g. "\n\n### Response:"): stop on that text.
        stops.append(suffix.strip().splitlines()[0])
    eos = tokenizer.eos_token_id
    for e in (eos if isinstance(eos, list) else [eos]):
        if e is not None and e not in stop_ids:
            stop_ids.append(e)
    return PreQuery(text=prefix, token_ids=tuple(ids), stop_token_ids=tuple(stop_ids), stop=tuple(stops),
                    system_prompt=system_prompt)


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` rendered for the next assistant turn (no second BOS)."""
    return tokenizer(_render(tokenizer, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]


#: columns that may hold a conversation, in the order a stage looks for one
CONVERSATION_COLUMNS = ("conversation", "conversations", "messages")
#: how stages write a conversation: messages form
MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def _keys(m: dict[str, Any]) -> tuple[str, str] | None:
    """(role key, content key) of a message object in messages or ShareGPT form."""
    if "role" in m and "content" in m:
        return "role", "content"
    if "from" in m and "value" in m:
        return "from", "value"
    return None


def is_message_list(value: Any) -> bool:
    """A non-empty list of message objects (messages or ShareGPT form). A list of plain strings (the
    flat turn lists of some datasets) is *not* a conversation: it is left alone."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return (isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)
            and all(_keys({k: v for k, v in m.items() if v is not None}) for m in value))


def is_message_type(t: pa.DataType) -> bool:
    """Arrow type of a conversation column: a list of structs with role/content or from/value."""
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type):
        return False
    names = {t.value_type.field(i).name for i in range(t.value_type.num_fields)}
    return {"role", "content"} <= names or {"from", "value"} <= names


def conversation_column(schema: pa.Schema, field: str | None = None) -> str | None:
    """The column holding conversations: ``field`` when given and present, else the first of
    :data:`CONVERSATION_COLUMNS` whose type is a list of message objects."""
    if field:
        return field if field in schema.names else None
    return next((c for c in CONVERSATION_COLUMNS if c in schema.names and is_message_type(schema.field(c).type)),
                None)


def normalize_conversation(value: Any, *, path: str | None = None, row: int | None = None,
                           field: str = "conversation") -> list[dict[str, str]]:
    """Accept messages form (``[{role, content}]``) and ShareGPT form (``[{from, value}]``); return
    messages form with canonical roles, or raise a :class:`RowError` naming file, row and field."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise RowError(f"expected a non-empty list of messages, got {type(value).__name__}", path=path, row=row,
                       field=field)
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RowError(f"message {i} is a {type(m).__name__}, not an object", path=path, row=row, field=field)
        # Arrow unifies struct fields across rows, so absent keys arrive as None: treat them as absent.
        m = {k: v for k, v in m.items() if v is not None}
        keys = _keys(m)
        if keys is None:
            raise RowError(f"message {i} has keys {sorted(m)}; expected role/content or from/value",
                           path=path, row=row, field=field)
        role, content = m[keys[0]], m[keys[1]]
        canon = ROLE_MAP.get(str(role).lower())
        if canon is None:
            raise RowError(f"message {i} has unknown role '{role}'", path=path, row=row, field=field)
        if not isinstance(content, str):
            raise RowError(f"message {i} content is {type(content).__name__}, not text", path=path, row=row,
                           field=field)
        out.append({"role": canon, "content": content})
    return out


def conversation_of(row: dict[str, Any], field: str | None = None, *, qa: bool = False,
                    path: str | None = None, index: int | None = None) -> list[dict[str, str]] | None:
    """The conversation a row means, in messages form, or None when it holds none.

    Looked up in this order: ``field`` (when given); the first of :data:`CONVERSATION_COLUMNS` holding a
    list of message objects (ShareGPT or messages form; other lists are not conversations); an
    ``instruction``/``response`` pair (Magpie rows); with ``qa``, a ``question``/``answer`` pair
    (multimodal instruction rows such as PixMo-AMA). A value that is meant as a conversation but is
    malformed (unknown role, non-text content) raises :class:`RowError`, for the stage to reject the
    row."""
    if field:
        v = row.get(field)
        return None if v is None else normalize_conversation(v, path=path, row=index, field=field)
    for c in CONVERSATION_COLUMNS:
        v = row.get(c)
        if v is not None and isinstance(v, list) and v and all(isinstance(m, dict) for m in v):
            return normalize_conversation(v, path=path, row=index, field=c)
    pairs = [("instruction", "response")] + ([("question", "answer")] if qa else [])
    for a, b in pairs:
        if row.get(a) is not None or row.get(b) is not None:
            for k in (a, b):
                if not isinstance(row.get(k), str):
                    raise RowError(f"expected text, got {type(row.get(k)).__name__}", path=path, row=index,
                                   field=k)
            return [{"role": "user", "content": row[a]}, {"role": "assistant", "content": row[b]}]
    return None


def like_source(messages: list[dict[str, str]], source: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` (messages form, same length and order as ``source``) written in ``source``'s own
    form: the same keys and role names, each message's text replaced. A translation of a ShareGPT
    column thus has the column's type, so both languages' rows share one schema."""
    out = []
    for new, old in zip(messages, source):
        old = {k: v for k, v in old.items() if v is not None}
        keys = _keys(old) or ("role", "content")
        out.append({**old, keys[1]: new["content"]})
    return out


def chat_request(engine: Any, key: Any, messages: list[dict[str, Any]], sampling: Any, *,
                 images: list[Any] | None = None, processor: Any = None) -> Any:
    """A request for the next assistant turn of ``messages``, in the form ``engine`` takes.

    An OpenAI-compatible chat endpoint gets the messages themselves (its server applies the template);
    with images, the first user turn opens with one ``{"type": "image"}`` part per image and the prompt
    is the processor's chat template (a multimodal model expands each placeholder into its image tokens);
    otherwise the tokenizer's chat template, as token ids. Judges and answer generation build their
    requests here, so every engine sees a conversation the same way."""
    from lrpipe.engines.base import GenRequest

    if images:
        first = next(i for i, m in enumerate(messages) if m["role"] == "user")
        parts = [[{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]
                 for m in messages]
        parts[first] = [{"type": "image"} for _ in images] + parts[first]
        messages = [{"role": m["role"], "content": p} for m, p in zip(messages, parts)]
    if getattr(engine, "api", None) == "chat":
        return GenRequest(key=key, prompt="", sampling=sampling, messages=messages, images=images)
    if images:
        proc = processor if processor is not None else engine.processor
        prompt = proc.apply_chat_template(messages, add_generation_prompt=True)
        return GenRequest(key=key, prompt=prompt, sampling=sampling, messages=messages, images=images)
    return GenRequest(key=key, prompt=chat_prompt_ids(engine.tokenizer, messages), sampling=sampling,
                      messages=messages)
