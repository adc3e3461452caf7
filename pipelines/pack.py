"""``pipe pack``: tokenize conversations and corpus documents with the training model's tokenizer and
pack them into fixed-length rows for training (SPEC §7).

**Loss masks.** Conversations go through the tokenizer's chat template; only assistant tokens carry
loss, including each assistant turn's end-of-turn token; system and user text never do.

* When the template has ``{% generation %}`` markers, transformers' assistant mask is used.
* Otherwise the assistant spans are derived by rendering growing prefixes of the conversation: the
  render of the first ``k`` messages must be a prefix of the render of the first ``k + 1`` (else the
  template rewrites earlier turns and we refuse, naming the template); an assistant turn's span runs
  from the end of the render of the messages before it *with the generation prompt* to the end of its
  end-of-turn token. Spans are mapped to tokens through the tokenizer's character offsets. There is
  no fallback to splitting strings: a template we cannot analyse is an error.

**Corpus documents** get plain LM loss with EOS appended; documents longer than a row are split at
the row boundary. Conversations longer than a row are rejected as ``too_long``.

**Packing** is best-fit-decreasing within each input unit (a bounded window: memory does not grow
with the dataset, and the result does not depend on ranks): documents sorted by length, each placed
in the fullest row it still fits, padding only where a row cannot be filled. Document boundaries are
kept: ``position_ids`` restart at every document and ``seq_lens`` lists each row's document lengths
(for FlashAttention varlen or a block-diagonal SDPA mask).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lrpipe.errors import PipeError
from lrpipe.runner import MapStage, UnitOutput
from lrpipe.shards import REJECT_DETAIL, REJECT_REASON, UnitSpec
from lrpipe.sources import Source

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
    """The rendered conversation and the character spans that carry loss (growing-prefix method)."""
    full = _render(tok, msgs, gen=False)
    eot = end_of_turn(tok)
    spans = []
    prev = ""
    for k in range(1, len(msgs) + 1):
        cur = _render(tok, msgs[:k], gen=False) if k < len(msgs) else full
        if not cur.startswith(prev):
            raise TemplateError(f"chat template of {_template_name(tok)} rewrites earlier turns when a message "
                                f"is added (render of {k - 1} messages is not a prefix of the render of {k}); "
                                "add {% generation %} markers to it to get a loss mask")
        if msgs[k - 1]["role"] == "assistant":
            head = _render(tok, msgs[:k - 1], gen=True)
            if not cur.startswith(head) or len(head) < len(prev):
                raise TemplateError(f"chat template of {_template_name(tok)}: the generation prompt after "
                                    f"{k - 1} messages is not a prefix of the conversation with message {k}")
            end = len(cur)
            if eot:
                j = cur.rfind(eot, len(head))
                if j >= 0:
                    end = j + len(eot)
            spans.append((len(head), end))
        prev = cur
    return full, spans


def tokenize_conversation(tok: Any, msgs: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """input_ids and labels (``-100`` outside the assistant turns)."""
    tmpl = tok.chat_template or ""
    if "{% generation %}" in tmpl or "{%- generation %}" in tmpl:
        enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids = list(enc["input_ids"])
        mask = list(enc["assistant_masks"])
        return ids, [t if m else IGNORE for t, m in zip(ids, mask)]
    text, spans = assistant_spans(tok, msgs)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    starts = [s for s, _ in spans]
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if b <= a:
            continue
        k = bisect.bisect_right(starts, a) - 1
        if k >= 0 and spans[k][0] <= a and b <= spans[k][1]:
            labels[i] = ids[i]
    return ids, labels


def tokenize_document(tok: Any, text: str) -> list[int]:
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    if tok.bos_token_id is not None:
        ids = [tok.bos_token_id] + ids
    return ids + ([tok.eos_token_id] if tok.eos_token_id is not None else [])


# ------------------------------------------------------------------------------------------ packing
@dataclass
class Doc:
    ids: list[int]
    labels: list[int]
    source_id: str


@dataclass
class Bin:
    docs: list[Doc] = field(default_factory=list)
    used: int = 0


def pack_bfd(docs: list[Doc], seq_len: int) -> list[Bin]:
    """Best-fit decreasing: longest first, each into the fullest bin it still fits (ties by age)."""
    bins: list[Bin] = []
    free: list[tuple[int, int]] = []  # (free space, bin index), sorted
    for d in sorted(docs, key=lambda d: -len(d.ids)):
        n = len(d.ids)
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, bi = free.pop(k)
        else:
            bins.append(Bin())
            space, bi = seq_len, len(bins) - 1
        bins[bi].docs.append(d)
        bins[bi].used += n
        if space - n > 0:
            bisect.insort(free, (space - n, bi))
    return bins


# ------------------------------------------------------------------------------------------ stage
PACKED_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
                           ("position_ids", pa.list_(pa.int32())), ("seq_lens", pa.list_(pa.int32())),
                           ("source_ids", pa.list_(pa.string()))])


class PackStage(MapStage):
    name = "pack"

    def __init__(self, source: Source, tokenizer: Any, tokenizer_id: str, seq_len: int = 8192,
                 conversation_field: str = "conversation", text_field: str = "text", id_field: str = "id") -> None:
        self.source, self.tok, self.tokenizer_id, self.seq_len = source, tokenizer, tokenizer_id, seq_len
        self.conv, self.text, self.id_field = conversation_field, text_field, id_field
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    def config(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer_id, "seq_len": self.seq_len, "conversation_field": self.conv,
                "text_field": self.text, "chat_template_sha": _sha(self.tok.chat_template or ""),
                "input": self.source.identity()}

    def inputs(self) -> list[dict[str, Any]]:
        return [self.source.describe()]

    def plan(self) -> list[UnitSpec]:
        return self.source.units()

    def docs_of(self, table: pa.Table, unit: UnitSpec) -> tuple[list[Doc], dict[int, tuple[str, str]]]:
        docs, bad = [], {}
        rows = table.to_pylist()
        for i, r in enumerate(rows):
            rid = str(r.get(self.id_field) or f"{unit.name}:{i}")
            conv = r.get(self.conv)
            if conv is None and isinstance(r.get("instruction"), str) and isinstance(r.get("response"), str):
                conv = [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["response"]}]
            if conv is not None:
                msgs = [{"role": m["role"], "content": m["content"] or ""} for m in conv]
                ids, labels = tokenize_conversation(self.tok, msgs)
                if len(ids) > self.seq_len:
                    bad[i] = ("too_long", f"{len(ids)} tokens > seq_len {self.seq_len}")
                    continue
                docs.append(Doc(ids, labels, rid))
            elif isinstance(r.get(self.text), str):
                ids = tokenize_document(self.tok, r[self.text])
                for k in range(0, len(ids), self.seq_len):  # long documents split at the row boundary
                    piece = ids[k:k + self.seq_len]
                    docs.append(Doc(piece, list(piece), rid if k == 0 else f"{rid}#{k // self.seq_len}"))
            else:
                bad[i] = ("bad_input", f"{unit.name} row {i}: neither '{self.conv}' nor '{self.text}'")
        return docs, bad

    def process(self, unit: UnitSpec) -> UnitOutput:
        table = self.source.read_unit(unit)
        docs, bad = self.docs_of(table, unit)
        bins = pack_bfd(docs, self.seq_len)
        cols: dict[str, list[Any]] = {k: [] for k in PACKED_SCHEMA.names}
        pad_total = 0
        for b in bins:
            ids = [t for d in b.docs for t in d.ids]
            labels = [t for d in b.docs for t in d.labels]
            pos = [p for d in b.docs for p in range(len(d.ids))]
            pad = self.seq_len - len(ids)
            pad_total += pad
            cols["input_ids"].append(ids + [self.pad] * pad)
            cols["labels"].append(labels + [IGNORE] * pad)
            cols["position_ids"].append(pos + list(range(pad)))
            cols["seq_lens"].append([len(d.ids) for d in b.docs] + ([pad] if pad else []))
            cols["source_ids"].append([d.source_id for d in b.docs])
        kept = pa.table({k: pa.array(v, PACKED_SCHEMA.field(k).type) for k, v in cols.items()}, schema=PACKED_SCHEMA)
        rej_idx = sorted(bad)
        rejected = table.take(pa.array(rej_idx, pa.int64()))
        rejected = rejected.append_column(REJECT_REASON, pa.array([bad[i][0] for i in rej_idx], pa.string()))
        rejected = rejected.append_column(REJECT_DETAIL, pa.array([bad[i][1] for i in rej_idx], pa.string()))
        tokens = sum(len(d.ids) for d in docs)
        stats = {"tokens_in": tokens, "loss_tokens": sum(sum(1 for x in d.labels if x != IGNORE) for d in docs),
                 "pad_tokens": pad_total, "bins": len(bins), "documents": len(docs)}
        # packed rows hold many input rows: the balance is in input rows (consumed + rejected)
        return UnitOutput(kept=kept, rejected=rejected, rows_in=table.num_rows, stats=stats,
                          rows_consumed=table.num_rows - len(bad))


def _sha(s: str) -> str:
    import hashlib

    return hashlib.sha256(s.encode()).hexdigest()[:16]


def padding_waste(stats: dict[str, Any]) -> float:
    total = stats.get("tokens_in", 0) + stats.get("pad_tokens", 0)
    return stats.get("pad_tokens", 0) / total if total else 0.0
