"""``pipe pack``: tokenize conversations and corpus documents with the training model's tokenizer and
pack them into fixed-length rows for training (README: "Mixtures" and "Packing for training").

Tokenization and loss masks are :mod:`lrpipe.tokenization` (shared with ``pipe mix`` and training).
Conversations longer than a row are rejected as ``too_long``; documents longer than a row are split
at the row boundary.

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

import numpy as np
import pyarrow as pa

from lrpipe.runner import MapStage, UnitOutput, parse_rows
from lrpipe.shards import REJECT_DETAIL, REJECT_REASON, UnitSpec
from lrpipe.sources import Source
from lrpipe.tokenization import IGNORE, conversation_of, tokenize_conversations, tokenize_documents


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
    """Tokenize and pack one input unit into fixed-length rows.

    ``language``: read the input as that language sees it (``X_<lang>`` in place of ``X``), for a
    ``pipe translate`` directory packed directly; a ``pipe mix`` output is already one language per row.
    """

    name = "pack"

    def __init__(self, source: Source, tokenizer: Any, tokenizer_id: str, seq_len: int = 8192,
                 conversation_field: str | None = None, text_field: str = "text", id_field: str = "id",
                 language: str | None = None, languages: list[str] | None = None) -> None:
        self.source, self.tok, self.tokenizer_id, self.seq_len = source, tokenizer, tokenizer_id, seq_len
        self.conv, self.text, self.id_field = conversation_field, text_field, id_field
        self.language, self.languages = language, list(languages or ([language] if language else []))
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    def config(self) -> dict[str, Any]:
        c = {"tokenizer": self.tokenizer_id, "seq_len": self.seq_len, "conversation_field": self.conv,
             "text_field": self.text, "chat_template_sha": _sha(self.tok.chat_template or ""),
             "input": self.source.identity()}
        if self.language:
            c["language"] = self.language
        return c

    def inputs(self) -> list[dict[str, Any]]:
        return [self.source.describe()]

    def plan(self) -> list[UnitSpec]:
        return self.source.units()

    def read(self, unit: UnitSpec) -> pa.Table:
        table = self.source.read_unit(unit)
        if self.language:
            from lrpipe.languages import language_view

            table = language_view(table, self.language, self.languages)
        return table

    def docs_of(self, table: pa.Table, unit: UnitSpec) -> tuple[list[Doc], dict[int, tuple[str, str]]]:
        """The unit's documents in row order (conversations and split corpus documents) and the rows
        that cannot be packed, with their reason."""
        rows = table.to_pylist()
        found, bad = parse_rows(rows, lambda r: conversation_of(r, self.conv), unit)
        convs = {i: msgs for i, msgs in found.items() if msgs is not None}
        texts: dict[int, str] = {}
        for i, r in enumerate(rows):
            if i in bad or i in convs:
                continue
            if isinstance(r.get(self.text), str):
                texts[i] = r[self.text]
            else:
                what = f"'{self.conv}'" if self.conv else "a conversation (conversation/conversations/messages)"
                bad[i] = ("bad_input", f"{unit.name} row {i}: neither {what}, an instruction/response pair, "
                                       f"nor '{self.text}'")
        conv_tok = dict(zip(convs, tokenize_conversations(self.tok, list(convs.values()))))
        text_tok = dict(zip(texts, tokenize_documents(self.tok, list(texts.values()))))
        docs = []
        for i, r in enumerate(rows):
            rid = str(r.get(self.id_field) or f"{unit.name}:{i}")
            if i in conv_tok:
                ids, labels = conv_tok[i]
                if len(ids) > self.seq_len:
                    bad[i] = ("too_long", f"{len(ids)} tokens > seq_len {self.seq_len}")
                    continue
                docs.append(Doc(ids, labels, rid))
            elif i in text_tok:
                ids = text_tok[i]
                for k in range(0, len(ids), self.seq_len):  # long documents split at the row boundary
                    piece = ids[k:k + self.seq_len]
                    docs.append(Doc(piece, piece, rid if k == 0 else f"{rid}#{k // self.seq_len}"))
        return docs, bad

    def process(self, unit: UnitSpec) -> UnitOutput:
        table = self.read(unit)
        docs, bad = self.docs_of(table, unit)
        bins = pack_bfd(docs, self.seq_len)
        n, L = len(bins), self.seq_len
        if n * L >= 2**31:
            raise ValueError(f"unit {unit.name}: {n} rows × {L} tokens overflow one Arrow list array; "
                             "use fewer rows per unit")
        # one flat buffer per column (rows are exactly seq_len long), filled document by document
        flat_ids = np.full(n * L, self.pad, np.int32)
        flat_lab = np.full(n * L, IGNORE, np.int32)
        flat_pos = np.empty(n * L, np.int32)
        ramp = np.arange(L, dtype=np.int32)
        seq_lens, source_ids = [], []
        pad_total = loss = 0
        for bi, b in enumerate(bins):
            o = bi * L
            for d in b.docs:
                m = len(d.ids)
                flat_ids[o:o + m] = d.ids
                flat_lab[o:o + m] = d.labels
                flat_pos[o:o + m] = ramp[:m]
                o += m
            pad = (bi + 1) * L - o
            flat_pos[o:o + pad] = ramp[:pad]
            pad_total += pad
            seq_lens.append([len(d.ids) for d in b.docs] + ([pad] if pad else []))
            source_ids.append([d.source_id for d in b.docs])
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * L)
        kept = pa.table({"input_ids": pa.ListArray.from_arrays(offsets, pa.array(flat_ids)),
                         "labels": pa.ListArray.from_arrays(offsets, pa.array(flat_lab)),
                         "position_ids": pa.ListArray.from_arrays(offsets, pa.array(flat_pos)),
                         "seq_lens": pa.array(seq_lens, pa.list_(pa.int32())),
                         "source_ids": pa.array(source_ids, pa.list_(pa.string()))}, schema=PACKED_SCHEMA)
        loss = int((flat_lab != IGNORE).sum())
        rej_idx = sorted(bad)
        rejected = table.take(pa.array(rej_idx, pa.int64()))
        rejected = rejected.append_column(REJECT_REASON, pa.array([bad[i][0] for i in rej_idx], pa.string()))
        rejected = rejected.append_column(REJECT_DETAIL, pa.array([bad[i][1] for i in rej_idx], pa.string()))
        stats = {"tokens_in": sum(len(d.ids) for d in docs), "loss_tokens": loss, "pad_tokens": pad_total,
                 "bins": n, "documents": len(docs)}
        # packed rows hold many input rows: the balance is in input rows (consumed + rejected)
        return UnitOutput(kept=kept, rejected=rejected, rows_in=table.num_rows, stats=stats,
                          rows_consumed=table.num_rows - len(bad))


def _sha(s: str) -> str:
    import hashlib

    return hashlib.sha256(s.encode()).hexdigest()[:16]


def padding_waste(stats: dict[str, Any]) -> float:
    total = stats.get("tokens_in", 0) + stats.get("pad_tokens", 0)
    return stats.get("pad_tokens", 0) / total if total else 0.0
