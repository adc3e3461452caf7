"""pipe eval mm on a tiny LLaVA (model and processor built from configs in the test) and a small
local EN/EU parallel fixture in the layout pipe translate --sample writes."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pytest

from lrpipe.eval import mm, mm_data
from lrpipe.shards import ShardDir, UnitSpec
from tests.tiny_models import tiny_llava_dir

torch = pytest.importorskip("torch")

@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> str:
    return tiny_llava_dir(tmp_path_factory.mktemp("llava"))


def _png(seed: int) -> bytes:
    from PIL import Image

    rng = __import__("random").Random(seed)
    im = Image.new("RGB", (40, 40), tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _write(d, rows):
    sd = ShardDir.create(d, stage="translate", config={}, plan=[UnitSpec(0, "u0")], inputs=[], provenance={})
    sd.write_unit(UnitSpec(0, "u0"), pa.Table.from_pylist(rows), None, len(rows))
    sd.refresh_manifest()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("mmdata")
    img = lambda i: {"bytes": _png(i), "path": None}  # noqa: E731
    _write(d / "vqav2" / "translated", [
        {"question_id": f"v{i}", "image": img(i), "question": "What color is it?",
         "answers": [{"answer": "red", "answer_id": k} for k in range(10)], "question_eu": "Zer kolore da?",
         "answers_eu": ["gorria"] * 10} for i in range(5)])
    _write(d / "a-okvqa" / "translated", [
        {"question_id": f"a{i}", "image": img(10 + i), "question": "What is it?", "choices": ["cat", "dog", "car", "sun"],
         "correct_choice_idx": i % 4, "question_eu": "Zer da?", "choices_eu": ["katua", "txakurra", "autoa", "eguzkia"]}
        for i in range(6)])
    _write(d / "pixmo-capqa" / "translated", [
        {"id": f"p{i}", "image": img(20 + i), "question": "Is it red?", "answer": ["Yes", "No", "maybe"][i % 3],
         "question_eu": "Gorria da?", "answer_eu": ["Bai", "Ez", "agian"][i % 3]} for i in range(6)])
    return d


def test_tasks_load_and_instances_pair_languages(data):
    t = mm_data.load_task("a-okvqa")
    en, eu = mm_data.instances(t, data, "en"), mm_data.instances(t, data, "eu")
    assert [x["id"] for x in en] == [x["id"] for x in eu]
    assert en[1]["options"] == ["cat", "dog", "car", "sun"] and eu[1]["options"][1] == "txakurra"
    assert en[1]["gold"] == eu[1]["gold"] == 1
    p = mm_data.load_task("pixmo-capqa")
    assert [x["gold"] for x in mm_data.instances(p, data, "eu")] == [0, 1, None, 0, 1, None]
    v = mm_data.instances(mm_data.load_task("vqav2"), data, "en")
    assert v[0]["answers"] == ["red"] * 10


def test_eval_mm_end_to_end_on_a_tiny_llava(tiny_llava, data, tmp_path):
    from typer.testing import CliRunner

    from lrpipe.cli import app

    res = CliRunner().invoke(app, ["eval", "mm", "--model", tiny_llava, "--tasks", "vqav2,a-okvqa,pixmo-capqa",
                                   "--langs", "en,eu", "--data", str(data), "--out", str(tmp_path / "run"),
                                   "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "run" / "results.json").read_text())
    by = {r["task"]: r for r in out["results"]}
    assert by["vqav2"]["metrics"]["en"]["n"] == 5 and 0 <= by["vqav2"]["metrics"]["eu"]["vqa_acc"] <= 1
    assert by["a-okvqa"]["metrics"]["eu"]["n"] == 6
    assert by["pixmo-capqa"]["metrics"]["en"]["skipped_no_gold"] == 2
    assert by["a-okvqa"]["agreement"]["instances"] == 6
    recs = [json.loads(x) for x in (tmp_path / "run" / "a-okvqa.records.jsonl").read_text().splitlines()]
    assert {r["language"] for r in recs} == {"en", "eu"} and all(len(r["scores"]) == 4 for r in recs)
    md = (tmp_path / "run" / "results.md").read_text()
    assert "| a-okvqa | acc |" in md and "| vqav2 | inclusion_acc |" in md


class ImageEngine:
    """Stands in for vLLM (whose LLaVA support needs torchvision, absent from the CPU install): takes
    image requests and answers "red" to the English prompt, "gorria" to the Basque one."""

    name = "fake-vllm"
    supports_images = True

    def __init__(self):
        self.requests, self.closed = [], False

    def generate(self, requests):
        from lrpipe.engines import GenResult

        for r in requests:
            self.requests.append(r)
            text = "gorria" if "Zer kolore" in r.prompt else "red"
            yield GenResult(key=r.key, text=text, finish_reason="stop", prompt_tokens=1, output_tokens=1)

    def close(self):
        self.closed = True


def test_eval_mm_generation_through_an_image_engine(tiny_llava, data, tmp_path):
    from PIL import Image

    eng = ImageEngine()
    results = mm.run_eval_mm(tiny_llava, ["a-okvqa", "vqav2"], ["en", "eu"], data, tmp_path / "run", engine=eng)
    by = {r["task"]: r for r in results}
    assert [r["task"] for r in results] == ["a-okvqa", "vqav2"]  # written in the order asked
    assert by["vqav2"]["metrics"]["en"]["vqa_acc"] == 1.0 and by["vqav2"]["metrics"]["eu"]["vqa_acc"] == 1.0
    assert by["a-okvqa"]["metrics"]["en"]["n"] == 6  # multiple choice still scored by transformers
    assert len(eng.requests) == 10 and not eng.closed  # a caller's engine is the caller's to close
    r = eng.requests[0]
    assert r.prompt.count("<image>") == 1 and r.prompt.endswith("<|im_start|>assistant\n")
    assert "What color is it?\nAnswer the question using a single word or phrase." in r.prompt
    assert r.sampling.temperature == 0.0 and len(r.images) == 1 and isinstance(r.images[0], Image.Image)


def test_text_only_engines_refuse_images():
    from lrpipe.engines.base import GenRequest, Sampling
    from lrpipe.engines.vllm_engine import VLLMEngine

    class TextOnly:
        name = "transformers"
        supports_images = False  # as every Engine declares

    with pytest.raises(mm.InputError, match="cannot take images"):
        mm.EngineVision(TextOnly(), None)
    req = GenRequest(key=1, prompt="<image>\nWhat?", sampling=Sampling(), images=["IMG"])
    assert VLLMEngine._prompt(req) == {"prompt": "<image>\nWhat?", "multi_modal_data": {"image": "IMG"}}
    req2 = GenRequest(key=2, prompt=[1, 2, 3], sampling=Sampling(), images=["A", "B"])
    assert VLLMEngine._prompt(req2) == {"prompt_token_ids": [1, 2, 3], "multi_modal_data": {"image": ["A", "B"]}}
    assert VLLMEngine._prompt(GenRequest(key=3, prompt="x", sampling=Sampling())) == {"prompt": "x"}


def test_released_sets_with_text_encoded_values_and_their_errors(tmp_path):
    """Rows shaped like the released A-OK-VQA-eu card: `choices` and `correct_choice_idx` stored as
    text. One table per language (a local copy, or the task's `released` sets through --data released)."""
    import pyarrow.parquet as pq
    import yaml

    img = lambda i: {"bytes": _png(i), "path": None}  # noqa: E731
    en = [{"question_id": f"q{i}", "image": img(i), "question": "What is it?",
           "choices": ["cat", "dog", "car", "sun"], "correct_choice_idx": i % 4} for i in range(4)]
    eu = [{"question_id": f"q{i}", "image": img(i), "question": "Zer da?",
           "choices": "['katua', 'txakurra', 'autoa', 'eguzkia']" if i % 2 else '["katua", "txakurra", "autoa", "eguzkia"]',
           "correct_choice_idx": str(i % 4)} for i in range(4)]
    (tmp_path / "a-okvqa").mkdir()
    pq.write_table(pa.Table.from_pylist(en), tmp_path / "a-okvqa" / "en.parquet")
    pq.write_table(pa.Table.from_pylist(eu), tmp_path / "a-okvqa" / "eu.parquet")
    t = mm_data.load_task("a-okvqa")
    got = mm_data.aligned_instances(t, tmp_path, ["en", "eu"])
    assert [x["options"] for x in got["eu"]][1] == ["katua", "txakurra", "autoa", "eguzkia"]
    assert [x["gold"] for x in got["eu"]] == [x["gold"] for x in got["en"]] == [0, 1, 2, 3]
    # through --data released: the task's own released entries (a Hub folder here), columns renamed
    hub = tmp_path / "hub"
    for lang, rows in (("en", en), ("eu", eu)):
        (hub / lang / "data").mkdir(parents=True)
        renamed = [{("options" if k == "choices" else k): v for k, v in r.items()} for r in rows]
        pq.write_table(pa.Table.from_pylist(renamed), hub / lang / "data" / "test-00000-of-00001.parquet")
    spec = yaml.safe_load((mm_data.TASKS / "a-okvqa.yaml").read_text())
    spec["released"] = {lang: {"dataset": f"hf://{hub / lang}", "split": "test", "columns": {"choices": "options"}}
                        for lang in ("en", "eu")}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(spec))
    rel = mm_data.aligned_instances(mm_data.load_task(str(tmp_path / "task.yaml")), "released", ["en", "eu"])
    assert [x["gold"] for x in rel["eu"]] == [0, 1, 2, 3] and rel["eu"][0]["options"][0] == "katua"
    # a value that cannot be parsed is an error naming the file, row and field (never single characters)
    eu[2]["choices"] = "katua, txakurra"
    pq.write_table(pa.Table.from_pylist(eu), tmp_path / "a-okvqa" / "eu.parquet")
    with pytest.raises(mm.InputError, match=r"eu.parquet, row 2, field 'choices': expected a list"):
        mm_data.instances(t, tmp_path, "eu")
    eu[2]["choices"], eu[3]["correct_choice_idx"] = '["a", "b", "c", "d"]', "third"
    pq.write_table(pa.Table.from_pylist(eu), tmp_path / "a-okvqa" / "eu.parquet")
    with pytest.raises(mm.InputError, match=r"row 3, field 'correct_choice_idx': expected an option index"):
        mm_data.instances(t, tmp_path, "eu")
    # different instances in the two languages are refused
    pq.write_table(pa.Table.from_pylist(en[:3]), tmp_path / "a-okvqa" / "en.parquet")
    eu[3]["correct_choice_idx"] = "3"
    pq.write_table(pa.Table.from_pylist(eu), tmp_path / "a-okvqa" / "eu.parquet")
    with pytest.raises(mm.InputError, match="instances differ"):
        mm_data.aligned_instances(t, tmp_path, ["en", "eu"])


def test_pixmo_capqa_gold_is_the_leading_yes_no_in_either_language(tmp_path):
    """Real PixMo-CapQA answers are sentences; the gold is their first word, decided once per instance,
    so both languages keep the same instances even where a translation dropped the yes/no."""
    img = lambda i: {"bytes": _png(i), "path": None}  # noqa: E731
    answers = [("Yes, the dog is brown.", "Bai, txakurra marroia da."), ("No. There is no cat.", "Ez. Ez dago katurik."),
               ("yes", "bai"), ("The sky is blue.", "Zerua urdina da."),
               ("Yes — two of them.", "Bi daude."), ("NO!", "Ez!")]
    _write(tmp_path / "pixmo-capqa" / "translated", [
        {"id": f"p{i}", "image": img(i), "question": "Q?", "answer": a, "question_eu": "G?", "answer_eu": b}
        for i, (a, b) in enumerate(answers)])
    got = mm_data.aligned_instances(mm_data.load_task("pixmo-capqa"), tmp_path, ["en", "eu"])
    assert [x["gold"] for x in got["en"]] == [x["gold"] for x in got["eu"]] == [0, 1, 0, None, 0, 1]
    assert [x["id"] for x in got["en"]] == [x["id"] for x in got["eu"]]
    assert got["eu"][0]["options"] == ["bai", "ez"]
