"""pipe translate: recipes, schemas, checks, the text format, sampling, retries, resume, and end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lrpipe.engines.base import WAIT, Engine, GenResult
from lrpipe.errors import InputError
from lrpipe.pipelines import translate as tr
from lrpipe.runner import run_stage
from lrpipe.shards import ShardDir
from lrpipe.sources import FileSource, ShardSource

from .conftest import PIPE
from .resume_checks import assert_resumed, committed

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000100ffff03000006000557bfabd40000000049454e44ae426082")
LABELS = {"question": "Galdera", "answer": "Erantzuna"}


# ------------------------------------------------------------------------------------- data like the public sets
def aokvqa_file(path, n=6):
    qs = [("What is the man holding?", ["umbrella", "phone", "book", "cup"]),
          ("Which season is it?", ["winter", "summer", "spring", "autumn"]),
          ("How many dogs are there?", ["1", "2", "3", "4"])]
    rows = [{"image": {"bytes": PNG, "path": None}, "question_id": f"q{i:03d}", "question": qs[i % 3][0],
             "choices": qs[i % 3][1], "correct_choice_idx": i % 4} for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def pixmo_ama_file(path, n=3):
    rows = [{"image_url": f"https://example.com/img{i}.jpg", "image_sha256": f"{i:064d}",
             "question": "What is in the picture?", "answer": f"A red bicycle leans against a wall number {i}."}
            for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def vqav2_file(path, n=3):
    rows = [{"question_id": 100 + i, "image": {"bytes": PNG, "path": None}, "question": "What color is the car?",
             "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                         for k, a in enumerate(["red"] * 8 + ["dark red", "maroon"])]} for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def magpie_file(path, n=4):
    rows = [{"id": f"general-{i:04d}", "instruction": f"Give me {i + 2} tips to sleep better.",
             "response": f"1. Go to bed at the same time.\n2. Avoid screens.\nThat makes {i + 2} tips."}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


# ------------------------------------------------------------------------------------- recipes and schemas
def test_every_shipped_recipe_loads_and_has_its_fewshot():
    assert set(tr.list_recipes()) >= {"magpie", "pixmo-ama", "a-okvqa", "pixmo-capqa", "vqav2", "wildvision"}
    for name in tr.list_recipes():
        r = tr.load_recipe(name)
        shots = tr.load_shots(r)
        assert bool(shots.examples) == bool(r.fewshot), name
        if shots.examples:
            assert shots.meta["provenance"]
    magpie = tr.load_shots(tr.load_recipe("magpie"))
    cats = [e["category"] for e in magpie.examples]
    assert sorted(cats) == sorted(["general", "general", "math", "arithmetic", "code", "translation"])
    for e in magpie.examples:  # our own shots keep code, numbers and LaTeX verbatim
        for s, t in zip(tr.texts_of(e["source"]), tr.texts_of(e["target"])):
            assert tr.missing_protected(s, t) is None, (e["category"], tr.missing_protected(s, t))


def test_recipe_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nkind: qa\nmode: chat\nfields: {id: id}\n")
    with pytest.raises(InputError, match="r.yaml.*question"):
        tr.load_recipe(str(bad))
    bad.write_text("name: x\nkind: qa\nmode: sideways\nfields: {question: q}\n")
    with pytest.raises(InputError, match="mode"):
        tr.load_recipe(str(bad))
    with pytest.raises(InputError, match="no recipe 'nope'"):
        tr.load_recipe("nope")


def test_schema_derivation_is_exact():
    from outlines_core.json_schema import build_regex_from_schema

    conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    rx = build_regex_from_schema(json.dumps(tr.schema_for(conv)))
    ok = json.dumps([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}])
    assert re.fullmatch(rx, ok)
    assert not re.fullmatch(rx, json.dumps(json.loads(ok)[:2]))  # one message short
    assert not re.fullmatch(rx, json.dumps([{"role": "assistant", "content": "x"}] + json.loads(ok)[1:]))  # role order
    qa = {"question": "q", "answers": ["a", "b", "c", "d"]}
    rx = build_regex_from_schema(json.dumps(tr.schema_for(qa)))
    assert re.fullmatch(rx, json.dumps({"question": "g", "answers": ["1", "2", "3", "4"]}))
    assert not re.fullmatch(rx, json.dumps({"question": "g", "answers": ["1", "2", "3"]}))
    assert tr.schema_for({"question": "q", "answer": "a"})["required"] == ["question", "answer"]
    assert tr.schema_for({"question": "q"})["required"] == ["question"]


def test_a_length_bound_closes_every_text_within_its_ratio():
    """max_length_ratio: each text at most ratio x its source's characters (+32, rounded up to 64), so a
    small model's loop ends as a finished text; the row's token budget leaves room for the bound."""
    from outlines_core.json_schema import build_regex_from_schema

    conv = [{"role": "user", "content": "x" * 40}, {"role": "assistant", "content": "y" * 100}]
    sch = tr.schema_for(conv, 2.0)
    bounds = [m["properties"]["content"]["maxLength"] for m in sch["prefixItems"]]
    assert bounds == [128, 256]  # 2 x 40 + 32 = 112 -> 128; 2 x 100 + 32 = 232 -> 256
    rx = build_regex_from_schema(json.dumps(sch), whitespace_pattern="")
    ok = json.dumps([{"role": "user", "content": "a" * 128}, {"role": "assistant", "content": "b"}],
                    separators=(",", ":"))
    assert re.fullmatch(rx, ok)
    assert not re.fullmatch(rx, ok.replace("a" * 128, "a" * 129))
    assert not re.fullmatch(rx, json.dumps(json.loads(ok)))  # whitespace between JSON tokens
    qa = tr.schema_for({"question": "q" * 10, "answers": ["a", "bbbb"]}, 1.5)
    assert qa["properties"]["answers"]["items"]["maxLength"] == 64 and "maxLength" not in tr.schema_for(conv)[
        "prefixItems"][0]["properties"]["content"]
    from lrpipe.pipelines.translate.stages import _max_lengths

    assert _max_lengths(sch) == 384 and _max_lengths(qa) == 64 + 2 * 64


def test_extract_items_and_bad_rows():
    r = tr.load_recipe("vqav2")
    item = tr.extract({"question": "Q?", "answers": [{"answer": str(i)} for i in range(10)]}, r)
    assert item == {"question": "Q?", "answers": [str(i) for i in range(10)]}
    with pytest.raises(ValueError, match="field 'answers': 2 answers, the recipe expects 10"):
        tr.extract({"question": "Q?", "answers": [{"answer": "a"}, {"answer": "b"}]}, r)
    with pytest.raises(ValueError, match="field 'question'"):
        tr.extract({"question": None, "answers": []}, r)
    m = tr.load_recipe("magpie")
    assert tr.extract({"instruction": "i", "response": "r"}, m) == [{"role": "user", "content": "i"},
                                                                   {"role": "assistant", "content": "r"}]
    with pytest.raises(ValueError, match="field 'response'"):
        tr.extract({"instruction": "i", "response": None}, m)


# ------------------------------------------------------------------------------------- text format
@pytest.mark.parametrize("text,expected", [
    ("**Galdera:** Zer kolore du? **Erantzuna:** 1.gorria, 2.urdina, 3.berdea, 4.zuria",
     ["gorria", "urdina", "berdea", "zuria"]),
    ("Galdera: Zer kolore du?\n**Erantzuna**: 1. gorria\n2. urdina\n3. berdea\n4. zuria", ["gorria", "urdina", "berdea", "zuria"]),
    ("**galdera**: Zer kolore du? **ERANTZUNA:** 1) gorria, 2) urdina, 3) berdea, 4) zuria",
     ["gorria", "urdina", "berdea", "zuria"]),
])
def test_text_format_parser_is_tolerant(text, expected):
    like = {"question": "What color?", "answers": ["red", "blue", "green", "white"]}
    got = tr.parse_text(text, LABELS, like)
    assert got == {"question": "Zer kolore du?", "answers": expected}


def test_text_format_round_trip_and_failures():
    item = {"question": "Non dago?", "answers": ["etxean", "kalean"]}
    assert tr.parse_text(tr.format_text(item, LABELS), LABELS, item) == item
    single = {"question": "Azaldu irudia.", "answer": "Argazki honetan, 3 gizon daude: bat, bi eta hiru."}
    assert tr.parse_text(tr.format_text(single, LABELS), LABELS, single) == single
    with pytest.raises(ValueError, match="Galdera"):
        tr.parse_text("Zer kolore du?", LABELS, item)


# ------------------------------------------------------------------------------------- checks
@pytest.fixture(scope="module")
def checker():
    return tr.Checker(tr.load_recipe("magpie"))


SRC = [{"role": "user", "content": "Write a Python loop that prints 1 to 10. See https://docs.python.org/3/ for help."},
       {"role": "assistant", "content": "Here it is:\n\n```python\nfor i in range(1, 11):\n    print(i)\n```\n"
                                        "The call `range(1, 11)` stops before 11, and $n^2$ grows fast."}]
GOOD = [{"role": "user", "content": "Idatzi 1etik 10era inprimatzen dituen Python begizta bat. Ikusi "
                                    "https://docs.python.org/3/ laguntza lortzeko."},
        {"role": "assistant", "content": "Hona hemen:\n\n```python\nfor i in range(1, 11):\n    print(i)\n```\n"
                                         "`range(1, 11)` deia 11 baino lehen gelditzen da, eta $n^2$ azkar hazten da."}]


def _with(content0=None, content1=None, roles=None):
    out = json.loads(json.dumps(GOOD))
    if content0 is not None:
        out[0]["content"] = content0
    if content1 is not None:
        out[1]["content"] = content1
    if roles:
        for m, r in zip(out, roles):
            m["role"] = r
    return json.dumps(out, ensure_ascii=False)


@pytest.mark.parametrize("case,text,finish,reason", [
    ("good", json.dumps(GOOD, ensure_ascii=False), "stop", ""),
    ("invalid json", '[{"role": "user", "content": "Idatzi', "stop", "invalid_json"),
    ("cut", '[{"role": "user", "content": "Idatzi', "length", "too_long"),
    ("cut in a loop", '[{"role": "user", "content": "Idatzi' + " bai eta ez" * 60, "length", "span_repetition"),
    ("one message", json.dumps(GOOD[:1], ensure_ascii=False), "stop", "count_mismatch"),
    ("roles swapped", _with(roles=["assistant", "user"]), "stop", "count_mismatch"),
    ("empty", _with(content1="   "), "stop", "empty"),
    ("code changed", _with(content1=GOOD[1]["content"].replace("print(i)", "inprimatu(i)")), "stop", "not_preserved"),
    ("url lost", _with(content0="Idatzi Python begizta bat. Ikusi dokumentazioa laguntza lortzeko 1 10."), "stop",
     "not_preserved"),
    ("number lost", _with(content0=GOOD[0]["content"].replace("10era", "hamarrera")), "stop", "not_preserved"),
    ("latex changed", _with(content1=GOOD[1]["content"].replace("$n^2$", "n karratua")), "stop", "not_preserved"),
    ("loop", _with(content1=GOOD[1]["content"] + " " + "eta gero " * 40), "stop", "span_repetition"),
    ("english", json.dumps(SRC), "stop", "wrong_language"),
    ("engine error", "CUDA out of memory", "error", "engine_error"),
])
def test_each_check_with_good_and_bad_translations(checker, case, text, finish, reason):
    tgt, why, detail = checker(SRC, text, finish, LABELS)
    assert why == reason, (case, why, detail)
    assert why in tr.CHECK_REASONS or why == ""
    assert (tgt is not None) == (reason == "")
    if reason:
        assert detail


def test_preserve_tolerates_number_formatting_and_latex_text():
    assert tr.missing_protected("It has 750,000 speakers.", "750.000 hiztun ditu.") is None
    assert tr.missing_protected(r"$\text{area} = 3$", r"$\text{azalera} = 3$") is None
    assert "number" in tr.missing_protected("2 + 2 = 4", "bi gehi bi lau dira: 4")


# ------------------------------------------------------------------------------------- sampling
def test_sample_is_seeded_layout_independent_and_keeps_ids(tmp_path):
    src = aokvqa_file(tmp_path / "a.parquet", n=40)
    r = tr.load_recipe("a-okvqa")
    a = run_stage(tr.SampleStage(FileSource([str(src)], rows_per_unit=7), r, 10, seed=3), tmp_path / "s1", progress=False)
    b = run_stage(tr.SampleStage(FileSource([str(src)], rows_per_unit=40), r, 10, seed=3), tmp_path / "s2", progress=False)
    run_stage(tr.SampleStage(FileSource([str(src)], rows_per_unit=7), r, 10, seed=4), tmp_path / "s3", progress=False)
    ids = lambda d: sorted(ShardDir.open(d).read_all().column("id").to_pylist())  # noqa: E731
    assert a.rows_out == b.rows_out == 10
    assert ids(tmp_path / "s1") == ids(tmp_path / "s2") != ids(tmp_path / "s3")
    rows = ShardDir.open(tmp_path / "s1").read_all().to_pylist()
    assert all(row["id"] == row["question_id"] and row["image"]["bytes"] == PNG for row in rows)
    # every input row is accounted for: the rest are slim rejected records
    m = ShardDir.open(tmp_path / "s1").manifest()
    assert m["totals"]["rows_in"] == 40 and m["totals"]["rejected_by_reason"] == {"not_sampled": 30}
    # no id column in the input: ids from the content, as every stage derives them
    ama = pixmo_ama_file(tmp_path / "m.parquet", n=5)
    run_stage(tr.SampleStage(FileSource([str(ama)]), tr.load_recipe("pixmo-ama"), 3, 0), tmp_path / "s4", progress=False)
    assert all(re.fullmatch(r"h[0-9a-f]{20}", i) for i in ids(tmp_path / "s4"))


def test_select_comes_before_the_sample(tmp_path):
    """PixMo-CapQA: only yes/no answers are evaluated, so they are selected first and the sample is
    drawn from them (every sampled row is usable)."""
    rows = [{"image_url": f"https://x.org/{i}.jpg", "question": f"Is there a dog in picture {i}?",
             "answer": ["Yes, a brown dog.", "No.", "There are two cats.", "yes", "It is red."][i % 5],
             "messages": [f"Is there a dog in picture {i}?", "Yes."]} for i in range(50)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "capqa.parquet")
    r = tr.load_recipe("pixmo-capqa", sample=12)
    rep = run_stage(tr.SampleStage(FileSource([str(tmp_path / "capqa.parquet")]), r, r.sample, 0), tmp_path / "s",
                    progress=False)
    sd = ShardDir.open(tmp_path / "s")
    kept = sd.read_all().to_pylist()
    assert rep.rows_out == 12 and all(re.match(r"(?i)\W*(yes|no)\b", x["answer"]) for x in kept)
    assert sd.manifest()["totals"]["rejected_by_reason"] == {"not_selected": 20, "not_sampled": 18}
    assert kept[0]["messages"] == ["Is there a dog in picture " + kept[0]["question"].split()[-1][:-1] + "?", "Yes."]


# ------------------------------------------------------------------------------------- the stage, scripted engine
class ScriptedEngine(Engine):
    """Answers each request with ``script(unit, row, attempt, request)``; honours WAIT like a real engine."""

    name = "scripted"

    def __init__(self, model, script):
        super().__init__(model)
        self.script, self.calls = script, []

    def generate(self, requests):
        for q in requests:
            if q is WAIT:
                continue
            unit, (row, attempt) = q.key
            self.calls.append((unit, row, attempt, q.sampling.seed))
            text, finish = self.script(unit, row, attempt, q)
            yield GenResult(key=q.key, text=text, finish_reason=finish, prompt_tokens=len(q.prompt),
                            output_tokens=len(text) // 4)

    def score(self, requests):  # pragma: no cover
        raise NotImplementedError


EU = {"What is the man holding?": ("Zer dauka gizonak eskuan?", ["aterkia", "telefonoa", "liburua", "kikara"]),
      "Which season is it?": ("Zein urtaro da?", ["negua", "uda", "udaberria", "udazkena"]),
      "How many dogs are there?": ("Zenbat txakur daude hor?", ["1", "2", "3", "4"])}


def test_retries_with_new_seeds_then_reject_every_row_accounted(tmp_path, model_path):
    src = aokvqa_file(tmp_path / "a.parquet", n=6)
    table = pq.read_table(src).to_pylist()

    def script(unit, row, attempt, req):
        row += 4 * unit  # units of 4 rows
        q = table[row]["question"]
        if row == 0:  # always broken: rejected after 1 + 2 retries
            return '{"question": "Zer', "stop"
        if row == 4 and attempt == 0:  # cut at the row's budget: final at once, no retry
            return '{"question": "Zer dauka gizonak', "length"
        if row == 1 and attempt == 0:  # wrong count first, fixed on retry
            return json.dumps({"question": EU[q][0], "answers": EU[q][1][:3]}), "stop"
        if row == 2:  # stays English: wrong language
            return json.dumps({"question": q + " Tell me which one it is, please, I am curious.",
                               "answers": table[row]["choices"]}), "stop"
        return json.dumps({"question": EU[q][0], "answers": EU[q][1]}, ensure_ascii=False), "stop"

    eng = ScriptedEngine(model_path, script)
    rec = tr.load_recipe("a-okvqa", retries=2)
    stage = tr.TranslateStage(FileSource([str(src)], rows_per_unit=4), rec, eng, "scripted")
    rep = run_stage(stage, tmp_path / "out", engine=eng, progress=False)
    sd = ShardDir.open(tmp_path / "out")
    kept, rej = sd.read_all().to_pylist(), sd.read_all(rejected=True).to_pylist()
    assert rep.rows_out + rep.rows_rejected == 6 == len(kept) + len(rej)
    assert {r["question_id"] for r in rej} == {"q000", "q002", "q004"}
    reasons = {r["question_id"]: r["reject_reason"] for r in rej}
    assert reasons == {"q000": "translate_invalid_json", "q002": "translate_wrong_language",
                       "q004": "translate_too_long"}
    by_id = {r["question_id"]: r for r in kept}
    assert by_id["q001"]["translate_attempts"] == 2 and by_id["q003"]["translate_attempts"] == 1
    assert by_id["q001"]["choices_eu"] == ["negua", "uda", "udaberria", "udazkena"]
    assert by_id["q001"]["question"] == "Which season is it?"  # originals kept
    assert all(r["image"]["bytes"] == PNG for r in kept + rej)  # images untouched
    seeds = [(row, att, seed) for unit, row, att, seed in eng.calls if unit == 0 and row == 0]
    assert [a for _, a, _ in seeds] == [0, 1, 2] and len({s for _, _, s in seeds}) == 3
    assert [a for unit, row, a, _ in eng.calls if unit == 1 and row == 0] == [0]  # q004: no retry of a cut
    m = sd.manifest()
    assert m["totals"]["balanced"] and m["totals"]["rejected_by_reason"] == {
        "translate_invalid_json": 1, "translate_wrong_language": 1, "translate_too_long": 1}


def test_bad_input_rows_are_rejected_with_field(tmp_path, model_path):
    rows = [{"id": "a", "instruction": "Hi", "response": "Hello"}, {"id": "b", "instruction": "Hi", "response": None}]
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    eng = ScriptedEngine(model_path, lambda unit, row, att, q: (json.dumps(
        [{"role": "user", "content": "Kaixo"}, {"role": "assistant", "content": "Kaixo, zer moduz zaude gaur?"}]), "stop"))
    rec = tr.load_recipe("magpie", checks=["parse", "count", "empty"])
    run_stage(tr.TranslateStage(FileSource([str(p)]), rec, eng, "scripted"), tmp_path / "o", engine=eng, progress=False)
    sd = ShardDir.open(tmp_path / "o")
    rej = sd.read_all(rejected=True).to_pylist()
    assert [r["id"] for r in rej] == ["b"] and rej[0]["reject_reason"] == "translate_bad_input"
    assert "field 'response'" in rej[0]["reject_detail"]
    assert sd.read_all().to_pylist()[0]["response_eu"] == "Kaixo, zer moduz zaude gaur?"


def test_completion_prompt_follows_fig7(tokenizer):
    r = tr.load_recipe("magpie")
    pb = tr.PromptBuilder(r, tokenizer, tr.load_shots(r))
    text = pb.text([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    assert text.startswith("You are a helpful AI assistant that specializes in English to Basque translations.")
    assert text.count("\nEnglish:\n") == 7 and text.count("\nBasque:\n") == 7 and text.endswith("\nBasque:\n")
    assert "standard Basque language (batua)" in text


# ------------------------------------------------------------------------------------- CLI
def test_cli_list_and_dry_run(tmp_path, env):
    out = subprocess.run(PIPE + ["translate", "--list"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "pixmo-ama" in out.stdout and "completion" in out.stdout
    src = aokvqa_file(tmp_path / "a.parquet", n=5)
    out = subprocess.run(PIPE + ["translate", "a-okvqa", "--input", str(src), "--dry-run"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "----- prompt 0 -----" in out.stdout and "What is the man holding?" in out.stdout
    est = dict(re.findall(r"^(\w+)\s+([\d,]+)$", out.stdout, re.M))
    assert est["rows"] == "5" and int(est["prompt_tokens"].replace(",", "")) > 5 * 300
    bad = subprocess.run(PIPE + ["translate", "vqav2", "--input", str(src), "--dry-run"], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 2 and "missing column(s) ['answers']" in bad.stderr


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path, env):
    src = aokvqa_file(tmp_path / "a.parquet", n=16)
    args = ["translate", "a-okvqa", "--input", str(src), "--engine", "transformers", "--batch-size", "4",
            "--max-tokens", "24", "--retries", "0", "--rows-per-unit", "2", "--sample", "0", "--no-progress"]
    ref = subprocess.run(PIPE + args + ["--out", str(tmp_path / "ref")], capture_output=True, text=True, env=env,
                         timeout=900)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(PIPE + args + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, killed = time.time() + 600, False
    while time.time() < deadline and proc.poll() is None:
        if (out / "units").exists() and len(list((out / "units").glob("*.json"))) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait()
    assert killed, "finished before it could be killed"
    assert not ShardDir.open(out).manifest()["complete"]
    before = committed(out)
    again = subprocess.run(PIPE + args + ["--out", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    # every row once; the units done before the kill untouched and equal to the reference; the source
    # columns of every row as they were (the translation itself may differ after a resume: README)
    assert_resumed(tmp_path / "ref", out, before, key="question_id",
                   stable=("id", "question", "choices", "correct_choice_idx", "direct_answers", "image"))
    assert ShardDir.open(out).manifest()["totals"]["rows_in"] == 16


# ------------------------------------------------------------------------------------- end to end, vLLM
@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("recipe,maker", [("magpie", magpie_file), ("pixmo-ama", pixmo_ama_file),
                                          ("a-okvqa", aokvqa_file), ("vqav2", vqav2_file)])
def test_end_to_end_with_vllm(tmp_path, vllm_engine, recipe, maker):
    """The embedded 135M model cannot translate to Basque: what matters is that the constrained output
    parses, and that every row ends in data/ or rejected/ with a reason."""
    src = maker(tmp_path / ("in.jsonl" if recipe == "magpie" else "in.parquet"), 3)
    rec = tr.load_recipe(recipe, retries=1 if recipe == "a-okvqa" else 0)
    rec.sampling.max_tokens = 96
    stage = tr.TranslateStage(FileSource([str(src)], rows_per_unit=2), rec, vllm_engine, "embedded")
    rep = run_stage(stage, tmp_path / "out", engine=vllm_engine, progress=False)
    sd = ShardDir.open(tmp_path / "out")
    m = sd.manifest()
    assert m["totals"]["balanced"] and m["totals"]["rows_in"] == 3 == rep.rows_out + rep.rows_rejected
    # any reason the checker can give (the 135M model may run to the cap, loop, or leave English): the
    # list is the code's own, so a new reason cannot be missing here
    assert set(m["totals"]["rejected_by_reason"]) <= set(tr.REASONS) - {"translate_bad_input"}
    # under the schema the model's output parses to the right shape: a failure to parse is only ever an
    # output cut at max_tokens (too_long, or a loop), never a malformed completed output
    for r in sd.read_all(rejected=True).to_pylist():
        assert r["reject_reason"] not in ("translate_invalid_json", "translate_count_mismatch"), r


@pytest.mark.slow
@pytest.mark.vllm
def test_translate_magpie_on_the_output_of_run_magpie(tmp_path, vllm_engine):
    from lrpipe.pipelines.magpie import MagpieConfig, ResponseConfig, run_magpie

    cfg = MagpieConfig(model="embedded", n=6, max_tokens=48, chunk_size=3, response=ResponseConfig(max_tokens=48))
    run_magpie(cfg, tmp_path / "m", vllm_engine, model_id="embedded", progress=False)
    filtered = ShardDir.open(tmp_path / "m" / "filtered")
    n = filtered.manifest()["totals"]["rows_out"]
    rec = tr.load_recipe("magpie", retries=0)
    rec.sampling.max_tokens = 96
    rep = run_stage(tr.TranslateStage(ShardSource(tmp_path / "m" / "filtered"), rec, vllm_engine, "embedded"),
                    tmp_path / "eu", engine=vllm_engine, progress=False)
    assert rep.rows_out + rep.rows_rejected == n
    sd = ShardDir.open(tmp_path / "eu")
    assert sd.manifest()["totals"]["balanced"]
    ids = sorted(sd.read_all().column("id").to_pylist() + sd.read_all(rejected=True).column("id").to_pylist())
    assert ids == sorted(filtered.read_all().column("id").to_pylist())
