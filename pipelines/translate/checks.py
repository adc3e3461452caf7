"""Checks of a translation against its source: parse, count, empty, protected text, span repetition,
language."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pyarrow as pa

from lrpipe.pipelines.translate.items import parse_text, texts_of
from lrpipe.pipelines.translate.recipe import Recipe

_FENCE = re.compile(r"```.*?```", re.S)


_INLINE = re.compile(r"`[^`\n]+`")


_URL = re.compile(r"https?://[^\s)\]>\"']+")


_LATEX = re.compile(r"\$\$.+?\$\$|\$[^$\n]+\$|\\\[.+?\\\]|\\\(.+?\\\)", re.S)


_TEXTCMD = re.compile(r"\\(?:text|mathrm|textbf|textit|operatorname)\{[^{}]*\}")


_DIGITS = re.compile(r"\d+")


def protected(text: str) -> dict[str, list[str]]:
    """What a translation must keep verbatim: fenced and inline code, URLs, LaTeX (ignoring the words
    inside ``\\text{…}``) and digit runs (so ``750,000`` may become ``750.000``)."""
    fences = _FENCE.findall(text)
    rest = _FENCE.sub(" ", text)
    inline = _INLINE.findall(rest)
    rest = _INLINE.sub(" ", rest)
    urls = _URL.findall(rest)
    rest = _URL.sub(" ", rest)
    latex = [_TEXTCMD.sub("", x) for x in _LATEX.findall(rest)]
    return {"code block": [f.strip() for f in fences], "inline code": inline, "URL": urls, "LaTeX": latex,
            "number": _DIGITS.findall(_LATEX.sub(" ", rest))}


def missing_protected(src: str, tgt: str) -> str | None:
    """The first protected piece of ``src`` that ``tgt`` lost, described; None when all survive."""
    want = protected(src)
    if not any(want.values()):
        return None
    have = protected(tgt)
    for kind in ("code block", "inline code", "URL", "LaTeX"):
        have_set = [re.sub(r"\s+", " ", x) for x in have[kind]] + [re.sub(r"\s+", " ", tgt)]
        for piece in want[kind]:
            p = re.sub(r"\s+", " ", piece)
            if not any(p in h for h in have_set):
                return f"{kind} not preserved: {piece[:60]!r}"
    # numbers: each digit run as many times as in the source, anywhere in the target
    need, got = Counter(want["number"]), Counter(_DIGITS.findall(tgt))
    for num, k in need.items():
        if got[num] < k:
            return f"number not preserved: {num!r} ({k}x in source, {got[num]}x in translation)"
    return None


#: every reason the checker can reject an attempt for (``translate_<reason>`` in rejected rows): tests and
#: reports take the list from here, so a new reason cannot be missing from what they allow
CHECK_REASONS = ("engine_error", "too_long", "span_repetition", "invalid_json", "unparseable", "count_mismatch",
                 "empty", "not_preserved", "wrong_language")
#: reasons another attempt cannot fix (a longer translation than the row's budget is cut the same way)
FINAL_REASONS = {"too_long"}


class Checker:
    """Runs a recipe's checks on one translated item against its source item."""

    def __init__(self, recipe: Recipe) -> None:
        from lrpipe.filters.span_repetition import SpanRepetition
        from lrpipe.langid import knows

        self.recipe = recipe
        self.checks = set(recipe.checks)
        self.notes: list[str] = []
        # also measures outputs cut at max_tokens: a loop is worth a retry, a long translation is not
        self._span = SpanRepetition(field="tgt", source_field="src")
        self._lang = None
        self.detector: str | None = None
        if "language" in self.checks:
            self.detector = knows(recipe.target_lang)
            if self.detector is None:
                self.notes.append(f"the language check is skipped: no detector here knows '{recipe.target_lang}' "
                                  "(lingua, fastText lid.176)")
            else:
                from lrpipe.filters.language import LanguageFilter

                cands = recipe.language_candidates or sorted(
                    {c for c in (recipe.source_lang, "en", "es", "fr") if knows(c)} - {recipe.target_lang})
                self._lang = LanguageFilter(field="t", language=recipe.target_lang, candidates=cands)
                self.detector = self._lang.detector.name
                self.notes.append(f"language check by {self.detector}")
                self._src_known = knows(recipe.source_lang) is not None

    def parse(self, text: str, src: Any, labels: dict[str, str]) -> Any:
        if self.recipe.format == "text":
            return parse_text(text, labels, src)
        return json.loads(text)

    def __call__(self, src: Any, text: str, finish_reason: str, labels: dict[str, str]) -> tuple[Any, str, str]:
        """(parsed translation or None, reject reason or "", detail)."""
        if finish_reason == "error":
            return None, "engine_error", text[:200]
        if finish_reason == "length":
            return None, *self._cut(src, text)
        try:
            tgt = self.parse(text, src, labels)
        except (json.JSONDecodeError, ValueError) as e:
            return None, "invalid_json" if self.recipe.format == "json" else "unparseable", f"{e}: {text[:120]!r}"
        problem = self._count(src, tgt)
        if problem and "count" in self.checks:
            return None, "count_mismatch", problem
        if problem:  # without the count check a wrong shape still cannot be written
            return None, "invalid_json", problem
        s_texts, t_texts = texts_of(src), texts_of(tgt)
        if "empty" in self.checks:
            for k, (a, b) in enumerate(zip(s_texts, t_texts)):
                if a.strip() and not b.strip():
                    return None, "empty", f"text {k} is empty"
        if "preserve" in self.checks:
            for k, (a, b) in enumerate(zip(s_texts, t_texts)):
                miss = missing_protected(a, b)
                if miss:
                    return None, "not_preserved", f"text {k}: {miss}"
        if "span_repetition" in self.checks:
            verdicts = self._span.keep_batch(pa.table({"src": s_texts, "tgt": t_texts}))
            for k, (ok, detail) in enumerate(verdicts):
                if not ok:
                    return None, "span_repetition", f"text {k}: {detail.split(': ', 1)[-1]}"
        if self._lang is not None:
            wrong = self.wrong_language(s_texts, t_texts)
            if wrong:
                return None, "wrong_language", wrong
        return tgt, "", ""

    def _cut(self, src: Any, text: str) -> tuple[str, str]:
        """An output cut at max_tokens: a loop (retried with a new seed) or a translation longer than the
        row's budget (final: another attempt would be cut the same way)."""
        source = json.dumps(src, ensure_ascii=False) if self.recipe.format == "json" else "\n".join(texts_of(src))
        ok, detail = self._span.keep_batch(pa.table({"src": [source], "tgt": [text]}))[0]
        if not ok:
            return "span_repetition", f"cut at max_tokens in a loop: {detail.split(': ', 1)[-1]}"
        return "too_long", f"cut at max_tokens: {text[-120:]!r}"

    def wrong_language(self, s_texts: list[str], t_texts: list[str]) -> str:
        """Each text on its own: a translation must be in the target language, unless its source text is
        not in the source language either (code, a quote, the French answer to a request to translate
        into French), in which case either language passes. "" when every text passes."""
        assert self._lang is not None
        det = self._lang.detect(t_texts)
        src_det = self._lang.detect(s_texts) if self._src_known else [self.recipe.source_lang] * len(s_texts)
        for k, (got, was) in enumerate(zip(det, src_det)):
            if got is None or got == self.recipe.target_lang:
                continue
            if was is not None and was != self.recipe.source_lang:
                continue  # the source text is in another language: left as it was is fine
            return f"text {k}: detected {got}, expected {self.recipe.target_lang}"
        return ""

    @staticmethod
    def _count(src: Any, tgt: Any) -> str | None:
        if isinstance(src, list):
            if not isinstance(tgt, list) or not all(isinstance(m, dict) for m in tgt):
                return "expected a list of messages"
            if len(tgt) != len(src):
                return f"{len(tgt)} messages, expected {len(src)}"
            for k, (a, b) in enumerate(zip(src, tgt)):
                if b.get("role") != a["role"] or not isinstance(b.get("content"), str):
                    return f"message {k}: role {b.get('role')!r}, expected {a['role']!r} with string content"
            return None
        if not isinstance(tgt, dict) or not isinstance(tgt.get("question"), str):
            return "expected an object with a string 'question'"
        if "answer" in src and not isinstance(tgt.get("answer"), str):
            return "expected a string 'answer'"
        if "answers" in src:
            a = tgt.get("answers")
            if not isinstance(a, list) or not all(isinstance(x, str) for x in a):
                return "expected a list of strings 'answers'"
            if len(a) != len(src["answers"]):
                return f"{len(a)} answers, expected {len(src['answers'])}"
        return None
