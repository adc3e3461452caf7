"""``language``: the text is in the expected language, by the detector that knows it
(:mod:`lrpipe.langid`): lingua for the 75 languages it has models for (they ship inside its wheel and
it knows Basque), fastText's compact lid.176 for the others it covers (Galician, Asturian...), GlotLID
by name. The filter's parameters in the manifest name the detector that decided.

Before detection, fenced and inline code, URLs, e-mail addresses, LaTeX and numbers are removed: a
translation keeps them verbatim, and they would otherwise pull the detector towards English. Texts
left with fewer than ``min_letters`` letters cannot be judged and are kept.

By default the detector considers every language it knows (most robust; lingua's ~1 GB of models
once loaded, multi-threaded over the batch); ``candidates: [eu, en, es, fr]`` restricts it, which is
faster and lighter when the plausible confusions are known (the source language, neighbouring ones).
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


@register
class LanguageFilter(Filter):
    name = "language"

    def __init__(self, field: str | list[str] = "instruction", language: str = "eu",
                 candidates: list[str] | None = None, min_letters: int = 20, min_confidence: float = 0.0,
                 low_accuracy: bool = False, detector: str | None = None, **params: Any) -> None:
        from lrpipe.langid import detector_for

        fields = [field] if isinstance(field, str) else list(field)
        det = detector_for(language, candidates, prefer=detector, low_accuracy=low_accuracy)
        super().__init__(field=",".join(fields), language=language, candidates=candidates, min_letters=min_letters,
                         min_confidence=min_confidence, low_accuracy=low_accuracy, detector=det.name, **params)
        self.fields, self.min_letters, self.min_confidence = fields, min_letters, min_confidence
        self.expected = language.strip().lower()
        if min_confidence > 0 and not hasattr(det, "confidence"):
            raise ValueError(f"language filter: min_confidence needs the lingua detector, not {det.name}")
        self.detector = det

    def detect(self, texts: list[str]) -> list[str | None]:
        """The code of each text's language among the candidates; None where the text has too few
        letters (after removing code, URLs, LaTeX and numbers) to judge, or nothing is detected."""
        prose_texts = [prose(t) for t in texts]
        judge = [i for i, t in enumerate(prose_texts) if len(_LETTER.findall(t)) >= self.min_letters]
        out: list[str | None] = [None] * len(texts)
        if judge:
            for i, lang in zip(judge, self.detector.detect([prose_texts[i] for i in judge])):
                out[i] = lang
        return out

    def keep_batch(self, table: pa.Table) -> list[tuple[bool, str]]:
        out = [(True, "")] * table.num_rows
        want = self.expected
        for f in self.fields:
            texts = [prose(t) for t in text_column(table, f).to_pylist()]
            judge = [i for i, t in enumerate(texts) if out[i][0] and len(_LETTER.findall(t)) >= self.min_letters]
            if not judge:
                continue
            sub = [texts[i] for i in judge]
            detected = self.detector.detect(sub)
            conf = (self.detector.confidence(sub, want) if self.min_confidence > 0  # type: ignore[attr-defined]
                    else [None] * len(sub))
            for i, lang, c in zip(judge, detected, conf):
                if lang != want:
                    out[i] = (False, f"{f}: detected {lang or 'unknown'}, expected {want}")
                elif c is not None and c < self.min_confidence:
                    out[i] = (False, f"{f}: confidence {c:.2f} for {want} < {self.min_confidence}")
        return out

    def keep(self, row: dict[str, Any]) -> Verdict:
        ok, detail = self.keep_batch(pa.Table.from_pylist([row]))[0]
        return ok if ok else (False, detail)
