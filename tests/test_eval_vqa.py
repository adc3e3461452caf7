"""VQA accuracy: the official evaluator's rules (each case's official score next to it) and the
study's inclusion variant."""

from __future__ import annotations

import pytest

from lrpipe.eval.vqa import (
    CONTRACTIONS,
    normalize_answer,
    process_punctuation,
    vqa_accuracy,
    vqa_inclusion_accuracy,
)

# (model answer, ten human answers, official accuracy): each score is what GT-Vision-Lab's vqaEval.py at
# its latest revision (a013f00, "Fixed processing answers bug") gives; checked against it, run as is,
# on these and 3,000 generated cases (0 differences).
OFFICIAL = [
    # the humans agree: nothing is normalized, on either side
    ("2", ["2"] * 10, 1.0),
    ("Two", ["2"] * 10, 0.0),
    ("two dogs", ["2"] * 10, 0.0),
    ("the dog", ["dog"] * 10, 0.0),
    ("A dog.", ["dog"] * 10, 0.0),
    ("Yes.", ["yes"] * 10, 0.0),
    ("yes", ["Yes"] * 10, 0.0),
    ("red-white", ["red-white"] * 10, 1.0),
    ("dont know", ["don't know"] * 10, 0.0),
    ("1,000", ["1000"] * 10, 0.0),
    ("what?", ["what"] * 10, 0.0),
    ("(red)", ["red"] * 10, 0.0),
    ("none", ["0"] * 10, 0.0),
    ("3.5", ["3.5"] * 10, 1.0),
    ("\tyes\n", ["yes"] * 10, 1.0),                              # newlines and tabs only, then strip
    ("left", ["left\n"] * 10, 1.0),                               # ... on the human answers too
    # the humans disagree: punctuation and digit/article processing on both sides
    ("2", ["two"] * 8 + ["2"] * 2, 1.0),
    ("Yes", ["Yes"] * 9 + ["yes"], 1.0),                          # lower-cased
    ("the dog", ["dog"] * 2 + ["a dog"] * 2 + ["puppy"] * 6, 1.0),  # articles dropped
    ("red-white", ["red-white"] * 5 + ["red white"] * 5, 1.0),
    ("dark red", ["dark-red"] * 3 + ["red"] * 7, 0.9),            # 3 matching humans: (3·2/3 + 7·1) / 10
    ("1000", ["1,000"] * 5 + ["1000"] * 5, 1.0),
    ("two dogs", ["2 dogs"] * 3 + ["dogs"] * 7, 0.9),
    # leave-one-out: min(1, matching others / 3), averaged over the ten
    ("yes", ["yes"] * 2 + ["no"] * 8, 0.6),
    ("yes", ["yes"] * 3 + ["no"] * 7, 0.9),
    ("yes", ["yes"] * 4 + ["no"] * 6, 1.0),
    ("no", ["yes"] * 10, 0.0),
    ("yes", ["yes", "yes", "no", "no", "no", "no", "no", "no", "no", "maybe"], 0.6),
]


@pytest.mark.parametrize("answer,gts,official", OFFICIAL)
def test_official_vqa_accuracy(answer, gts, official):
    assert vqa_accuracy(answer, gts) == pytest.approx(official)


def test_normalization_details():
    assert normalize_answer("The Two  dogs!") == "2 dogs"
    assert process_punctuation("a/b") == "a b" and process_punctuation("a / b") == "a  b"
    assert process_punctuation("1,000 a/b") == "1000 ab"          # digit-comma-digit: every mark deleted
    assert process_punctuation("." * 40) == "." * 8               # at most 32 periods go (the count quirk)
    assert CONTRACTIONS["couldnt've"] == CONTRACTIONS["couldn'tve"] == "couldn't've"
    assert CONTRACTIONS["somebody'd"] == "somebodyd"              # reversed in the evaluator's table
    assert normalize_answer("Im here") == "im here"               # capital-I entries never apply


INCLUSION = [
    ("There are two dogs in the picture.", ["2"] * 10, 1.0),
    ("There are two dogs in the picture.", ["dogs"] * 10, 1.0),
    ("I see hotdogs", ["dogs"] * 10, 0.0),                        # whole words only
    ("The flag is red and white", ["red white"] * 10, 0.0),       # contiguous words only
    ("The flag is red and white", ["red and white"] * 10, 1.0),
    ("It is probably yes", ["yes"] * 2 + ["no"] * 8, 0.6),        # same leave-one-out aggregation
    ("Yes, it is.", ["Yes"] * 10, 1.0),                           # both sides normalized
    ("the", ["the"] * 10, 0.0),                                   # empty after normalization: no match
]


@pytest.mark.parametrize("answer,gts,want", INCLUSION)
def test_inclusion_accuracy(answer, gts, want):
    assert vqa_inclusion_accuracy(answer, gts) == pytest.approx(want)


def test_inclusion_is_never_below_exact_on_normalized_humans():
    import random

    rng = random.Random(0)
    words = ["yes", "no", "2", "two", "dog", "red", "the", "blue", "white"]
    for _ in range(2000):
        ans = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        gts = [normalize_answer(" ".join(rng.choice(words) for _ in range(rng.randint(1, 2)))) or "x"
               for _ in range(10)]
        assert vqa_inclusion_accuracy(ans, gts) >= vqa_accuracy(ans, gts) - 1e-12
