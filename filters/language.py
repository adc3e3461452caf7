"""``language``: the text is in the expected language, by lingua-language-detector (its models ship
inside the wheel, so it works offline, and it knows Basque).

Before detection, fenced and inline code, URLs, e-mail addresses, LaTeX and numbers are removed: a
translation keeps them verbatim, and they would otherwise pull the detector towards English. Texts
left with fewer than ``min_letters`` letters cannot be judged and are kept.

Detection runs over the whole batch with lingua's multi-threaded ``*_in_parallel`` calls. By default
the detector considers every language lingua knows (most robust, ~1 GB of models once loaded);
``candidates: [eu, en, es, fr]`` restricts it, which is faster and lighter when the plausible
confusions are known (the source language, neighbouring languages).
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa

from lrpipe.filters.base import Filter, Verdict, register, text_column

_STRIP = re.compile(
    r"```.*?(```|$)"  # fenced code (an unclosed fence runs to the end)
    r"|`[^`\n]*`"  # inline code
    r"|\$\$.*?\$\$|\$[^$\n]+\$|\\\[.*?\\\]|\\\(.*?\\\)"  # LaTeX
    r"|https?://\S+|www\.\S+|\S+@\S+\.\w+"  # URLs, e-mail
    r"|\d[\d.,:/%-]*",  # numbers
    re.DOTALL,
)
_LETTER = re.compile(r"[^\W\d_]")


def prose(text: str) -> str:
    """The text without code, URLs, LaTeX and numbers: what the language detector should judge."""
    return _STRIP.sub(" ", text)


def _language(code: str) -> Any:
    from lingua import IsoCode639_1, IsoCode639_3, Language

    c = code.strip()
    for conv in (lambda x: Language.from_iso_code_639_1(IsoCode639_1.from_str(x)),
                 lambda x: Language.from_iso_code_639_3(IsoCode639_3.from_str(x)),
                 lambda x: Language.from_str(x)):
        try:
            return conv(c)
        except (ValueError, AttributeError):
            continue
    raise ValueError(f"language filter: unknown language {code!r} (use an ISO 639-1/3 code or a name, e.g. 'eu')")


@register
class LanguageFilter(Filter):
    name = "language"

    def __init__(self, field: str | list[str] = "instruction", language: str = "eu",
                 candidates: list[str] | None = None, min_letters: int = 20, min_confidence: float = 0.0,
                 low_accuracy: bool = False, **params: Any) -> None:
        fields = [field] if isinstance(field, str) else list(field)
        super().__init__(field=",".join(fields), language=language, candidates=candidates, min_letters=min_letters,
                         min_confidence=min_confidence, low_accuracy=low_accuracy, **params)
        self.fields, self.min_letters, self.min_confidence = fields, min_letters, min_confidence
        self.expected = _language(language)
        self.candidates = [_language(c) for c in candidates] if candidates else None
        if self.candidates is not None and self.expected not in self.candidates:
            self.candidates.append(self.expected)
        self.low_accuracy = low_accuracy
        self._detector = None

    @property
    def detector(self) -> Any:
        """Built lazily, so each worker process loads its own models once and only if needed."""
        if self._detector is None:
            from lingua import LanguageDetectorBuilder

            b = (LanguageDetectorBuilder.from_languages(*self.candidates) if self.candidates
                 else LanguageDetectorBuilder.from_all_languages())
            if self.low_accuracy:
                b = b.with_low_accuracy_mode()
            self._detector = b.build()
        return self._detector

    def detect(self, texts: list[str]) -> list[str | None]:
        """ISO 639-1 code of each text's language among the candidates; None where the text has too
        few letters (after removing code, URLs, LaTeX and numbers) to judge, or nothing is detected."""
        prose_texts = [prose(t) for t in texts]
        judge = [i for i, t in enumerate(prose_texts) if len(_LETTER.findall(t)) >= self.min_letters]
        out: list[str | None] = [None] * len(texts)
        if judge:
            for i, lang in zip(judge, self.detector.detect_languages_in_parallel_of([prose_texts[i] for i in judge])):
                out[i] = lang.iso_code_639_1.name.lower() if lang is not None else None
        return out

    def keep_batch(self, table: pa.Table) -> list[tuple[bool, str]]:
        out = [(True, "")] * table.num_rows
        want = self.expected.iso_code_639_1.name.lower()
        for f in self.fields:
            texts = [prose(t) for t in text_column(table, f).to_pylist()]
            judge = [i for i, t in enumerate(texts) if out[i][0] and len(_LETTER.findall(t)) >= self.min_letters]
            if not judge:
                continue
            sub = [texts[i] for i in judge]
            detected = self.detector.detect_languages_in_parallel_of(sub)
            conf = (self.detector.compute_language_confidence_in_parallel(sub, self.expected)
                    if self.min_confidence > 0 else [None] * len(sub))
            for i, lang, c in zip(judge, detected, conf):
                if lang != self.expected:
                    got = lang.iso_code_639_1.name.lower() if lang is not None else "unknown"
                    out[i] = (False, f"{f}: detected {got}, expected {want}")
                elif c is not None and c < self.min_confidence:
                    out[i] = (False, f"{f}: confidence {c:.2f} for {want} < {self.min_confidence}")
        return out

    def keep(self, row: dict[str, Any]) -> Verdict:
        ok, detail = self.keep_batch(pa.Table.from_pylist([row]))[0]
        return ok if ok else (False, detail)
