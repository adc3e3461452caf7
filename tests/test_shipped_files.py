"""The shipped recipes, configs and README say what the papers and the code do: each test reads the
shipped file as a user would get it (and failed before the file was fixed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_multimodal_stages_train_at_the_studys_sequence_length():
    for stage in ("mllm-stage1", "mllm-stage2"):
        cfg = yaml.safe_load((REPO / "training" / "configs" / f"{stage}.yaml").read_text())
        assert cfg["max_length"] == 8192, stage


def test_stage_two_mixture_ships_with_text_rows_at_a_fixed_share():
    from lrpipe.pipelines.mix_recipe import load_mix_recipe, parse_target_shares

    rec = load_mix_recipe("mm-stage2")
    src = {s.name: s for s in rec.sources}
    assert src["pixmo-ama"].parallel["en"] == "hf://allenai/pixmo-ask-model-anything"
    assert src["text"].rows == 29000 and src["text"].target_share == 0.8
    assert src["text"].parallel == {"en": "hf://HiTZ/Magpie-Llama-3.1-8B-Instruct-Filtered-1M",
                                    "eu": "hf://HiTZ/Magpie-Llama-3.1-8B-Instruct-Filtered-translated-1M"}
    # the study's grid moves PixMo-AMA's share only
    grid = load_mix_recipe("mm-stage2", target_share=parse_target_shares(["pixmo-ama=0.2"]))
    assert {s.name: s.target_share for s in grid.sources} == {"pixmo-ama": 0.2, "text": 0.8}
    every = load_mix_recipe("mm-stage2", target_share=parse_target_shares(["0.2"]))
    assert {s.target_share for s in every.sources} == {0.2}
    both = load_mix_recipe("mm-stage2", target_share=parse_target_shares(["0.0", "text=0.8"]))
    assert {s.name: s.target_share for s in both.sources} == {"pixmo-ama": 0.0, "text": 0.8}
    with pytest.raises(Exception, match="names no source"):
        load_mix_recipe("mm-stage2", target_share=parse_target_shares(["captions=0.2"]))
    with pytest.raises(ValueError, match="between 0 and 1"):
        parse_target_shares(["text=1.5"])
    # stage 1 is the captions mixture; no shipped recipe calls captions + text the stage-2 data
    assert not (REPO / "pipelines/recipes/mix/mm-80-20.yaml").exists()
    assert "mm-80-20" not in README and "--data out/mix-mm-80" in README


def test_wildvision_recipe_has_an_input_and_keeps_the_listed_ids(tmp_path):
    from lrpipe.pipelines import translate as tr
    from lrpipe.runner import run_stage
    from lrpipe.shards import ShardDir
    from lrpipe.sources import FileSource

    rec = tr.load_recipe("wildvision")
    assert rec.input and rec.input.startswith("hf://WildVision/") and rec.fields.id == "question_id"
    rows = [{"question_id": f"q{i}", "instruction": f"What is in image {i}?"} for i in range(10)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "wv.parquet")
    (tmp_path / "kept.txt").write_text("# the questions kept after the human filter\nq1\nq4\nq7\n")
    doc = yaml.safe_load((REPO / "pipelines/recipes/translate/wildvision.yaml").read_text())
    doc["keep_ids_file"] = "kept.txt"  # relative to the recipe's own folder
    doc.pop("keep_ids")
    (tmp_path / "wildvision.yaml").write_text(yaml.safe_dump(doc))
    mine = tr.load_recipe(str(tmp_path / "wildvision.yaml"))
    assert mine.kept_ids() == {"q1", "q4", "q7"}
    rep = run_stage(tr.SampleStage(FileSource([str(tmp_path / "wv.parquet")], id_field="question_id"), mine, None,
                                   0), tmp_path / "source", progress=False)
    assert rep.rows_out == 3
    kept = ShardDir.open(tmp_path / "source").read_all().column("question_id").to_pylist()
    assert sorted(kept) == ["q1", "q4", "q7"]
    reasons = ShardDir.open(tmp_path / "source").manifest()["totals"]["rejected_by_reason"]
    assert reasons == {"not_selected": 7}


def test_translate_takes_the_conversation_column_the_recipe_points_to(tmp_path, env):
    import subprocess

    from .conftest import PIPE

    doc = yaml.safe_load((REPO / "pipelines/recipes/translate/magpie-conversations.yaml").read_text())
    assert "--conversation-field" in (REPO / "pipelines/recipes/translate/magpie-conversations.yaml").read_text()
    assert doc["fields"]["conversation"] == "conversations"
    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps({"uuid": "u1", "messages": [{"role": "user", "content": "Hi there"},
                                                        {"role": "assistant", "content": "Hello!"}]}) + "\n")
    r = subprocess.run(PIPE + ["translate", "magpie-conversations", "--input", str(p), "--dry-run",
                               "--conversation-field", "messages"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Hi there" in r.stdout
    r = subprocess.run(PIPE + ["translate", "magpie", "--input", str(p), "--dry-run", "--conversation-field",
                               "messages"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and "several columns" in r.stderr and "Traceback" not in r.stderr


def test_readme_commands_name_what_the_code_writes_and_reads():
    from lrpipe.eval.mm_data import load_task

    # pipe eval mm --data released --langs en,eu: every task the README names has both languages released
    m = re.search(r"pipe eval mm [^\n]*--tasks (\S+) --langs (\S+) --data released", README)
    assert m, "the README shows --data released"
    for task in m.group(1).split(","):
        rel = load_task(task).released
        assert set(m.group(2).split(",")) <= set(rel), task
        assert all(r.dataset.startswith("hf://lukasArana/") for r in rel.values())
        assert {r.split for r in rel.values()} == {"en", "eu"}
    # the Magpie steps are sample / respond / filtered: the grid command reads the filtered one
    for path in re.findall(r"--instructions-en (out/magpie/\S+)", README):
        assert path == "out/magpie/filtered", path
    for hub_id in ("lukasArana/pixmo-ask-model-anything-eu", "lukasArana/A-OK-VQA-eu", "lukasArana/vqa-v2-eu",
                   "lukasArana/Pixmo-cap-qa-eu", "HiTZ/Magpie-Llama-3.1-8B-Instruct-Filtered-translated-1M",
                   "HiTZ/ebaluatoia"):
        assert hub_id in README, hub_id


def test_a_translation_released_without_its_sources_ids_is_paired_by_id_or_refused(tmp_path):
    """The released Magpie translation pairs with its English source by uuid; the rows it lacks are
    unpaired (about 7% in the release); without a shared id the mixture stops and says why."""
    from lrpipe.errors import InputError
    from lrpipe.pipelines.mix import build_mix
    from lrpipe.pipelines.mix_recipe import MixRecipe
    from lrpipe.shards import ShardDir

    def conv(text):
        return [{"role": "user", "content": text}, {"role": "assistant", "content": text + "!"}]

    en = [{"uuid": f"u{i}", "conversations": conv(f"question {i}")} for i in range(100)]
    eu = [{"uuid": f"u{i}", "conversations": conv(f"galdera {i}")} for i in range(100) if i % 14 != 3]  # 7 missing
    pq.write_table(pa.Table.from_pylist(en), tmp_path / "en.parquet")
    pq.write_table(pa.Table.from_pylist(eu), tmp_path / "eu.parquet")
    pq.write_table(pa.Table.from_pylist([{"conversations": r["conversations"]} for r in eu]), tmp_path / "eu-noid.parquet")

    def recipe(eu_path):
        return MixRecipe.model_validate({"name": "t", "target_lang": "eu", "seed": 1, "tokenizer": "none", "sources": [
            {"name": "text", "parallel": {"en": str(tmp_path / "en.parquet"), "eu": str(eu_path)}, "id_field": "uuid",
             "target_share": 0.8, "unpaired": "drop"}]})

    build_mix(recipe(tmp_path / "eu.parquet"), tmp_path / "mix", progress=False)
    m = ShardDir.open(tmp_path / "mix").manifest()
    assert m["totals"]["rows_out"] == 93 and m["totals"]["rejected_by_reason"]["unpaired"] == 7
    assert sum(r["language"] == "eu" for r in ShardDir.open(tmp_path / "mix").read_all().to_pylist()) == round(0.8 * 93)
    with pytest.raises(InputError, match="share no id"):
        build_mix(recipe(tmp_path / "eu-noid.parquet"), tmp_path / "mix2", progress=False)
