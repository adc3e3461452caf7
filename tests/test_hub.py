"""Hub conventions: dataset ids as users write them, streaming that reads each unit once, compressed JSON
lines, and ``pipe push`` with huggingface_hub's card and typed image features, loaded back by ``datasets``."""

from __future__ import annotations

import gzip
import io
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard
from PIL import Image

from lrpipe.errors import InputError
from lrpipe.hub import build_upload_folder, size_category
from lrpipe.pipelines import translate as tr
from lrpipe.runner import run_stage
from lrpipe.sources import FileSource, HubSource, is_hub_spec, open_source, parse_hub_spec

from .test_translate import EU, ScriptedEngine


def _png(r: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (r, 40, 90)).save(buf, "PNG")
    return buf.getvalue()


def aokvqa_parquet_repo(folder, files=2, rows=9, group=4):
    """A local copy of an A-OKVQA-shaped Hub repo: ``data/train-*.parquet`` with typed images, written by
    ``datasets`` in row groups of ``group`` rows (as the Hub's own parquet files are)."""
    qs = list(EU)
    feats = datasets.Features({"question_id": datasets.Value("string"), "image": datasets.Image(),
                               "question": datasets.Value("string"),
                               "choices": datasets.Sequence(datasets.Value("string")),
                               "correct_choice_idx": datasets.Value("int64")})
    (folder / "data").mkdir(parents=True)
    for f in range(files):
        table = [{"question_id": f"q{f}{i:02d}", "image": {"bytes": _png(10 * i + f), "path": None},
                 "question": qs[i % 3], "choices": ["umbrella", "phone", "book", "cup"], "correct_choice_idx": i % 4}
                for i in range(rows)]
        datasets.Dataset.from_list(table, features=feats).to_parquet(
            str(folder / "data" / f"train-{f:05d}-of-{files:05d}.parquet"), batch_size=group)
    return folder


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """``datasets.load_dataset("me/...")`` answered from a local folder (no network here), recording calls."""
    repo = aokvqa_parquet_repo(tmp_path / "repo")
    real, calls = datasets.load_dataset, []

    def load(path, name=None, **kw):
        calls.append((path, name, dict(kw)))
        if path.startswith("me/"):
            kw.pop("revision", None)
            return real(str(repo), name, **kw)
        return real(path, name, **kw)

    monkeypatch.setattr(datasets, "load_dataset", load)
    return repo, calls


def test_hub_ids_in_every_form_users_write(tmp_path, monkeypatch):
    assert parse_hub_spec("HiTZ/latxa-corpus-v1.1") == ("HiTZ/latxa-corpus-v1.1", None, None, None)
    assert parse_hub_spec("hf://lmms-lab/VQAv2:default@main") == ("lmms-lab/VQAv2", "default", "main", None)
    assert parse_hub_spec("hf://datasets/allenai/pixmo-ask-model-anything@a1b2c3") == (
        "allenai/pixmo-ask-model-anything", None, "a1b2c3", None)
    assert parse_hub_spec("hf://datasets/HiTZ/latxa-corpus-v1.1@refs%2Fconvert%2Fparquet/eu/*.jsonl.gz") == (
        "HiTZ/latxa-corpus-v1.1", None, "refs/convert/parquet", "eu/*.jsonl.gz")
    monkeypatch.chdir(tmp_path)
    assert isinstance(open_source("HiTZ/latxa-corpus-v1.1"), HubSource)  # lazy: nothing is downloaded yet
    assert not is_hub_spec("data/rows.jsonl")  # a file name, even when it does not exist (yet)
    (tmp_path / "HiTZ" / "latxa").mkdir(parents=True)  # a local folder of that name wins, as in datasets
    (tmp_path / "HiTZ" / "latxa" / "a.jsonl").write_text('{"text": "kaixo"}\n')
    assert isinstance(open_source("HiTZ/latxa"), FileSource)
    assert parse_hub_spec("hf:///data/hub/aokvqa-eu") == ("/data/hub/aokvqa-eu", None, None, None)  # a local copy
    with pytest.raises(InputError, match="expected org/name"):
        parse_hub_spec("hf://datasets/only-a-name")


def test_files_inside_a_hub_repo_use_the_builder_of_their_suffix(tmp_path, monkeypatch):
    calls = []

    def load(path, name=None, **kw):
        calls.append((path, kw))
        return datasets.Dataset.from_list([{"text": "kaixo"}])

    monkeypatch.setattr(datasets, "load_dataset", load)
    src = open_source("hf://datasets/HiTZ/latxa-corpus-v1.1@v1.1/eu/*.jsonl.gz", split="validation")
    assert src.read_unit(src.units()[0]).column("text").to_pylist() == ["kaixo"]
    path, kw = calls[0]
    assert path == "json" and kw["data_files"] == "hf://datasets/HiTZ/latxa-corpus-v1.1@v1.1/eu/*.jsonl.gz"
    assert kw["split"] == "train"  # data files form one split whatever --split says


def test_streaming_reads_each_row_group_once_and_keeps_image_bytes(local_hub):
    repo, calls = local_hub
    full = open_source("me/aokvqa-like@v2", rows_per_unit=5)
    streamed = open_source("hf://datasets/me/aokvqa-like@v2", streaming=True, rows_per_unit=5)
    units = streamed.units()
    assert len(units) == 6  # 2 files × 3 row groups (4 + 4 + 1 rows): the dataset's own shards
    tables = [streamed.read_unit(u) for u in units]
    assert [t.num_rows for t in tables] == [4, 4, 1, 4, 4, 1]  # disjoint: each row read exactly once
    rows = [r for t in tables for r in t.to_pylist()]
    ref = [r for u in full.units() for r in full.read_unit(u).to_pylist()]
    assert [r["id"] for r in rows] == [r["id"] for r in ref] == [r["question_id"] for r in ref]
    assert all(isinstance(r["image"]["bytes"], bytes) and r["image"]["bytes"].startswith(b"\x89PNG") for r in rows)
    assert rows == ref  # the same rows, the same types, the same ids as downloaded
    assert [c[2]["streaming"] for c in calls] == [True, False] and {c[2]["revision"] for c in calls} == {"v2"}
    assert streamed.identity()["units"] == "shards" and "rows_per_unit" not in streamed.identity()


def test_compressed_json_lines_are_read(tmp_path):
    for suffix, opener in ((".jsonl.gz", gzip.open),):
        p = tmp_path / f"latxa{suffix}"
        with opener(p, "wt") as f:
            f.write('{"text": "Kaixo mundua."}\n{"text": "Egun on."}\n')
        src = open_source(str(p))
        assert src.read_unit(src.units()[0]).column("text").to_pylist() == ["Kaixo mundua.", "Egun on."]
    p = tmp_path / "latxa.jsonl.zst"
    with pa.CompressedOutputStream(str(p), "zstd") as f:  # the codec pyarrow ships; no zstandard module needed
        f.write(b'{"text": "Agur."}\n')
    src = open_source(str(p))
    assert src.read_unit(src.units()[0]).column("text").to_pylist() == ["Agur."]


def test_push_card_and_typed_images_for_a_translated_multimodal_shard(tmp_path, local_hub, model_path):
    """The chain a user runs: a Hub dataset, streamed → pipe translate → pipe push; the folder the push
    would upload loads back with ``datasets`` and its images decode as images."""
    def script(unit, row, attempt, req):
        text = eng.tokenizer.decode(req.prompt) if not isinstance(req.prompt, str) else req.prompt
        q = max(EU, key=text.rfind)  # the row's question: the last one in the prompt (after the shots)
        if q.startswith("How many"):  # never valid: these rows end in rejected/
            return '{"question": "Zenbat', "stop"
        return json.dumps({"question": EU[q][0], "answers": EU[q][1]}, ensure_ascii=False), "stop"

    eng = ScriptedEngine(model_path, script)
    rec = tr.load_recipe("a-okvqa", checks=["parse", "count"])
    src = open_source("me/aokvqa-like", streaming=True)
    run_stage(tr.TranslateStage(src, rec, eng, "scripted"), tmp_path / "tr", engine=eng, progress=False)
    folder = build_upload_folder(tmp_path / "tr", "me/aokvqa-eu", tmp_path / "upload", include_rejected=True,
                                 license="cc-by-4.0")
    card = DatasetCard.load(folder / "README.md")
    d = card.data.to_dict()
    assert d["language"] == ["en", "eu"] and d["license"] == "cc-by-4.0"
    assert d["task_categories"] == ["image-text-to-text", "translation"]
    assert d["size_categories"] == ["n<1K"] and d["source_datasets"] == ["me/aokvqa-like"]
    assert d["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train/*"}]},
                            {"config_name": "rejected",
                             "data_files": [{"split": "train", "path": "data/rejected/*"}]}]
    feats = {f["name"]: f.get("dtype") for f in d["dataset_info"]["features"]}
    assert feats["image"] == "image" and feats["question_eu"] == "string"
    assert "me/aokvqa-like" in card.text and "rejected" in card.text.lower()
    loaded = datasets.load_dataset(str(folder), split="train")
    assert loaded.num_rows == 12 and isinstance(loaded.features["image"], datasets.Image)
    rejected = datasets.load_dataset(str(folder), "rejected", split="train")
    assert rejected.num_rows == 6 and set(rejected["reject_reason"]) == {"translate_invalid_json"}
    assert isinstance(rejected[0]["image"], Image.Image)
    first = loaded[0]
    assert isinstance(first["image"], Image.Image) and first["image"].size == (8, 6)
    assert first["question_eu"] in {v[0] for v in EU.values()}
    assert pq.read_schema(next((folder / "data" / "train").glob("*.parquet"))).metadata[b"huggingface"]
    # no license given: 'other' and a sentence saying whose terms apply
    bare = DatasetCard.load(build_upload_folder(tmp_path / "tr", "me/x", tmp_path / "u2") / "README.md")
    assert bare.data.license == "other" and "terms of its source datasets" in bare.text


def test_size_categories_follow_the_hub_buckets():
    assert [size_category(n) for n in (0, 999, 1000, 54_321, 2_800_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M"]
