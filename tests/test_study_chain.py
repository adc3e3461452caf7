"""The acceptance run of the study's data chain, on real layouts, the way a user chains commands:

* text: ``pipe run magpie`` (embedded model, vLLM on CPU) → ``pipe translate magpie`` → ``pipe mix`` at
  target shares 0 / 0.2 / 1.0 → ``pipe pack`` → decode: every target-language packed document is the
  translation, token for token, and every English one the source;
* multimodal: PixMo-AMA-shaped rows → ``pipe translate pixmo-ama`` → ``pipe mix``; CC3M-shaped rows →
  ``pipe mt`` → ``pipe mix``. Neither has an id column; images are URLs.

Translation goes through the real engine layer (the openai engine) to a scripted server on loopback
(:mod:`tests.fakes`), the only stand-in. Fixture rows follow the public datasets' cards column for
column: CC3M ``image_url, caption``; PixMo-AMA ``image_url, image_sha256, question, answer``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lrpipe.shards import ShardDir

from .conftest import PIPE
from .fakes import MARK, TranslatorServer

RECIPES = Path(__file__).resolve().parents[1] / "pipelines" / "recipes" / "translate"


def run(args: list[str], env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(PIPE + args, capture_output=True, text=True, env=env, timeout=900)
    if ok:
        assert r.returncode == 0, f"pipe {' '.join(args)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr
    return r


def recipe_without_language_check(name: str, folder: Path) -> str:
    """The shipped recipe with the language check off: the scripted translator's marker is no language."""
    doc = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    doc["checks"] = [c for c in doc["checks"] if c != "language"]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def show(path: Path, env: dict[str, str]) -> str:
    out = run(["show", str(path)], env).stdout
    assert "complete" in out and "(balanced)" in out and "INCOMPLETE" not in out, out
    return out


def rows_by_id(path: Path, rejected: bool = False) -> dict[str, dict]:
    return {r["id"]: r for r in ShardDir.open(path).read_all(rejected).to_pylist()}


def packed_documents(path: Path) -> list[tuple[str, list[int]]]:
    """(source id, token ids) of every document in pack output, in order."""
    docs = []
    for row in ShardDir.open(path).read_all().to_pylist():
        at = 0
        for k, n in enumerate(row["seq_lens"]):
            if k < len(row["source_ids"]):
                docs.append((row["source_ids"][k], row["input_ids"][at:at + n]))
            at += n
    return docs


@pytest.mark.slow
@pytest.mark.vllm
def test_magpie_translate_mix_pack_trains_on_the_translation(tmp_path, magpie_run, env, model_path, tokenizer):
    from lrpipe.tokenization import tokenize_conversation

    # 1. pipe run magpie on the embedded model (the session's fixture: vLLM on CPU)
    filtered = magpie_run / "filtered"
    en_rows = rows_by_id(filtered)
    assert len(en_rows) >= 3, "the embedded model kept too few rows to test the chain"
    for step in ("sample", "respond", "filtered"):
        show(magpie_run / step, env)

    # 2. pipe translate magpie, through the openai engine to the scripted translator
    with TranslatorServer(tokenizer) as srv:
        run(["translate", recipe_without_language_check("magpie", tmp_path), "--input", str(filtered),
             "--out", str(tmp_path / "eu"), "--engine", "openai", "--base-url", srv.url, "--model", model_path,
             "--no-progress"], env)
    eu_rows = rows_by_id(tmp_path / "eu")
    assert set(eu_rows) == set(en_rows), "every row translated (the scripted translator never fails)"
    for rid, r in eu_rows.items():
        assert r["instruction_eu"] == MARK + en_rows[rid]["instruction"]
        assert r["conversation_eu"] == [{"role": "user", "content": MARK + en_rows[rid]["instruction"]},
                                        {"role": "assistant", "content": MARK + en_rows[rid]["response"]}]
        assert r["conversation"] == en_rows[rid]["conversation"]  # the source stays as it was
    show(tmp_path / "eu", env)

    # 3. pipe mix at target shares 0, 0.2, 1.0, then 4. pipe pack, then decode
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump({
        "name": "instructions", "target_lang": "eu", "seed": 33, "tokenizer": model_path,
        "sources": [{"name": "magpie", "parallel": {"en": str(filtered), "eu": str(tmp_path / "eu")}}]}))
    n = len(en_rows)
    for share in (0.0, 0.2, 1.0):
        mixed, packed = tmp_path / f"mix-{share}", tmp_path / f"pack-{share}"
        run(["mix", str(tmp_path / "mix.yaml"), "--out", str(mixed), "--target-share", str(share)], env)
        assert "swap: target share" in show(mixed, env)
        run(["pack", "--input", str(mixed), "--out", str(packed), "--tokenizer", model_path, "--seq-len", "1024"], env)
        assert "first packed row" in show(packed, env)
        languages = {r["id"]: r["language"] for r in ShardDir.open(mixed).read_all().to_pylist()}
        docs = packed_documents(packed)
        assert sorted(d for d, _ in docs) == sorted(en_rows), "each id once, in one language"
        assert sum(lang == "eu" for lang in languages.values()) == round(share * n)
        for rid, ids in docs:
            if languages[rid] == "eu":
                want = eu_rows[rid]["conversation_eu"]
            else:
                want = en_rows[rid]["conversation"]
            assert ids == tokenize_conversation(tokenizer, want)[0], (share, rid, languages[rid])
            assert (MARK.strip() in tokenizer.decode(ids)) == (languages[rid] == "eu")

    # packing the translation directory directly: --language picks the translation, and a note says so
    r = run(["pack", "--input", str(tmp_path / "eu"), "--out", str(tmp_path / "pack-direct"), "--tokenizer",
             model_path, "--seq-len", "1024"], env)
    assert "--language eu packs the translation" in r.stderr
    run(["pack", "--input", str(tmp_path / "eu"), "--out", str(tmp_path / "pack-eu"), "--tokenizer", model_path,
         "--seq-len", "1024", "--language", "eu"], env)
    for rid, ids in packed_documents(tmp_path / "pack-eu"):
        assert ids == tokenize_conversation(tokenizer, eu_rows[rid]["conversation_eu"])[0]

    # 5. pipe report on the chain's folder: one offline page, read in Chromium
    from lrpipe.page.build import mix_rows
    from lrpipe.page.collect import shard_summary
    from tests.browser import assert_renders, open_page, report, screenshot_path

    page = report(tmp_path, tmp_path / "chain.html", env)
    facts = open_page(page, screenshot_path(tmp_path, "chain"))
    assert_renders(facts, min_charts=6)
    data = {d.name: shard_summary(d, tmp_path) for d in tmp_path.iterdir() if ShardDir.is_shard_dir(d)}
    with_text = sum(1 for r in eu_rows.values() if r["instruction"])  # a ratio needs a source length
    assert sum(data["eu"]["kept"]["ratios"]["instruction_eu / instruction"]) == with_text
    assert [c["name"] for c in facts.charts].count("ratios") == 1  # only the translation has a ratio
    for share in (0.0, 0.2, 1.0):
        mix = {m["source"]: m for m in mix_rows(data[f"mix-{share}"])}
        assert mix["magpie"]["rows"] == n and mix["magpie"]["languages"].get("eu", 0) == round(share * n)
        st = ShardDir.open(tmp_path / f"pack-{share}").manifest()["stats"]
        eff = f"{100 * st['tokens_in'] / (st['tokens_in'] + st['pad_tokens']):.1f}%"
        assert eff in facts.text
    for name in ("eu", "mix-0.2", "pack-eu"):
        assert facts.table(f"{name} kept"), name  # the rows each stage kept, readable


def pixmo_ama_rows(n: int) -> pa.Table:
    """allenai/pixmo-ask-model-anything: image_url, image_sha256, question, answer (no id)."""
    return pa.table({
        "image_url": [f"https://images.example.org/ama/{i // 2}.jpg" for i in range(n)],
        "image_sha256": [f"{i // 2:064x}" for i in range(n)],
        "question": [f"What is the animal in picture {i // 2} doing? Describe it in detail ({i % 2})." for i in range(n)],
        "answer": [f"The animal is a dog. It runs across a field of grass near {i} trees, chasing a red ball."
                   for i in range(n)]})


def cc3m_rows(n: int) -> pa.Table:
    """google-research-datasets/conceptual_captions: image_url, caption (no id)."""
    from .conftest import MT_CORPUS

    return pa.table({"image_url": [f"https://images.example.org/cc3m/{i}.jpg" for i in range(n)],
                     "caption": [MT_CORPUS[i % len(MT_CORPUS)].lower().rstrip(".") + f" {i}" for i in range(n)]})


@pytest.mark.slow
def test_multimodal_sets_without_ids_translate_and_mix_in_parallel(tmp_path, env, model_path, tokenizer,
                                                                   tiny_marian):
    from lrpipe.chat import conversation_of

    # PixMo-AMA: translate (chat mode), then a 50:50 mixture of the same instances
    ama = tmp_path / "pixmo-ama.parquet"
    pq.write_table(pixmo_ama_rows(12), ama)
    with TranslatorServer(tokenizer) as srv:
        run(["translate", recipe_without_language_check("pixmo-ama", tmp_path), "--input", str(ama),
             "--out", str(tmp_path / "ama-eu"), "--engine", "openai", "--base-url", srv.url, "--model", model_path,
             "--no-progress"], env)
    show(tmp_path / "ama-eu", env)
    translated = rows_by_id(tmp_path / "ama-eu")
    assert len(translated) == 12
    (tmp_path / "ama.yaml").write_text(yaml.safe_dump({
        "name": "ama", "target_lang": "eu", "seed": 1, "tokenizer": "none",
        "sources": [{"name": "pixmo-ama", "parallel": {"en": str(ama), "eu": str(tmp_path / "ama-eu")},
                     "target_share": 0.5}]}))
    run(["mix", str(tmp_path / "ama.yaml"), "--out", str(tmp_path / "ama-mix")], env)
    out = show(tmp_path / "ama-mix", env)
    assert "unpaired" in out
    mixed = ShardDir.open(tmp_path / "ama-mix").read_all().to_pylist()
    assert sorted(r["id"] for r in mixed) == sorted(translated), "the raw rows pair with their translations"
    assert sum(r["language"] == "eu" for r in mixed) == 6
    m = ShardDir.open(tmp_path / "ama-mix").manifest()
    assert m["totals"]["rejected_by_reason"] == {"swapped": 12}
    for r in mixed:
        src = translated[r["id"]]
        assert r["image_url"] == src["image_url"] and r["image_sha256"] == src["image_sha256"]
        msgs = conversation_of(r, qa=True)  # what pipe train mllm trains on
        if r["language"] == "eu":
            assert msgs[0]["content"] == src["question_eu"] and msgs[1]["content"] == src["answer_eu"]
            assert msgs[1]["content"].startswith(MARK)
        else:
            assert msgs[0]["content"] == src["question"] and msgs[1]["content"] == src["answer"]

    # CC3M: sentence-level MT, then 0 / 0.2 / 1.0 target shares of the same captions
    cc = tmp_path / "cc3m.parquet"
    pq.write_table(cc3m_rows(30), cc)
    run(["mt", "--input", str(cc), "--out", str(tmp_path / "cc3m-eu"), "--field", "caption", "--backend",
         "transformers", "--model", tiny_marian, "--no-progress"], env)
    show(tmp_path / "cc3m-eu", env)
    mt_rows = rows_by_id(tmp_path / "cc3m-eu")
    assert len(mt_rows) == 30
    (tmp_path / "cc.yaml").write_text(yaml.safe_dump({
        "name": "captions", "target_lang": "eu", "seed": 2, "tokenizer": "none",
        "sources": [{"name": "cc3m", "parallel": {"en": str(cc), "eu": str(tmp_path / "cc3m-eu")}}]}))
    previous: set[str] = set()
    for share, n_eu in ((0.0, 0), (0.2, 6), (1.0, 30)):
        mixed_dir = tmp_path / f"cc-mix-{share}"
        run(["mix", str(tmp_path / "cc.yaml"), "--out", str(mixed_dir), "--target-share", str(share)], env)
        show(mixed_dir, env)
        rows = ShardDir.open(mixed_dir).read_all().to_pylist()
        assert sorted(r["id"] for r in rows) == sorted(mt_rows)
        eu = {r["id"] for r in rows if r["language"] == "eu"}
        assert len(eu) == n_eu and previous <= eu, "target ids are nested as the share grows"
        previous = eu
        for r in rows:
            want = mt_rows[r["id"]]["caption_eu" if r["language"] == "eu" else "caption"]
            assert r["caption"] == want and r["image_url"] == mt_rows[r["id"]]["image_url"]
