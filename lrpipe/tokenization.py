"""Conversations and documents to token ids with loss labels, through the model's own chat template.

Shared by ``pipe pack`` (training rows), ``pipe mix`` (token counts for shares) and the multimodal
trainer (its text turns), so it lives in the core rather than in one stage.

**Loss masks.** Conversations go through the tokenizer's chat template; only assistant tokens carry
loss, including each assistant turn's end-of-turn token; system and user text never do.

* When the template has ``{% generation %}`` markers, transformers' assistant mask is used.
* Otherwise the assistant spans are derived by rendering growing prefixes of the conversation: the
  render of the first ``k`` messages must be a prefix of the render of the first ``k + 1`` (else the
  template rewrites earlier turns and we refuse, naming the template); an assistant turn's span runs
  from the end of the render of the messages before it *with the generation prompt* to the end of its
  end-of-turn token. Spans are mapped to tokens through the tokenizer's character offsets. There is
  no fallback to splitting strings: a template we cannot analyse is an error.

**Corpus documents** get plain LM loss with EOS appended.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from lrpipe import chat
from lrpipe.errors import PipeError, RowError

IGNORE = -100


class TemplateError(PipeError):
    """The chat template cannot give a reliable loss mask."""

    exit_code = 2


# ------------------------------------------------------------------------------------------ loss masks
def _template_name(tok: Any) -> str:
    return getattr(tok, "name_or_path", "") or type(tok).__name__


def _render(tok: Any, msgs: list[dict[str, str]], gen: bool) -> str:
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def end_of_turn(tok: Any) -> str | None:
    """The token string that closes a turn: the one the chat template writes (``<|eot_id|>``,
    ``<|im_end|>``, ...), else EOS."""
    template = tok.chat_template or ""
    key = (id(tok), template)
    if key not in _EOT:
        vocab = tok.get_vocab()  # slow on large vocabularies: once per tokenizer
        _EOT[key] = next((t for t in ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")
                          if t in template and t in vocab), tok.eos_token)
    return _EOT[key]


_EOT: dict[tuple[int, str], str | None] = {}


def assistant_spans(tok: Any, msgs: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that carry loss (growing-prefix method).

    For each assistant message ``k`` two renders are needed: the messages before it with the
    generation prompt (``head``: the span starts at its end) and the messages up to it (``cur``: the
    span ends after its end-of-turn token). The chain ``head_1 ⊑ cur_1 ⊑ head_2 ⊑ … ⊑ full`` of
    prefixes is checked, which is exactly what makes every span valid in the full text; renders
    after user or system messages alone would add nothing to it (and cost a third of the time)."""
    full = _render(tok, msgs, gen=False)
    eot = end_of_turn(tok)
    spans = []
    prev, prev_n = "", 0
    for k in range(1, len(msgs) + 1):
        if msgs[k - 1]["role"] != "assistant":
            continue
        head = _render(tok, msgs[:k - 1], gen=True)
        cur = full if k == len(msgs) else _render(tok, msgs[:k], gen=False)
        if not head.startswith(prev) or not cur.startswith(head):
            what = (f"render of {prev_n} messages is not a prefix of the render of {k - 1} with the generation "
                    f"prompt" if not head.startswith(prev) else
                    f"render of {k - 1} messages with the generation prompt is not a prefix of the render of {k}")
            raise TemplateError(f"chat template of {_template_name(tok)} rewrites earlier turns when a message "
                                f"is added ({what}); add {{% generation %}} markers to it to get a loss mask")
        end = len(cur)
        if eot:
            j = cur.rfind(eot, len(head))
            if j >= 0:
                end = j + len(eot)
        spans.append((len(head), end))
        prev, prev_n = cur, k
    if not full.startswith(prev):
        raise TemplateError(f"chat template of {_template_name(tok)} rewrites earlier turns when a message is added "
                            f"(render of {prev_n} messages is not a prefix of the whole conversation); "
                            "add {% generation %} markers to it to get a loss mask")
    return full, spans


def _has_generation_markers(tok: Any) -> bool:
    tmpl = tok.chat_template or ""
    return "{% generation %}" in tmpl or "{%- generation %}" in tmpl


def encode(tok: Any, texts: list[str]) -> list[Any]:
    """Encodings of many texts in one batched call (no special tokens added: the chat template or
    the caller writes them): the fast tokenizer's backend ``Encoding`` objects (ids, and character
    spans on demand), else a slow tokenizer's ids and offset lists."""
    if not texts:
        return []
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        return backend.encode_batch(texts, add_special_tokens=False)
    enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [_SlowEncoding(i, o) for i, o in zip(enc["input_ids"], enc["offset_mapping"])]


class _SlowEncoding:
    """The two ``tokenizers.Encoding`` lookups we use, for tokenizers without a Rust backend."""

    def __init__(self, ids: list[int], offsets: list[tuple[int, int]]) -> None:
        self.ids, self.offsets = ids, offsets
        self._starts = [a for a, _ in offsets]

    def char_to_token(self, pos: int) -> int | None:
        k = bisect.bisect_right(self._starts, pos) - 1
        return k if k >= 0 and self.offsets[k][0] <= pos < self.offsets[k][1] else None

    def token_to_chars(self, t: int) -> tuple[int, int]:
        return self.offsets[t]


def loss_labels(enc: Any, spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and labels: the token id where the token lies wholly inside a loss span, ``-100``
    elsewhere. Only the tokens at each span's two ends are looked up (O(spans), not O(tokens))."""
    ids = np.asarray(enc.ids, np.int32)
    labels = np.full(len(ids), IGNORE, np.int32)
    for a, b in spans:
        if b <= a:
            continue
        first = _token_at(enc, a, b, forward=True)
        last = _token_at(enc, b - 1, a - 1, forward=False)
        if first is None or last is None:
            continue
        if enc.token_to_chars(first)[0] < a:  # a token straddling the span's start is not the assistant's
            first += 1
        if enc.token_to_chars(last)[1] > b:
            last -= 1
        if first <= last:
            labels[first:last + 1] = ids[first:last + 1]
    return ids, labels


def _token_at(enc: Any, pos: int, stop: int, forward: bool) -> int | None:
    """The token holding character ``pos``, moving towards ``stop`` past characters no token holds."""
    step = 1 if forward else -1
    while pos != stop:
        t = enc.char_to_token(pos)
        if t is not None:
            return t
        pos += step
    return None


def tokenize_conversations(tok: Any, convs: list[list[dict[str, str]]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """input_ids and labels (``-100`` outside the assistant turns) of many conversations; the texts
    are rendered one by one (growing prefixes) and tokenized in one batch."""
    if _has_generation_markers(tok):
        out = []
        for msgs in convs:
            enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            ids = np.asarray(enc["input_ids"], np.int32)
            out.append((ids, np.where(np.asarray(enc["assistant_masks"], bool), ids, IGNORE).astype(np.int32)))
        return out
    rendered = [assistant_spans(tok, m) for m in convs]
    return [loss_labels(enc, spans) for enc, (_, spans) in zip(encode(tok, [t for t, _ in rendered]), rendered)]


def tokenize_conversation(tok: Any, msgs: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """input_ids and labels of one conversation, as lists."""
    ids, labels = tokenize_conversations(tok, [msgs])[0]
    return ids.tolist(), labels.tolist()


def tokenize_documents(tok: Any, texts: list[str]) -> list[np.ndarray]:
    """Corpus documents for plain LM loss: BOS (when the tokenizer has one) + text + EOS."""
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    return [np.asarray(bos + list(e.ids) + eos, np.int32) for e in encode(tok, texts)]


def tokenize_document(tok: Any, text: str) -> list[int]:
    return tokenize_documents(tok, [text])[0].tolist()


def conversation_of(row: dict[str, Any], conv_field: str | None = None) -> list[dict[str, str]] | None:
    """The row's conversation (:func:`lrpipe.chat.conversation_of`: a messages or ShareGPT column, or an
    instruction/response pair); raises :class:`~lrpipe.errors.RowError` for a malformed one."""
    return chat.conversation_of(row, conv_field)


def count_tokens(tok: Any, rows: list[dict[str, Any]], conv_field: str | None = None,
                 text_field: str = "text") -> list[int]:
    """Tokens each row will have in ``pipe pack`` (chat-template render, or document + BOS/EOS), in
    one batched tokenizer call. Rows with neither a conversation nor a text (multimodal question/answer
    rows), or with a malformed conversation, count the tokens of their string fields, which is what a
    mixture's shares need."""
    texts, extra = [], []
    for r in rows:
        try:
            conv = conversation_of(r, conv_field)
        except RowError:
            conv = None
        if conv is not None:
            texts.append(_render(tok, conv, gen=False) if tok.chat_template else
                         "\n".join(m["content"] for m in conv))
            extra.append(0)
        elif isinstance(r.get(text_field), str):
            texts.append(r[text_field])
            extra.append((tok.bos_token_id is not None) + (tok.eos_token_id is not None))
        else:
            texts.append("\n".join(v for v in r.values() if isinstance(v, str)))
            extra.append(0)
    if not texts:
        return []
    return [len(enc.ids) + e for enc, e in zip(encode(tok, texts), extra)]
