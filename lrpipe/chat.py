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

from lrpipe.errors import InputError, ModelError

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


def normalize_conversation(value: Any, *, path: str | None = None, row: int | None = None,
                           field: str = "conversation") -> list[dict[str, str]]:
    """Accept messages form (``[{role, content}]``) and ShareGPT form (``[{from, value}]``); return
    messages form with canonical roles, or raise an :class:`InputError` naming file, row and field."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise InputError(f"expected a non-empty list of messages, got {type(value).__name__}", path=path, row=row,
                         field=field)
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise InputError(f"message {i} is a {type(m).__name__}, not an object", path=path, row=row, field=field)
        # Arrow unifies struct fields across rows, so absent keys arrive as None: treat them as absent.
        m = {k: v for k, v in m.items() if v is not None}
        if "role" in m and "content" in m:
            role, content = m["role"], m["content"]
        elif "from" in m and "value" in m:
            role, content = m["from"], m["value"]
        else:
            raise InputError(f"message {i} has keys {sorted(m)}; expected role/content or from/value",
                             path=path, row=row, field=field)
        canon = ROLE_MAP.get(str(role).lower())
        if canon is None:
            raise InputError(f"message {i} has unknown role '{role}'", path=path, row=row, field=field)
        if not isinstance(content, str):
            raise InputError(f"message {i} content is {type(content).__name__}, not text", path=path, row=row,
                             field=field)
        out.append({"role": canon, "content": content})
    return out
