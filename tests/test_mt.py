"""pipe mt: sentence splitting and reassembly, the sentence cache, both backends on a tiny MarianMT
model built here from a config with a SentencePiece vocabulary trained here (no download)."""

from __future__ import annotations

import json
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lrpipe.pipelines import mt
from lrpipe.runner import run_stage
from lrpipe.shards import ShardDir
from lrpipe.sources import FileSource

from .conftest import PIPE

CORPUS = ["A man rides a bicycle down the street.", "Two dogs play in the park.",
          "A woman holds an umbrella in the rain.", "The sun sets over the mountains.",
          "Children are playing football on the beach.", "Mr. Smith reads a newspaper at 5 p.m. in the cafe."]




class EchoMT(mt.MTBackend):
    """Upper-cases; records every batch, so tests can see what was translated and in which order."""

    name = "echo"

    def __init__(self):
        self.batches = []

    def translate(self, sentences):
        self.batches.append(list(sentences))
        return [s.upper() for s in sentences]


def _captions(tmp_path, captions, extra=None):
    rows = [{"image_url": f"https://img.example/{i}.jpg", "caption": c, **(extra or {})} for i, c in enumerate(captions)]
    p = tmp_path / "cc.parquet"
    pq.write_table(pa.Table.from_pylist(rows), p)
    return p


def test_splitter_keeps_abbreviations_and_cuts_long_sentences():
    sp = mt.SentenceSplitter("en", max_chars=50)
    text = "Mr. Smith went to Washington. He arrived at 5 p.m. today! Did he? Yes."
    sents = [text[s:e] for s, e in sp.spans(text)]
    assert sents == ["Mr. Smith went to Washington.", "He arrived at 5 p.m. today!", "Did he?", "Yes."]
    long = " ".join(f"word{i}" for i in range(100))  # 690 chars, no punctuation
    pieces = [long[s:e] for s, e in sp.spans(long)]
    assert all(len(p) <= 50 for p in pieces) and " ".join(pieces) == long
    assert sp.spans("") == [] and sp.spans("   ") == []


def test_reassembly_order_separators_and_cache(tmp_path):
    caps = ["A dog runs. A cat sleeps.", "", "A dog runs.", "A cat sleeps.\n\nA bird sings!", "A dog runs.",
            "  ", "😀 Emoji caption. 第二句。"]
    src = _captions(tmp_path, caps)
    be = EchoMT()
    stage = mt.MTStage(FileSource([str(src)], rows_per_unit=3), be, "caption")
    rep = run_stage(stage, tmp_path / "out", progress=False)
    sd = ShardDir.open(tmp_path / "out")
    rows = sd.read_all().to_pylist()
    assert rep.rows_out == len(caps) and [r["caption"] for r in rows] == caps
    assert [r["caption_eu"] for r in rows] == [c.upper() for c in caps[:5]] + ["", caps[6].upper()]
    assert all(r["image_url"].startswith("https://img.example/") for r in rows)
    translated = [s for b in be.batches for s in b]
    assert len(translated) == len(set(translated))  # every distinct sentence once, across units
    assert sorted(translated) == sorted({"A dog runs.", "A cat sleeps.", "A bird sings!", "😀 Emoji caption.", "第二句。"})
    for b in be.batches:
        assert [len(s) for s in b] == sorted(len(s) for s in b)  # length-sorted batches
    stats = sd.manifest()["stats"]
    assert stats["sentences"] == 8 and stats["translated"] == 5 and stats["cache_hits"] == 3


def test_non_text_rows_are_rejected_not_lost(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps({"caption": c}) for c in ["ok.", None, "fine."]))
    run_stage(mt.MTStage(FileSource([str(p)]), EchoMT(), "caption"), tmp_path / "o", progress=False)
    sd = ShardDir.open(tmp_path / "o")
    m = sd.manifest()
    assert m["totals"]["balanced"] and m["totals"]["rows_out"] == 2
    rej = sd.read_all(rejected=True).to_pylist()
    assert {r["reject_reason"] for r in rej} == {"mt_bad_input"} and "field 'caption'" in rej[0]["reject_detail"]


@pytest.mark.parametrize("backend", ["transformers", "ctranslate2"])
def test_both_backends_translate_every_row(tmp_path, tiny_marian, backend, monkeypatch):
    monkeypatch.setenv("LRPIPE_CACHE", str(tmp_path / "cache"))
    caps = CORPUS + ["", "Two dogs play in the park. Two dogs play in the park.", " ".join(["long"] * 400) + "."]
    src = _captions(tmp_path, caps)
    be = mt.make_backend(backend, tiny_marian, "cpu", batch_size=4)
    run_stage(mt.MTStage(FileSource([str(src)], rows_per_unit=4), be, "caption", model_id="tiny"), tmp_path / "o",
              progress=False)
    rows = ShardDir.open(tmp_path / "o").read_all().to_pylist()
    assert len(rows) == len(caps)
    for r in rows:
        assert isinstance(r["caption_eu"], str)
        assert bool(r["caption_eu"].strip()) == bool(r["caption"].strip()), r
    if backend == "ctranslate2":
        assert any((tmp_path / "cache" / "ct2").iterdir())  # converted once into the cache
        again = mt.make_backend(backend, tiny_marian, "cpu")
        assert again.translate(["Two dogs play in the park."]) == be.translate(["Two dogs play in the park."])


def test_backends_agree_on_greedy_output(tiny_marian, tmp_path, monkeypatch):
    monkeypatch.setenv("LRPIPE_CACHE", str(tmp_path / "cache"))
    hf = mt.make_backend("transformers", tiny_marian, "cpu")
    ct = mt.make_backend("ctranslate2", tiny_marian, "cpu")
    assert hf.translate(CORPUS[:3]) == ct.translate(CORPUS[:3])


def test_cli_preset_and_field_errors(tmp_path, env, tiny_marian):
    src = _captions(tmp_path, ["A dog runs. A cat sleeps.", "Two dogs play in the park."])
    env = dict(env, LRPIPE_CACHE=str(tmp_path / "cache"))
    r = subprocess.run(PIPE + ["mt", "cc3m", "--input", str(src), "--out", str(tmp_path / "o"), "--model", tiny_marian,
                               "--no-progress"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 translated, 0 rejected" in r.stdout
    m = ShardDir.open(tmp_path / "o").manifest()
    assert m["config"]["field"] == "caption" and m["config"]["backend"] == "ctranslate2"
    bad = subprocess.run(PIPE + ["mt", "--input", str(src), "--out", str(tmp_path / "o2"), "--field", "text",
                                 "--model", tiny_marian], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "missing column(s) ['text']" in bad.stderr
