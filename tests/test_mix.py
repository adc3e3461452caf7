"""pipe mix: recipes, budgets and up/down-sampling, parallel swap at 0/20/80/100, grids, ranks."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from lrpipe.errors import InputError
from lrpipe.pipelines import mix, mix_recipe
from lrpipe.runner import run_stage
from lrpipe.shards import ShardDir
from tests.test_pack import CHATML, make_tokenizer

EN = "the cat dog house river mountain sings reads quickly under over green blue small".split()
EU = "katua txakurra etxea ibaia mendia abesten irakurtzen azkar azpian gainean berdea urdina txikia".split()


def _words(rng: random.Random, vocab: list[str], lo: int, hi: int) -> str:
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """10k paired instructions (+40 English-only, +10 target-only ids), in the layout of pipe
    translate (the target file holds instruction/response and instruction_eu/response_eu), and a
    corpus of 1,500 documents."""
    d = tmp_path_factory.mktemp("mixdata")
    rng = random.Random(7)
    en, tgt = [], []
    for i in range(10_040):
        row = {"id": f"m{i:05d}", "instruction": _words(rng, EN, 3, 12), "response": _words(rng, EN, 5, 40)}
        en.append(row)
        if i < 10_000:
            tgt.append(row | {"instruction_eu": _words(rng, EU, 3, 12), "response_eu": _words(rng, EU, 5, 40)})
    for i in range(10):
        tgt.append({"id": f"t{i:05d}", "instruction": "x", "response": "y",
                    "instruction_eu": _words(rng, EU, 3, 8), "response_eu": _words(rng, EU, 3, 8)})
    rng.shuffle(tgt)  # order differs between the two languages
    corpus = [{"id": f"c{i:05d}", "text": _words(rng, EU, 20, 300)} for i in range(1500)]
    return {"en": write_jsonl(d / "en.jsonl", en), "tgt": write_jsonl(d / "tgt.jsonl", tgt),
            "corpus": write_jsonl(d / "corpus.jsonl", corpus), "dir": str(d)}


def recipe(**kw) -> mix_recipe.MixRecipe:
    return mix_recipe.MixRecipe.model_validate({"rows_per_unit": 2000, "tokenizer": "none", **kw})


def build(rec: mix_recipe.MixRecipe, out: Path, tok=None, **kw):
    stage = mix.MixStage(rec, tok, "test-bpe" if tok is not None else None)
    rep = run_stage(stage, out, progress=False, **kw)
    return rep, ShardDir.open(out)


def swap_recipe(data, share: float, unpaired: str = "drop") -> mix_recipe.MixRecipe:
    return recipe(target_lang="eu", seed=3, sources=[{"name": "instr", "parallel": {"en": data["en"], "eu": data["tgt"]},
                                                      "target_share": share, "unpaired": unpaired}])


# ------------------------------------------------------------------------------------------ swap
def test_parallel_swap_shares_same_ids_nested(data, tmp_path):
    target_ids = {}
    id_sets = {}
    for share in (0.0, 0.2, 0.8, 1.0):
        rep, sd = build(swap_recipe(data, share), tmp_path / f"s{share}")
        t = sd.read_all()
        m = sd.manifest()
        assert m["totals"]["balanced"] and m["complete"]
        ids = t.column("id").to_pylist()
        assert len(ids) == len(set(ids)) == 10_000  # each paired id once, unpaired dropped
        langs = dict(zip(ids, t.column("language").to_pylist()))
        tgt = {i for i, lang in langs.items() if lang == "eu"}
        assert abs(len(tgt) / len(ids) - share) <= 0.005
        # the target rows carry the target text (instruction_eu moved into instruction), English rows English
        rows = {r["id"]: r for r in t.to_pylist()}
        some = sorted(tgt)[:5] + sorted(set(ids) - tgt)[:5]
        for i in some:
            vocab = EU if i in tgt else EN
            assert set(rows[i]["instruction"].split()) <= set(vocab)
        assert "instruction_eu" not in t.column_names
        rej = sd.read_all(rejected=True)
        reasons = {}
        for r in rej.select(["id", "reject_reason"]).to_pylist():
            reasons[r["reject_reason"]] = reasons.get(r["reject_reason"], 0) + 1
        assert reasons.get("swapped", 0) == 10_000  # the other version of every selected id
        assert reasons.get("unpaired", 0) == 50
        plan = m["mix"]["sources"][0]["parallel"]
        assert plan["only_en"] == 40 and plan["only_eu"] == 10 and plan["paired_ids"] == 10_000
        target_ids[share], id_sets[share] = tgt, set(ids)
    assert id_sets[0.0] == id_sets[0.2] == id_sets[0.8] == id_sets[1.0]
    assert target_ids[0.0] <= target_ids[0.2] <= target_ids[0.8] <= target_ids[1.0]
    assert len(target_ids[0.0]) == 0 and len(target_ids[1.0]) == 10_000


def test_swap_keeps_unpaired_in_their_only_language(data, tmp_path):
    _, sd = build(swap_recipe(data, 0.2, unpaired="keep"), tmp_path / "keep")
    t = sd.read_all()
    langs = dict(zip(t.column("id").to_pylist(), t.column("language").to_pylist()))
    assert len(langs) == t.num_rows == 10_050
    assert all(langs[f"m{i:05d}"] == "en" for i in range(10_000, 10_040))
    assert all(langs[f"t{i:05d}"] == "eu" for i in range(10))
    assert "unpaired" not in sd.manifest()["totals"]["rejected_by_reason"]


def test_swap_is_deterministic_in_seed_and_id(data, tmp_path):
    a = build(swap_recipe(data, 0.2), tmp_path / "a")[1].read_all()
    b = build(swap_recipe(data, 0.2), tmp_path / "b", workers=2)[1].read_all()
    assert a.equals(b)
    other = swap_recipe(data, 0.2).model_copy(update={"seed": 4})
    c = build(other, tmp_path / "c")[1].read_all()
    tgt = lambda t: {i for i, lang in zip(t.column("id").to_pylist(), t.column("language").to_pylist()) if lang == "eu"}  # noqa: E731
    assert tgt(a) != tgt(c) and len(tgt(a)) == len(tgt(c))


def test_parallel_source_without_ids_pairs_by_content_ids(tmp_path):
    """Id-less inputs (CC3M, PixMo-AMA) get ids from their content, so a translation that kept the
    source columns pairs with its source; a second row with the same id is a rejected row."""
    rows = [{"image_url": f"https://x.org/{i}.jpg", "caption": f"dog number {i}"} for i in range(10)]
    en = write_jsonl(tmp_path / "en.jsonl", rows + [rows[0]])  # the same row twice: ids h.. and h..~2
    eu = write_jsonl(tmp_path / "eu.jsonl", [dict(r, caption_eu=f"{i}. txakurra") for i, r in enumerate(rows)][::-1])
    rec = recipe(target_lang="eu", sources=[{"name": "x", "parallel": {"en": en, "eu": eu}, "target_share": 0.5}])
    _, sd = build(rec, tmp_path / "o")
    kept = sd.read_all().to_pylist()
    assert len(kept) == 10 and len({r["id"] for r in kept}) == 10
    assert sum(r["language"] == "eu" for r in kept) == 5
    assert all(r["caption"].endswith("txakurra") == (r["language"] == "eu") for r in kept)
    assert sd.manifest()["totals"]["rejected_by_reason"] == {"swapped": 10, "unpaired": 1}


# ------------------------------------------------------------------------------------------ budgets
def test_token_weights_realized_within_one_percent(data, tmp_path):
    tok = make_tokenizer(CHATML)
    rec = recipe(tokenizer="test", total={"tokens": 400_000}, sources=[
        {"name": "corpus", "input": data["corpus"], "language": "eu", "weight": 0.7},
        {"name": "instr", "input": data["en"], "language": "en", "weight": 0.3}])
    _, sd = build(rec, tmp_path / "tok", tok=tok)
    m = sd.manifest()
    st = m["stats"]
    total = st["tokens:corpus"] + st["tokens:instr"]
    assert abs(st["tokens:corpus"] / total - 0.7) < 0.01 and abs(st["tokens:instr"] / total - 0.3) < 0.01
    assert abs(total - 400_000) / 400_000 < 0.01
    # the token counts are those pipe pack will see
    from lrpipe.tokenization import conversation_of, tokenize_conversation, tokenize_document

    t = sd.read_all()
    rows = t.to_pylist()
    assert sum(len(tokenize_document(tok, x["text"])) for x in rows if x["source"] == "corpus") == st["tokens:corpus"]
    assert sum(len(tokenize_conversation(tok, conversation_of(x))[0]) for x in rows
               if x["source"] == "instr") == st["tokens:instr"]
    # corpus upsampled (0.7 × 400k tokens is more than the corpus holds): copies are numbered
    pool = m["mix"]["sources"][0]["pool_tokens"]
    if pool < 280_000:
        assert t.filter(pa.compute.equal(t.column("source"), "corpus")).column("copy").to_pylist().count(1) > 0


def test_rows_epochs_and_downsampling(data, tmp_path):
    rec = recipe(seed=1, sources=[
        {"name": "corpus", "input": data["corpus"], "language": "eu", "epochs": 2.5},
        {"name": "instr", "input": data["en"], "language": "en", "rows": 1234}])
    _, sd = build(rec, tmp_path / "rows")
    t = sd.read_all()
    by = {}
    for s, c in zip(t.column("source").to_pylist(), t.column("copy").to_pylist()):
        by.setdefault(s, []).append(c)
    assert len(by["corpus"]) == 3750 and max(by["corpus"]) == 2 and by["corpus"].count(2) == 750
    assert len(by["instr"]) == 1234 and max(by["instr"]) == 0
    m = sd.manifest()
    assert m["totals"]["balanced"]
    assert m["totals"]["rejected_by_reason"] == {"not_sampled": 10_040 - 1234}
    # one table for datasets: corpus rows have null instruction, instruction rows null text
    assert {"text", "instruction", "response", "id", "source", "language", "copy"} <= set(t.column_names)


def test_same_output_with_one_or_three_ranks(data, tmp_path):
    rec = recipe(target_lang="eu", seed=5, sources=[
        {"name": "instr", "parallel": {"en": data["en"], "eu": data["tgt"]}, "target_share": 0.8, "rows": 5000},
        {"name": "corpus", "input": data["corpus"], "language": "eu", "epochs": 1.5}])
    _, one = build(rec, tmp_path / "w1")
    errors = []

    def rank(r: int) -> None:
        try:
            run_stage(mix.MixStage(rec, None, None), tmp_path / "w3", rank=r, world_size=3, progress=False)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    three = ShardDir.open(tmp_path / "w3")
    assert one.read_all().equals(three.read_all())
    assert three.manifest()["complete"]


def test_recipe_errors_name_the_file(tmp_path, data):
    bad = {"sources": [{"name": "a", "input": data["en"], "language": "en", "weight": 1}]}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(InputError, match="bad.yaml.*total"):
        mix_recipe.load_mix_recipe(p)
    p.write_text(yaml.safe_dump({"sources": [{"name": "a", "parallel": {"en": "x", "eu": "y"}}]}))
    with pytest.raises(InputError, match="target_lang"):
        mix_recipe.load_mix_recipe(p)
    p.write_text(yaml.safe_dump({"sources": [{"name": "a", "input": "x", "language": "en", "rows": 1, "epochs": 2}]}))
    with pytest.raises(InputError, match="at most one"):
        mix_recipe.load_mix_recipe(p)
    p.write_text(yaml.safe_dump({"sources": [{"name": "a", "input": "x", "language": "en", "wieght": 1}]}))
    with pytest.raises(InputError, match="wieght"):
        mix_recipe.load_mix_recipe(p)


def test_multiplicity_is_closest_prefix():
    import numpy as np

    sizes = np.array([10, 20, 30, 40], np.float64)
    order = np.array([3, 0, 2, 1])
    assert mix.multiplicity(order, sizes, 100).tolist() == [1, 1, 1, 1]
    assert mix.multiplicity(order, sizes, 145).tolist() == [2, 1, 1, 2]  # rest 45: 40+10=50 as near as 40


# ------------------------------------------------------------------------------------------ CLI, grid, pack
def test_cli_recipe_show_and_grid(data, tmp_path):
    from typer.testing import CliRunner

    from lrpipe.cli import app

    r = tmp_path / "mix.yaml"
    r.write_text(yaml.safe_dump({"name": "m", "target_lang": "eu", "seed": 2, "tokenizer": "none", "sources": [
        {"name": "instr", "parallel": {"en": data["en"], "eu": data["tgt"]}, "rows": 3000},
        {"name": "corpus", "input": data["corpus"], "language": "eu"}]}))
    cli = CliRunner()
    res = cli.invoke(app, ["mix", str(r), "--out", str(tmp_path / "m20"), "--target-share", "0.2", "--workers", "1",
                           "--no-progress"])
    assert res.exit_code == 0, res.output
    show = cli.invoke(app, ["show", str(tmp_path / "m20")])
    assert "swap: target share 0.2000" in show.output and "corpus" in show.output, show.output
    grid = tmp_path / "grid"
    res = cli.invoke(app, ["mix", "grid", "--corpus", data["corpus"], "--instructions-en", data["en"],
                           "--instructions-tgt", data["tgt"], "--target-lang", "eu", "--instruction-rows", "500",
                           "--tokenizer", "none", "--build", "--out", str(grid), "--workers", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    names = ["I_EN", "I_EU", "I_EN+EU", "C_EU", "C_EU_I_EN", "C_EU_I_EU", "C_EU_I_EN+EU"]
    assert sorted(p.stem for p in (grid / "recipes").glob("*.yaml")) == sorted(names)
    table = (grid / "GRID.md").read_text()
    assert "BAS_EU C_EU I_EN+EU" in table and "INS_EN C_EU" in table
    both = ShardDir.open(grid / "I_EN+EU").read_all()
    by_lang = {}
    for i, lang in zip(both.column("id").to_pylist(), both.column("language").to_pylist()):
        by_lang.setdefault(lang, set()).add(i)
    assert len(by_lang["en"]) == len(by_lang["eu"]) == 500 and by_lang["en"] == by_lang["eu"]
    eu_rows = [x for x in both.to_pylist() if x["language"] == "eu"]
    assert all(set(x["instruction"].split()) <= set(EU) for x in eu_rows)
    assert set(ShardDir.open(grid / "C_EU").read_all().column("source").to_pylist()) == {"corpus_eu"}
    assert len(ShardDir.open(grid / "C_EU_I_EN+EU").read_all()) == 1500 + 1000
    # a grid needs its three inputs
    res = cli.invoke(app, ["mix", "grid", "--corpus", data["corpus"], "--out", str(grid)])
    assert res.exit_code != 0 and "instructions" in res.output


def test_pack_reads_a_mixture_and_counts_agree(data, tmp_path):
    from lrpipe.pipelines.pack import PackStage
    from lrpipe.sources import ShardSource

    tok = make_tokenizer(CHATML)
    rec = recipe(tokenizer="test", target_lang="eu", seed=9, total={"tokens": 150_000}, sources=[
        {"name": "corpus", "input": data["corpus"], "language": "eu", "weight": 0.5},
        {"name": "instr", "parallel": {"en": data["en"], "eu": data["tgt"]}, "target_share": 0.5, "weight": 0.5}])
    _, sd = build(rec, tmp_path / "mix", tok=tok)
    run_stage(PackStage(ShardSource(tmp_path / "mix"), tok, "test-bpe", seq_len=512), tmp_path / "packed",
              progress=False)
    packed = ShardDir.open(tmp_path / "packed").manifest()
    assert packed["totals"]["balanced"] and packed["totals"]["rows_rejected"] == 0
    assert packed["stats"]["tokens_in"] == sd.manifest()["mix"]["tokens"]


def test_crash_then_rerun_gives_the_same_rows(data, tmp_path, monkeypatch):
    rec = swap_recipe(data, 0.8)
    _, ref = build(rec, tmp_path / "ref")
    calls = {"n": 0}
    real = mix.MixStage.process

    def flaky(self, unit):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("killed")
        return real(self, unit)

    monkeypatch.setattr(mix.MixStage, "process", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        build(rec, tmp_path / "crash")
    assert not ShardDir.open(tmp_path / "crash").manifest()["complete"]
    monkeypatch.setattr(mix.MixStage, "process", real)
    _, again = build(rec, tmp_path / "crash")
    assert again.manifest()["complete"] and again.read_all().equals(ref.read_all())


def test_shipped_recipes_load_by_name():
    """The README's mixtures ship with pipe (pipelines/recipes/mix/) and are found by name."""
    from lrpipe.pipelines.mix_recipe import RECIPES, load_mix_recipe

    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    assert {"captions-80-20", "pixmo-ama", "mm-stage2"} <= set(names)
    for n in names:
        r = load_mix_recipe(n)
        assert r.name == n and r.sources
