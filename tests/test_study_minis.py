"""The studies in miniature, run as a user runs them (`pipe study run mini-eu --out DIR`), with what each
hop means checked: the target-language packed documents are the translations, every trained cell's
model loads, every evaluation scored every task it lists, the judge and the arena rank every cell, the
report's analyses have a row per model; a second run does nothing. And a run killed with -9 in a
generation step and in a training step finishes with nothing lost or duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lrpipe.shards import ShardDir

from .conftest import PIPE
from .resume_checks import all_rows, committed
from .test_study_chain import packed_documents

pytestmark = pytest.mark.slow


def run(args: list[str], env: dict[str, str], timeout: int = 2400) -> str:
    r = subprocess.run(PIPE + args, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, f"pipe {' '.join(args)}\n{r.stdout[-3000:]}\n{r.stderr[-4000:]}"
    return r.stdout


def rows(path: Path, rejected: bool = False) -> list[dict]:
    t = ShardDir.open(path).read_all(rejected)
    return t.to_pylist() if t.num_rows else []


def complete(path: Path) -> dict:
    m = ShardDir.open(path).manifest()
    assert m["complete"] and m["totals"]["balanced"], (path, m["totals"])
    return m["totals"]


@pytest.fixture(scope="module")
def mini_eu(tmp_path_factory, env_module):
    out = tmp_path_factory.mktemp("mini-eu") / "study"
    t0 = time.time()
    log = run(["study", "run", "mini-eu", "--out", str(out)], env_module)
    return out, log, time.time() - t0


@pytest.fixture(scope="module")
def env_module():
    return dict(os.environ, PYTHONUNBUFFERED="1")


def test_mini_eu_every_hop_means_what_it_should(mini_eu, env_module, tokenizer):
    from lrpipe.tokenization import tokenize_conversation

    out, log, seconds = mini_eu
    print(f"mini-eu: {seconds:.0f} s")
    # data: Magpie → translation → the grid's mixtures, every row accounted for
    en = {r["id"]: r for r in rows(out / "magpie" / "filtered")}
    assert en and complete(out / "magpie" / "filtered")
    tr = {r["id"]: r for r in rows(out / "translate")}
    tr_rej = {r["id"] for r in rows(out / "translate", rejected=True)}
    assert set(tr) | tr_rej == set(en) and tr, "every instruction translated or rejected with a reason"
    corpus = rows(out / "corpus_checked")
    assert ShardDir.open(out / "corpus_checked").header()["config"]["filters"][1]["detector"] == "lingua"
    assert len(corpus) >= 15, "the Basque corpus is Basque"
    mixes = {p.name: p for p in (out / "mixes").iterdir() if ShardDir.is_shard_dir(p)}
    assert set(mixes) == {"I_EN", "I_EU", "I_EN+EU", "C_EU", "C_EU_I_EN", "C_EU_I_EU", "C_EU_I_EN+EU"}
    full = rows(mixes["C_EU_I_EN+EU"])
    assert {r["source"] for r in full} == {"corpus_eu", "instructions_en", "instructions_eu"}
    assert sum(r["source"] == "corpus_eu" for r in full) == len(corpus)
    # training data: an I_EU cell packs the translations, token for token
    for cell in ("INS_EN_I_EU", "BAS_EN_I_EU"):
        docs = packed_documents(out / cell / "pack")
        # every translation is packed, or set aside because it does not fit a row (what the embedded model
        # wrote decides which: only the accounting is asserted, not the lengths)
        too_long = {r["id"]: r for r in rows(out / cell / "pack", rejected=True)}
        assert all(r["reject_reason"] == "too_long" and "> seq_len 512" in r["reject_detail"]
                   for r in too_long.values()), cell
        assert sorted([d for d, _ in docs] + list(too_long)) == sorted(tr) and docs, cell
        tok = tokenizer if cell.startswith("INS") else __import__("transformers").AutoTokenizer.from_pretrained(
            out / "tiny_base")
        for rid, ids in docs:
            assert ids == tokenize_conversation(tok, tr[rid]["conversation_eu"])[0], (cell, rid)
    cells = ["INS_EN_I_EU", "INS_EN_C_EU_I_EN+EU", "BAS_EN_I_EU", "BAS_EN_C_EU_I_EN+EU"]
    from transformers import AutoModelForCausalLM

    for cell in cells:
        final = out / cell / "train" / "final"
        assert AutoModelForCausalLM.from_pretrained(final) is not None, cell
        steps = [json.loads(x) for x in (out / cell / "train" / "log.jsonl").read_text().splitlines()]
        assert [x["step"] for x in steps if "loss" in x] == [1, 2]
        res = json.loads((out / cell / "eval" / "results.json").read_text())
        assert {r["task"]: r["score"] is not None for r in res["rows"]} == {"bl2mp": True, "mmlu_eu": True}, cell
        answers = rows(out / cell / "answer" / cell)
        assert len(answers) == 3 and {a["model"] for a in answers} == {cell}
    # the judge compared every pair of the five models, both orders; the arena ranks every one
    models = set(cells) | {"SmolLM2-135M-Instruct"}
    battles = rows(out / "judge")
    assert {frozenset((b["model_a"], b["model_b"])) for b in battles} <= {frozenset((a, b)) for a in models
                                                                           for b in models if a != b}
    judged = complete(out / "judge")
    assert judged["rows_in"] == 3 * 10  # 3 prompts x C(5, 2) pairs
    ratings = json.loads((out / "arena" / "ratings.json").read_text())
    assert {r["model"] for r in ratings["groups"]["all"]["ratings"]} == models
    # the report: Figure 3 rows for every model, Spearman, relative changes, compute per run
    rep = json.loads((out / "report" / "report.json").read_text())["analyses"]
    grouping = {r["model"]: r for r in rep["grouping"]["rows"]}
    assert set(cells) <= set(grouping) and grouping["BAS_EN_I_EU"]["backbone"] == "tiny_base"
    assert grouping["INS_EN_C_EU_I_EN+EU"]["data"] == "C_EU I_EN+EU" and grouping["INS_EN_I_EU"]["data"] == "I_EU"
    assert rep["correlations"] and {c["dimension"] for c in rep["correlations"]} >= {"overall"}
    assert {c["model"] for c in rep["relative_changes"]} == set(cells)
    assert {r["run"] for r in rep["compute"]["runs"]} == set(cells)
    # pipe report on the study: the DAG of every step, each cell's curve, scores, the arena, in Chromium
    from tests.browser import assert_renders, open_page, report, screenshot_path

    facts = open_page(report(out, out.parent / "mini-eu.html", env_module), screenshot_path(out.parent, "study"))
    assert_renders(facts, min_charts=10)
    names = [c["name"] for c in facts.charts]
    assert names.count("dag") == 1 and names.count("training") == len(cells) and "arena" in names
    assert f"{len(list((out / '.study' / 'steps').glob('*.json')))} of " in facts.text  # steps complete
    for cell in cells:
        res = json.loads((out / cell / "eval" / "results.json").read_text())
        score = next(r["score"] for r in res["rows"] if r["task"] == "bl2mp")
        line = next(x for x in facts.text.splitlines() if x.startswith("eu\tbl2mp\t"))
        assert f"{100 * score:.2f}" in line.split("\t")
    # a second run does nothing, and says so
    again = run(["study", "run", "mini-eu", "--out", str(out)], env_module)
    assert "nothing to do" in again


def test_mini_mm_eu(tmp_path_factory, env_module):
    out = tmp_path_factory.mktemp("mini-mm-eu") / "study"
    t0 = time.time()
    run(["study", "run", "mini-mm-eu", "--out", str(out)], env_module)
    print(f"mini-mm-eu: {time.time() - t0:.0f} s")
    # stage-1 captions: MT of every caption, 80:20 Basque:English of the same ids
    caps = rows(out / "captions_eu")
    assert len(caps) == 12 and all(r["caption_eu"] for r in caps)
    mix = rows(out / "captions_mix")
    assert sorted(r["id"] for r in mix) == sorted(r["id"] for r in caps)
    assert sum(r["language"] == "eu" for r in mix) == round(0.8 * 12)
    # stage-2 mixtures: PixMo-AMA's share follows the cell, the text rows stay at 80:20
    for cell, share in (("latxa_20", 0.2), ("llama_80", 0.8)):
        m = rows(out / cell / "mix")
        ama = [r for r in m if r["source"] == "pixmo-ama"]
        text = [r for r in m if r["source"] == "text"]
        assert sum(r["language"] == "eu" for r in ama) == round(share * len(ama)) and ama
        paired = len(rows(out / "text_eu"))  # the translated rows pair with their sources; 6 are drawn
        assert len(text) == min(6, paired) and sum(r["language"] == "eu" for r in text) == round(0.8 * len(text))
        assert all(r["image"] is not None for r in ama) and all(r["image"] is None for r in text)
    from transformers import AutoModelForImageTextToText

    cells = ["latxa_20", "latxa_80", "llama_20", "llama_80"]
    for cell in cells:
        assert AutoModelForImageTextToText.from_pretrained(out / cell / "train" / "final") is not None
        res = json.loads((out / cell / "eval" / "results.json").read_text())
        got = {(r["task"], lang) for r in res["results"] for lang in r["metrics"]}
        assert got == {(t, lang) for t in ("a-okvqa", "vqav2") for lang in ("en", "eu")}, cell
        answers = rows(out / cell / "answer" / cell)
        assert len(answers) == 4 and all(a["instruction_eu"] for a in answers)
    ratings = json.loads((out / "arena" / "ratings.json").read_text())
    assert {r["model"] for r in ratings["groups"]["all"]["ratings"]} == set(cells)
    assert ratings["win_tie_loss"]
    assert "nothing to do" in run(["study", "run", "mini-mm-eu", "--out", str(out)], env_module)


def test_mini_gl_is_files_only(tmp_path_factory, env_module):
    out = tmp_path_factory.mktemp("mini-gl") / "study"
    t0 = time.time()
    run(["study", "run", "mini-gl", "--out", str(out)], env_module)
    print(f"mini-gl: {time.time() - t0:.0f} s")
    hdr = ShardDir.open(out / "translate").header()
    assert hdr["config"]["recipe"]["target_lang"] == "gl"
    lang = ShardDir.open(out / "corpus_checked").header()["config"]["filters"][1]
    assert lang["language"] == "gl" and lang["detector"] == "fasttext-lid176"
    # fastText's compact lid.176 reads 8 of these 20 short Galician sentences as Portuguese or Spanish (it
    # is deterministic: the same 12 everywhere); what must hold is that most of the corpus passes
    kept = rows(out / "corpus_checked")
    assert len(kept) >= 10, "the Galician corpus is Galician"
    assert all(r["reject_detail"].startswith("text: detected") for r in rows(out / "corpus_checked", rejected=True))
    assert {p.name for p in (out / "mixes").iterdir() if ShardDir.is_shard_dir(p)} >= {"I_GL", "C_GL_I_EN+GL"}
    for cell in ("INS_EN_I_GL", "BAS_EN_C_GL_I_EN+GL"):
        res = json.loads((out / cell / "eval" / "results.json").read_text())
        assert [(r["task"], r["score"] is not None) for r in res["rows"]] == [("mmlu_gl_mini", True)]
    ratings = json.loads((out / "arena" / "ratings.json").read_text())
    assert len(ratings["groups"]["all"]["ratings"]) == 5
    assert "nothing to do" in run(["study", "run", "mini-gl", "--out", str(out)], env_module)


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            return
        assert proc.poll() is None, "the study ended before it could be killed"
        time.sleep(0.2)
    raise AssertionError("timed out waiting to kill")


def test_kill_9_in_a_generation_step_and_in_a_training_step(tmp_path, env_module):
    """`pipe study run` killed with -9 while it translates, then while it trains; the same command then
    finishes: every id once, the units committed before the kill untouched, the training's curve that
    of an uninterrupted run on the same data. (Sampled text is not compared with another run: vLLM forms
    its batches by timing, and a batch of another size samples other text; README: Reproducible.)"""
    out = tmp_path / "study"
    args = PIPE + ["study", "run", "mini-eu", "--out", str(out), "--until", "BAS_EN_I_EU/train"]

    def start() -> subprocess.Popen:
        return subprocess.Popen(args, env=env_module, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    proc = start()
    units = out / "translate" / "units"
    _wait_for(proc, lambda: units.exists() and len(list(units.glob("*.json"))) >= 1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not ShardDir.open(out / "translate").manifest()["complete"]
    before = committed(out / "translate")
    proc = start()
    log = out / "BAS_EN_I_EU" / "train" / "log.jsonl"
    _wait_for(proc, lambda: log.exists() and '"event": "start"' in log.read_text())
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "BAS_EN_I_EU" / "train" / "final").exists()
    time.sleep(1)
    run(["study", "run", "mini-eu", "--out", str(out), "--until", "BAS_EN_I_EU/train"], env_module)
    # generation: exactly once, committed units untouched; the same ids as the uninterrupted study
    now = committed(out / "translate")
    assert all(now[i] == sums for i, sums in before.items()), "a committed unit was rewritten"
    ids = [r["id"] for r in all_rows(ShardDir.open(out / "translate"))]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(r["id"] for r in rows(out / "magpie" / "filtered"))
    assert ShardDir.open(out / "translate").manifest()["totals"]["balanced"]
    # training: the rerun trains from the start (the kill came before the first checkpoint) on the same
    # data; its curve is an uninterrupted run's on that data
    cfg = json.loads((out / "BAS_EN_I_EU" / "train" / "config.json").read_text())
    fresh = tmp_path / "fresh"
    subprocess.run(PIPE[:1] + ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                               "lrpipe.cli", "train", "text", "--model", cfg["model"], "--data", cfg["data"],
                               "--out", str(fresh), "--max-steps", "2", "--global-batch", "2", "--micro-batch", "1",
                               "--dtype", "fp32", "--lr", "1e-4", "--save-every", "1000",
                               "--no-gradient-checkpointing"], check=True, env=env_module, capture_output=True,
                   timeout=900)

    def curve(run_dir: Path) -> dict[int, float]:
        recs = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines() if x.strip()]
        return {r["step"]: r["loss"] for r in recs if "loss" in r}

    got, want = curve(out / "BAS_EN_I_EU" / "train"), curve(fresh)
    assert sorted(got) == [1, 2] and all(abs(got[s] - want[s]) < 1e-5 for s in want), (got, want)
    assert (out / "BAS_EN_I_EU" / "train" / "final" / "config.json").exists()
