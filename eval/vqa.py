"""VQA accuracy exactly as the official VQA evaluator computes it, and the multimodal study's
inclusion variant (README: "Evaluation"; worked examples in ``eval/README.md``).

**Official accuracy**: the rules of GT-Vision-Lab's ``vqaEval.py`` at its latest revision (commit
``a013f00``, "Fixed processing answers bug", 2021-03-11), reproduced with their quirks because published
numbers depend on them:

* the model's answer and the ten human answers: newlines and tabs become spaces, ends stripped;
* when the ten human answers all agree they are compared with the model's answer **as they are**
  (``Yes.`` does not match ``yes``); when they disagree, the human answers *and* the model's answer get
  *punctuation* and then *digit/article* processing (below), so ``2`` matches ``two``;
* per question: for each human answer, ``min(1, matches among the other nine / 3)``; the question
  scores the mean over the ten (leave-one-out), so 3 or more matching humans give 1.0 and 2 give 0.6.

*Punctuation* processing: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it
stands next to a space in the input or when the input holds a digit-comma-digit group anywhere,
otherwise replaced by a space; then every ``.`` not followed by a digit is deleted — at most 32 of
them (the evaluator passes ``re.UNICODE`` where ``re.sub`` expects its ``count``). *Digit/article*
processing: lower-case, split on whitespace, number words ``none``/``zero``…``ten`` to digits,
drop ``a``, ``an``, ``the``, restore apostrophes of known contractions (``dont`` → ``don't``).

**Inclusion accuracy** (the study's variant for chatty models that answer in sentences): both the
answer and every human answer get the full normalization (punctuation + digit/article); a human
answer *matches* when its words appear as a contiguous run of whole words in the answer's words;
then the same leave-one-out ``min(1, matches / 3)`` mean. A human answer that normalizes to nothing
(only articles or punctuation) never matches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: a lookahead, as in the evaluator (never blocks)
_PERIOD_COUNT = int(re.UNICODE)  # the evaluator's third positional argument to sub() is a count
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}


def _contractions() -> dict[str, str]:
    """Contractions whose apostrophes the evaluator restores: every spelling with exactly one
    apostrophe left out maps to the full form. (Forms with a capital ``I`` are left out: the
    evaluator's table has them, but it looks words up after lower-casing, so they never apply.)"""
    full = (
        "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd how'll "
        "how's isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock oughtn't shan't "
        "should've shouldn't somebody'll somebody's someone'd someone'll someone's something'd something'll "
        "that's there'd there're there's they'd they'll they're they've 'twas wasn't we've weren't what'll "
        "what're what's what've when's where'd where's where've who'd who'll who's who've why'll why're why's "
        "won't would've wouldn't y'all you'd you'll you're you've "
        "couldn't've hadn't've he'd've it'd've mightn't've she'd've shouldn't've somebody'd've someone'd've "
        "something'd've there'd've they'd've we'd've who'd've wouldn't've y'all'll you'd've 'ow's'at y'all'd've"
    ).split()
    table = {}
    for word in full:
        marks = [i for i, c in enumerate(word) if c == "'"]
        for i in marks:
            table[word[:i] + word[i + 1:]] = word
    table["somebody'd"] = "somebodyd"  # the evaluator's table has this one reversed
    return table


CONTRACTIONS = _contractions()


def process_punctuation(text: str) -> str:
    out = text
    has_number_comma = _COMMA_DIGITS.search(text) is not None
    for p in PUNCT:
        if (p + " " in text or " " + p in text) or has_number_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, _PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    words = [NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """The model answer's normalization (also used for both sides of the inclusion match)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def _leave_one_out(matches: Sequence[bool]) -> float:
    """Mean over the humans of ``min(1, matching others / 3)``."""
    n = len(matches)
    if n == 0:
        return 0.0
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3) for m in matches) / n


def vqa_accuracy(answer: str, gt_answers: Sequence[str]) -> float:
    """The official per-question VQA accuracy in [0, 1] (the evaluator reports 100× this)."""
    res = _clean(answer)
    gts = [_clean(g) for g in gt_answers]
    if len(set(gts)) > 1:  # the humans disagree: both sides get the full normalization
        gts = [process_digit_article(process_punctuation(g)) for g in gts]
        res = process_digit_article(process_punctuation(res))
    return _leave_one_out([g == res for g in gts])


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _contains_words(hay: list[str], needle: list[str]) -> bool:
    if not needle or len(needle) > len(hay):
        return False
    k = len(needle)
    return any(hay[i:i + k] == needle for i in range(len(hay) - k + 1))


def vqa_inclusion_accuracy(answer: str, gt_answers: Sequence[str]) -> float:
    """The study's inclusion variant: a human answer counts when its normalized words appear as a
    contiguous run of whole words in the normalized model answer."""
    words = normalize_answer(answer).split()
    return _leave_one_out([_contains_words(words, normalize_answer(g).split()) for g in gt_answers])
