"""Real dataset layouts and real user mistakes, stage by stage (the chain itself: test_study_chain.py).

Rows are shaped like the public datasets' cards: Magpie-Align (``uuid``, ``instruction``, ``response``,
``conversations`` in ShareGPT form), HiTZ's Magpie releases (``conversations`` of ``{role, content}``),
PixMo-CapQA (``messages`` as a flat list of strings), VQAv2 from ``lmms-lab/VQAv2`` (a ``validation``
split, integer ``question_id``)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lrpipe.errors import InputError
from lrpipe.pipelines import translate as tr
from lrpipe.runner import resolve_rank, run_stage
from lrpipe.shards import ShardDir, part_index
from lrpipe.sources import FileSource, open_source

from .conftest import PIPE
from .fakes import MARK, MarkerEngine, TranslatorServer

INSTR = ["Give me 3 tips to sleep better.", "Write a Python function that adds two numbers.",
         "What is 12 * 7?", "Translate 'good morning' into French."]
RESP = ["1. Go to bed at the same time.\n2. Avoid screens.\n3. Keep the room cool.",
        "```python\ndef add(a, b):\n    return a + b\n```", "12 * 7 = 84.", "Bonjour."]


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(PIPE + args, capture_output=True, text=True, env=env, timeout=600)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error: non-zero exit, no traceback, the message on the last line of stderr."""
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), r.stderr
    return last


def no_language_check(name: str, tmp_path: Path, **changes) -> tr.Recipe:
    return tr.load_recipe(name, checks=["parse", "count", "empty", "preserve", "span_repetition"], **changes)


# ------------------------------------------------------------------------------------ 1, 3: release layouts
def test_release_layouts_translate_mix_and_pack_as_the_translation(tmp_path, tokenizer):
    from lrpipe.pipelines.mix import MixStage
    from lrpipe.pipelines.mix_recipe import MixRecipe
    from lrpipe.pipelines.pack import PackStage
    from lrpipe.tokenization import tokenize_conversation

    align = tmp_path / "magpie-align.jsonl"  # Magpie-Align: uuid, ShareGPT conversations beside the pair
    align.write_text("".join(json.dumps({
        "uuid": f"5f0a-{i}", "instruction": q, "response": a,
        "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}) + "\n"
        for i, (q, a) in enumerate(zip(INSTR, RESP))))
    hitz = tmp_path / "hitz.parquet"  # HiTZ Magpie releases: {role, content} under `conversations`, no id
    pq.write_table(pa.table({"conversations": [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                                               for q, a in zip(INSTR, RESP)],
                             "category": ["general", "code", "arithmetic", "translation"]}), hitz)
    eng = MarkerEngine(tokenizer)
    outs = {}
    for name, path, rec in (("align", align, no_language_check("magpie", tmp_path)),
                            ("hitz", hitz, no_language_check("magpie-conversations", tmp_path))):
        stage = tr.TranslateStage(open_source(path), rec, eng, "marker")
        rep = run_stage(stage, tmp_path / f"{name}-eu", engine=eng, progress=False)
        assert rep.rows_out == 4 and rep.rows_rejected == 0
        outs[name] = {r["id"]: r for r in ShardDir.open(tmp_path / f"{name}-eu").read_all().to_pylist()}
    align_rows = outs["align"]
    assert sorted(align_rows) == [f"5f0a-{i}" for i in range(4)]  # uuid is the id
    r = align_rows["5f0a-0"]
    assert r["conversations"][0] == {"from": "human", "value": INSTR[0]}  # the column kept its name and form
    assert r["conversation_eu"] == [{"role": "user", "content": MARK + INSTR[0]},
                                    {"role": "assistant", "content": MARK + RESP[0]}]
    hitz_rows = outs["hitz"]
    assert all(re.fullmatch(r"h[0-9a-f]{20}", i) for i in hitz_rows)
    h = next(iter(hitz_rows.values()))
    assert [m["content"] for m in h["conversations_eu"]] == [MARK + m["content"] for m in h["conversations"]]
    assert pq.read_schema(hitz).field("conversations").type == \
        ShardDir.open(tmp_path / "hitz-eu").read_all().schema.field("conversations_eu").type

    # every target-language document packs as the translation
    for name, path in (("align", align), ("hitz", hitz)):
        rec = MixRecipe.model_validate({"target_lang": "eu", "tokenizer": "none", "sources": [
            {"name": name, "parallel": {"en": str(path), "eu": str(tmp_path / f"{name}-eu")}, "target_share": 1.0}]})
        run_stage(MixStage(rec, None, None), tmp_path / f"{name}-mix", progress=False)
        pack = PackStage(open_source(tmp_path / f"{name}-mix"), tokenizer, "embedded", seq_len=512)
        run_stage(pack, tmp_path / f"{name}-pack", progress=False)
        rows = ShardDir.open(tmp_path / f"{name}-pack").read_all().to_pylist()
        n_docs = 0
        for row in rows:
            at = 0
            for rid, n in zip(row["source_ids"], row["seq_lens"]):
                src = outs[name][rid]
                conv = src["conversation_eu"] if name == "align" else [
                    {"role": m["role"], "content": m["content"]} for m in src["conversations_eu"]]
                assert row["input_ids"][at:at + n] == tokenize_conversation(tokenizer, conv)[0]
                at += n
                n_docs += 1
        assert n_docs == 4


def test_a_flat_list_of_strings_is_not_a_conversation(tmp_path):
    """PixMo-CapQA's `messages: list<string>` is read as what it is; stages that look for conversations
    pass it by, and its question/answer columns translate."""
    from lrpipe.chat import conversation_of

    rows = [{"image_url": "https://x.org/1.jpg", "question": "Is the sky blue?", "answer": "Yes, it is.",
             "messages": ["Is the sky blue?", "Yes, it is."]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "capqa.parquet")
    src = open_source(tmp_path / "capqa.parquet")
    t = src.read_unit(src.units()[0])
    assert t.column("messages").to_pylist() == [["Is the sky blue?", "Yes, it is."]]
    assert conversation_of(t.to_pylist()[0]) is None
    assert tr.extract(t.to_pylist()[0], tr.load_recipe("pixmo-capqa")) == {"question": "Is the sky blue?",
                                                                            "answer": "Yes, it is."}


# ------------------------------------------------------------------------------------ 4: recipes are the defaults
def test_recipe_split_and_sample_are_the_defaults(tmp_path, env, model_path, tokenizer):
    assert tr.load_recipe("vqav2").split == "validation" and tr.load_recipe("a-okvqa").split == "validation"
    assert tr.load_recipe("vqav2").sample == 2500
    # lmms-lab/VQAv2 has no train split: the recipe's split is used
    repo = tmp_path / "lmms-lab" / "VQAv2" / "data"
    repo.mkdir(parents=True)
    rows = [{"question_id": 262148000 + i, "question": "What color is the car?", "question_type": "what color",
             "answers": [{"answer": "red", "answer_confidence": "yes", "answer_id": k} for k in range(1, 11)],
             "multiple_choice_answer": "red", "answer_type": "other", "image_id": 262148,
             "image": {"bytes": b"\x89PNG", "path": "COCO_val2014_000000262148.jpg"}} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), repo / "validation-00000-of-00001.parquet")
    r = cli(["translate", "vqav2", "--input", f"hf://{repo.parent}", "--dry-run"], env)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^rows\s+5$", r.stdout, re.M)
    # without --sample, the recipe's sample (2,500) applies: source/ + translated/ with the same ids
    f = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist([{"question_id": f"q{i}", "question": f"What is item {i}?",
                                          "choices": ["a cat", "a dog", "a car", "a tree"], "correct_choice_idx": 1}
                                         for i in range(7)]), f)
    with TranslatorServer(tokenizer) as srv:
        rec = tmp_path / "a-okvqa.yaml"
        doc = yaml.safe_load((Path(tr.RECIPES) / "a-okvqa.yaml").read_text())
        doc["checks"] = ["parse", "count", "empty"]
        rec.write_text(yaml.safe_dump(doc))
        base = ["translate", str(rec), "--input", str(f), "--engine", "openai", "--base-url", srv.url,
                "--model", model_path, "--no-progress"]
        assert cli(base + ["--out", str(tmp_path / "o")], env).returncode == 0
        src_ids = sorted(ShardDir.open(tmp_path / "o" / "source").read_all().column("id").to_pylist())
        tgt_ids = sorted(ShardDir.open(tmp_path / "o" / "translated").read_all().column("id").to_pylist())
        assert src_ids == tgt_ids == [f"q{i}" for i in range(7)]
        assert cli(base + ["--out", str(tmp_path / "o3"), "--sample", "3"], env).returncode == 0
        assert ShardDir.open(tmp_path / "o3" / "translated").manifest()["totals"]["rows_in"] == 3
        assert cli(base + ["--out", str(tmp_path / "all"), "--sample", "0"], env).returncode == 0
        assert not (tmp_path / "all" / "source").exists()
        assert ShardDir.open(tmp_path / "all").manifest()["totals"]["rows_out"] == 7


# ------------------------------------------------------------------------------------ 5: any target language
def test_any_target_language(tmp_path, env, tokenizer):
    from lrpipe.languages import language_name

    gl = tmp_path / "magpie-gl.yaml"
    doc = yaml.safe_load((Path(tr.RECIPES) / "magpie.yaml").read_text()) | {"target_lang": "gl", "fewshot": None}
    gl.write_text(yaml.safe_dump(doc))
    rec = tr.load_recipe(str(gl))
    checker = tr.Checker(rec)
    # lingua has no Galician: the language check runs on fastText's lid.176, and says so
    assert checker._lang is not None and checker.detector == "fasttext-lid176"
    assert "language check by fasttext-lid176" in checker.notes
    doc_ast = dict(doc, target_lang="xx", target_name="Xish")
    (tmp_path / "xx.yaml").write_text(yaml.safe_dump(doc_ast))
    none = tr.Checker(tr.load_recipe(str(tmp_path / "xx.yaml")))
    assert none._lang is None and "no detector here knows 'xx'" in none.notes[0]
    pb = tr.PromptBuilder(rec, tokenizer, tr.load_shots(rec))
    assert "English to Galician translations" in pb.system
    data = tmp_path / "m.jsonl"
    data.write_text("".join(json.dumps({"id": f"m{i}", "instruction": q, "response": a}) + "\n"
                            for i, (q, a) in enumerate(zip(INSTR, RESP))))
    r = cli(["translate", str(gl), "--input", str(data), "--dry-run"], env)
    assert r.returncode == 0 and "Galician:" in r.stdout, r.stderr
    assert language_name("xx", "Xish") == "Xish"
    r = cli(["translate", str(gl), "--input", str(data), "--dry-run", "--tgt", "xx"], env)
    assert "no name known for language code 'xx'" in one_line_error(r)
    r = cli(["translate", str(gl), "--input", str(data), "--dry-run", "--tgt", "xx", "--tgt-name", "Xish"], env)
    assert r.returncode == 0 and "Xish:" in r.stdout


# ------------------------------------------------------------------------------------ 6: empty work units
def test_an_empty_first_unit_is_shown_and_trained_past(tmp_path, env, model_path):
    from lrpipe.training.data import PackedShards

    first = tmp_path / "a.jsonl"
    first.write_text("".join(json.dumps({"id": f"a{i}", "instruction": "hi", "response": "hello"}) + "\n"
                             for i in range(3)))
    second = tmp_path / "b.jsonl"
    second.write_text("".join(json.dumps({"id": f"b{i}", "instruction": q, "response": a}) + "\n"
                              for i, (q, a) in enumerate(zip(INSTR, RESP))))
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump({"tokenizer": "none", "sources": [
        {"name": "a", "input": str(first), "language": "en", "rows": 0},  # a unit that keeps no row
        {"name": "b", "input": str(second), "language": "en"}]}))
    assert cli(["mix", str(tmp_path / "mix.yaml"), "--out", str(tmp_path / "mix")], env).returncode == 0
    r = cli(["pack", "--input", str(tmp_path / "mix"), "--out", str(tmp_path / "pack"), "--tokenizer", model_path,
             "--seq-len", "256"], env)
    assert r.returncode == 0, r.stderr
    sd = ShardDir.open(tmp_path / "pack")
    assert pa.ipc.open_stream(str(sd.data_files()[0])).read_all().num_rows == 0
    r = cli(["show", str(tmp_path / "pack")], env)
    assert r.returncode == 0 and "first packed row" in r.stdout, r.stderr
    data = PackedShards(tmp_path / "pack")
    assert data.seq_len == 256 and len(data) >= 1 and len(data.row(0)["input_ids"]) == 256


# ------------------------------------------------------------------------------------ 7: row faults are rows
def test_a_malformed_row_is_rejected_and_the_job_goes_on(tmp_path, tokenizer):
    from lrpipe.pipelines.pack import PackStage

    rows = [{"id": f"r{i}", "conversation": [{"role": "user", "content": f"q{i}"},
                                             {"role": "assistant", "content": f"a{i}"}]} for i in range(10)]
    rows[7]["conversation"][1]["role"] = "robot"
    rows[3]["conversation"][0]["content"] = None
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = run_stage(PackStage(open_source(p), tokenizer, "embedded", seq_len=256), tmp_path / "pack", progress=False)
    sd = ShardDir.open(tmp_path / "pack")
    rej = sd.read_all(rejected=True).to_pylist()
    assert {r["id"]: r["reject_reason"] for r in rej} == {"r3": "bad_input", "r7": "bad_input"}
    detail = {r["id"]: r["reject_detail"] for r in rej}
    assert "row 7" in detail["r7"] and "field 'conversation'" in detail["r7"] and "unknown role 'robot'" in detail["r7"]
    assert "row 3" in detail["r3"] and "message 0 has keys ['role']" in detail["r3"]  # null content
    assert sd.manifest()["totals"]["rows_consumed"] == 8 and rep.complete
    # the same rows through a conversation recipe: rejected as translate_bad_input, the rest translated
    eng = MarkerEngine(tokenizer)
    rec = no_language_check("magpie-conversations", tmp_path, fields={"conversation": "conversation"})
    run_stage(tr.TranslateStage(open_source(p), rec, eng, "marker"), tmp_path / "t", engine=eng, progress=False)
    sd = ShardDir.open(tmp_path / "t")
    assert sd.manifest()["totals"]["rejected_by_reason"] == {"translate_bad_input": 2}
    assert sd.manifest()["totals"]["rows_out"] == 8


def test_unreadable_jsonl_rows_reach_rejected_through_any_stage(tmp_path, env):
    p = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": f"s{i}", "instruction": f"Question number {i}?"}) for i in range(20)]
    lines[16] = json.dumps({"id": 16, "instruction": "an integer id among string ids"})
    lines[5] = '{"id": "s5", "instruction": '
    p.write_text("\n".join(lines) + "\n")
    r = cli(["filter", "--input", str(p), "--out", str(tmp_path / "o"), "--rows-per-unit", "8"], env)
    assert r.returncode == 0 and "18 kept, 2 rejected" in r.stdout, r.stderr
    m = ShardDir.open(tmp_path / "o").manifest()
    assert m["totals"]["rows_in"] == 20 and m["totals"]["balanced"]
    rej = ShardDir.open(tmp_path / "o").read_all(rejected=True).to_pylist()
    details = sorted(r["reject_detail"] for r in rej)
    assert re.search(r"in.jsonl, row 16, field 'id'", details[0]) and re.search(r"in.jsonl, row 5: invalid JSON",
                                                                                 details[1]), details
    assert all(r["raw_row"] for r in rej)


def test_cli_mistakes_get_one_line_errors(tmp_path, env, model_path):
    import shutil

    r = cli(["translate", "magpie", "--input", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "o"),
             "--model", str(tmp_path / "no-such-model")], env)
    (tmp_path / "x.jsonl").write_text(json.dumps({"instruction": "a", "response": "b"}) + "\n")
    r = cli(["translate", "magpie", "--input", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "o"),
             "--model", str(tmp_path / "no-such-model")], env)
    assert "no-such-model: no such model folder" in one_line_error(r) and r.returncode == 4
    bare = tmp_path / "config-only"
    bare.mkdir()
    shutil.copy(Path(model_path) / "config.json", bare / "config.json")
    r = cli(["pack", "--input", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "p"), "--tokenizer", str(bare)], env)
    assert "config-only: no tokenizer files" in one_line_error(r)
    taken = tmp_path / "taken"
    taken.write_text("a file")
    r = cli(["filter", "--input", str(tmp_path / "x.jsonl"), "--out", str(taken)], env)
    assert "--out names an existing file" in one_line_error(r) and r.returncode == 2
    r = cli(["run", "magpie", "--n", "0", "--out", str(tmp_path / "m")], env)
    assert one_line_error(r) == "error: invalid --n: Input should be greater than 0 (got 0)"
    r = cli(["run", "magpie", "--temps", "-1:2", "--out", str(tmp_path / "m")], env)
    assert "invalid --temps: temperatures must be non-negative" in one_line_error(r)


# ------------------------------------------------------------------------------------ 8: sized and judged fairly
def test_translation_budget_follows_the_row_and_the_context(tokenizer):
    eng = MarkerEngine(tokenizer)
    stage = tr.TranslateStage(FileSource([]), tr.load_recipe("magpie"), eng, "marker")
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    long = [{"role": "user", "content": "word " * 3000}, {"role": "assistant", "content": "answer " * 3000}]
    n_short = len(tokenizer(stage.prompts.render_item(short), add_special_tokens=False)["input_ids"])
    assert stage.budget(short, 100) == 2 * n_short + 64
    assert stage.budget(long, 100) == 8192 - 100  # the model's context after the prompt
    eng.context_length = None
    stage.context = None
    assert stage.budget(long, 100) == 8192  # the recipe's cap


def test_language_check_per_message_allows_text_that_was_not_english():
    checker = tr.Checker(tr.load_recipe("magpie"))
    src = [{"role": "user", "content": "Translate 'Good morning, how are you today, my dear friend?' into Spanish, "
                                       "please, and keep it polite."},
           {"role": "assistant", "content": "Buenos días, ¿cómo estás hoy, mi querido amigo? Espero que muy bien."}]
    good = [{"role": "user", "content": "Itzuli 'Good morning, how are you today, my dear friend?' gaztelaniara, "
                                        "mesedez, eta mantendu adeitsu."},
            src[1]]
    tgt, why, detail = checker(src, json.dumps(good, ensure_ascii=False), "stop", {})
    assert why == "", detail
    english = [good[0], {"role": "assistant", "content": "Good morning, how are you today, my dear friend? I hope "
                                                         "you are very well."}]
    src2 = [src[0], {"role": "assistant", "content": english[1]["content"]}]
    _, why, detail = checker(src2, json.dumps(english, ensure_ascii=False), "stop", {})
    assert why == "wrong_language" and detail.startswith("text 1:")


def test_magpie_default_chain_and_the_quality_prompt(tmp_path, tokenizer):
    from lrpipe.filters.quality import Quality
    from lrpipe.pipelines.magpie import MagpieConfig

    real = MagpieConfig(model="meta-llama/Llama-3.1-8B-Instruct").filters
    assert real[-1] == {"name": "quality", "field": ["instruction", "response"]}
    assert [f if isinstance(f, str) else f["name"] for f in real] == ["empty", "unfinished", "dedup", "repetition",
                                                                      "quality"]
    assert "quality" not in json.dumps(MagpieConfig(model="embedded").filters)
    q = Quality(field=["instruction", "response"])
    reqs = q.requests({"instruction": "What is 12 * 7?", "response": "It is 84."}, tokenizer)
    response_prompt = tokenizer.decode(reqs[1][1])
    assert "What is 12 * 7?" in response_prompt and "It is 84." in response_prompt


# ------------------------------------------------------------------------------------ 9: smaller, same family
def test_a_global_filter_after_quality_sees_the_judges_survivors(tmp_path, tokenizer):
    from lrpipe.engines.base import GenResult
    from lrpipe.pipelines.filter import make_filter_stage

    class Judge:
        """Rates an instruction 'poor' when it contains 'bad', else 'good'."""

        name, supports_images = "judge", False

        def __init__(self) -> None:
            self.tokenizer, self.calls = tokenizer, 0

        def generate(self, requests):
            for q in requests:
                if q is None:
                    continue
                self.calls += 1
                label = "poor" if "bad" in tokenizer.decode(q.prompt).split("Instruction:")[-1] else "good"
                yield GenResult(key=q.key, text=json.dumps({"quality": label}), finish_reason="stop",
                                prompt_tokens=1, output_tokens=1)

        def describe(self):
            return {"engine": self.name}

    # id a1 (smallest) is a duplicate rated poor: dedup among the survivors keeps a2, not nothing
    rows = [{"id": "a1", "instruction": "Tell me a joke bad"}, {"id": "a2", "instruction": "tell me a JOKE   bad"},
            {"id": "b1", "instruction": "Explain rain."}, {"id": "b2", "instruction": "explain rain."}]
    rows[1]["instruction"] = "Tell me a joke"  # a2 differs only in the judged word: not a duplicate of a1
    rows.append({"id": "a3", "instruction": "tell me a joke"})  # duplicate of a2 (same normalized text)
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    eng = Judge()
    stage = make_filter_stage(FileSource([str(p)], rows_per_unit=2), ["empty", "quality", "dedup"], eng)
    rep = run_stage(stage, tmp_path / "o", engine=eng, progress=False)
    sd = ShardDir.open(tmp_path / "o")
    assert sorted(sd.read_all().column("id").to_pylist()) == ["a2", "b1"]
    reasons = {r["id"]: r["reject_reason"] for r in sd.read_all(rejected=True).to_pylist()}
    assert reasons == {"a1": "quality", "a3": "dedup", "b2": "dedup"} and rep.complete
    assert eng.calls == 5
    assert len(list((tmp_path / "o" / ".work").glob("01-quality-ratings/part-*.arrow"))) == 3


def test_part_files_past_99999_units(tmp_path):
    assert part_index("part-00042.arrow") == 42 and part_index("part-123456.json") == 123456
    assert part_index(".part-100001.arrow.tmp.host.1.abc") == 100001
    sd = ShardDir.create(tmp_path / "s", stage="x", config={}, plan=[])
    rec = {"index": 123456, "name": "u", "status": "done", "file": "part-123456.arrow", "rows_in": 0, "rows_out": 0,
           "rows_rejected": 0, "rejected_by_reason": {}, "checksum": "sha256:0"}
    (sd.units_dir / "part-123456.json").write_text(json.dumps(rec))
    assert 123456 in ShardDir.open(tmp_path / "s").records()


def test_a_batch_script_with_ntasks_but_no_srun_runs_everything(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_STEP_ID", "SLURM_STEPID"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert resolve_rank(None, None) == (0, 1)
    monkeypatch.setenv("SLURM_STEP_ID", "0")  # inside `srun`: one of 4 tasks
    monkeypatch.setenv("SLURM_PROCID", "2")
    assert resolve_rank(None, None) == (2, 4)


def test_corrupt_files_are_named(tmp_path, env):
    sd = tmp_path / "old"
    (sd / "data").mkdir(parents=True)
    (sd / "manifest.json").write_text("{oops")
    r = cli(["show", str(sd)], env)
    assert f"{sd / 'manifest.json'}: corrupt manifest" in one_line_error(r)
    with pytest.raises(InputError, match="corrupt manifest"):
        ShardDir.open(sd).header()


def test_filter_passes_engine_options_to_a_quality_judge(env):
    r = cli(["filter", "--help"], env | {"COLUMNS": "300"})
    for opt in ("--tp", "--max-model-len", "--gpu-memory-utilization", "--max-num-seqs", "--dtype"):
        assert opt in r.stdout, opt
