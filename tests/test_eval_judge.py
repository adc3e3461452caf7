"""pipe judge: both orders, tie when they disagree, retries, accounting; end to end on the embedded
model with vLLM; the battles feed pipe arena."""

from __future__ import annotations

import json

import pytest

from lrpipe.engines.base import WAIT, Engine, GenResult
from lrpipe.eval import arena
from lrpipe.eval.judge import JudgeStage, load_criteria, read_answers
from lrpipe.runner import run_stage
from lrpipe.shards import ShardDir

QUESTIONS = [{"id": f"q{i}", "question": f"Zer ikusten da {i}. irudian?"} for i in range(7)]


def answers_files(tmp_path):
    paths = []
    for m, text in (("good", "Mendi bat eta ibai bat ikusten dira."), ("bad", "I see a mountain."),
                    ("mid", "Mendia.")):
        p = tmp_path / f"{m}.jsonl"
        rows = [{"id": q["id"], "answer": text} for q in QUESTIONS if not (m == "mid" and q["id"] == "q6")]
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(p)
    return paths


class PositionalJudge(Engine):
    """Prefers the model named 'good' on every criterion; on 'quality' it always says A (a position
    bias, which both orders must cancel into a tie); the first attempt of pair 0 is cut off."""

    name = "scripted"

    def __init__(self, model, tokenizer):
        super().__init__(model)
        self._tok = tokenizer
        self.seen = []

    @property
    def tokenizer(self):
        return self._tok

    def generate(self, requests):
        for q in requests:
            if q is WAIT:
                continue
            k, order, attempt = q.key[1]
            self.seen.append((q.key[0], k, order, attempt))
            text = self._tok.decode(q.prompt)
            a_part = text.split("[Answer A]")[1].split("[Answer B]")[0]
            good_is_a = "Mendi bat eta ibai" in a_part
            pick = "A" if good_is_a else "B" if "Mendi bat eta ibai" in text else "tie"
            out = {"relevance_language": pick, "quality": "A", "language_proficiency": pick, "overall": pick}
            if k == 0 and attempt == 0 and order == 0 and q.key[0] == 0:
                yield GenResult(key=q.key, text='{"relevance_language": "A", "qua', finish_reason="length",
                                prompt_tokens=len(q.prompt), output_tokens=10)
                continue
            yield GenResult(key=q.key, text=json.dumps(out), finish_reason="stop", prompt_tokens=len(q.prompt),
                            output_tokens=10)

    def score(self, requests):  # pragma: no cover
        raise NotImplementedError


def test_both_orders_ties_retries_and_accounting(tmp_path, tokenizer):
    eng = PositionalJudge("scripted", tokenizer)
    stage = JudgeStage(QUESTIONS, read_answers(answers_files(tmp_path)), eng, "scripted",
                       load_criteria(None, "Basque"), "eu", rows_per_unit=3)
    rep = run_stage(stage, tmp_path / "battles", engine=eng, progress=False)
    sd = ShardDir.open(tmp_path / "battles")
    m = sd.manifest()
    assert m["totals"]["balanced"] and m["complete"]
    pairs = 7 * 3  # 3 models -> 3 pairs per question
    assert m["totals"]["rows_in"] == pairs and m["totals"]["rejected_by_reason"] == {"missing_answer": 2}
    rows = sd.read_all().to_pylist()
    assert rep.rows_out == len(rows) == (pairs - 2) * 4  # three criteria and the overall verdict
    for r in rows:
        models = {r["model_a"], r["model_b"]}
        if r["criterion"] == "quality":
            assert r["winner"] == "tie" and r["verdict_ab"] == r["verdict_ba"] == "A"  # position bias cancelled
        elif "good" in models:
            assert r["winner"] == ("model_a" if r["model_a"] == "good" else "model_b")
        else:
            assert r["winner"] == "tie"
    # both orders of every judged pair were asked; the cut verdict was retried once
    asked = {(u, k, o) for u, k, o, _ in eng.seen}
    assert all((u, k, 1 - o) in asked for u, k, o in asked)
    assert (0, 0, 0, 1) in eng.seen
    ratings = {r.model: r for r in arena.rate(arena.read_battles([tmp_path / "battles"]), rounds=5)}
    assert ratings["good"].score > max(ratings["bad"].score, ratings["mid"].score)


def test_criteria_file_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- {name: x}\n")
    with pytest.raises(Exception, match="c.yaml.*row 0"):
        load_criteria(p, "Basque")
    crit = load_criteria(None, "Basque")
    assert [c["name"] for c in crit] == ["relevance_language", "quality", "language_proficiency"]
    assert "Basque" in crit[0]["description"]


@pytest.mark.slow
@pytest.mark.vllm
def test_judge_end_to_end_on_the_embedded_model(tmp_path, vllm_engine):
    stage = JudgeStage(QUESTIONS[:4], read_answers(answers_files(tmp_path)), vllm_engine, "smollm2",
                       load_criteria(None, "Basque"), "eu", rows_per_unit=2)
    run_stage(stage, tmp_path / "b", engine=vllm_engine, progress=False)
    sd = ShardDir.open(tmp_path / "b")
    rows = sd.read_all().to_pylist()
    assert sd.manifest()["totals"]["balanced"] and rows
    assert all(r["verdict_ab"] in ("A", "B", "tie") and r["verdict_ba"] in ("A", "B", "tie") for r in rows)
    assert all(r["winner"] in ("model_a", "model_b", "tie") for r in rows)
    assert {r["criterion"] for r in rows} == {"relevance_language", "quality", "language_proficiency", "overall"}


def test_an_mllm_judge_sees_the_image(tmp_path, tokenizer):
    """With --image-field the request carries the question's image and the prompt has the processor's
    image placeholder; a text-only engine is refused before anything runs."""
    import io

    from PIL import Image

    from lrpipe.errors import InputError

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    qs = [dict(q, image={"bytes": buf.getvalue(), "path": None}) for q in QUESTIONS[:2]]

    class Processor:
        def apply_chat_template(self, msgs, add_generation_prompt):
            parts = msgs[0]["content"]
            return "".join("<image>" if p["type"] == "image" else p["text"] for p in parts) + "\nASSISTANT:"

    class ImageJudge(PositionalJudge):
        supports_images = True

        def generate(self, requests):
            for q in requests:
                if q is WAIT:
                    continue
                self.seen.append(q)
                yield GenResult(key=q.key, text=json.dumps({"relevance_language": "A", "quality": "B",
                                                            "language_proficiency": "tie", "overall": "A"}),
                                finish_reason="stop", prompt_tokens=1, output_tokens=1)

    eng = ImageJudge("mllm", tokenizer)
    stage = JudgeStage(qs, read_answers(answers_files(tmp_path)), eng, "mllm", load_criteria(None, "Basque"), "eu",
                       image_field="image", processor=Processor())
    run_stage(stage, tmp_path / "battles", engine=eng, progress=False)
    assert len(eng.seen) == 2 * 3 * 2  # questions x pairs x orders
    for q in eng.seen:
        assert q.prompt.startswith("<image>") and "[Answer A]" in q.prompt
        assert len(q.images) == 1 and q.images[0].getpixel((0, 0)) == (200, 10, 10)
    with pytest.raises(InputError, match="needs an engine that takes them"):
        JudgeStage(qs, read_answers(answers_files(tmp_path)), PositionalJudge("t", tokenizer), "t",
                   load_criteria(None, "Basque"), "eu", image_field="image", processor=Processor())
