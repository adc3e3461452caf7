"""pipe eval mm on a tiny LLaVA (model and processor built from configs in the test) and a small
local EN/EU parallel fixture in the layout pipe translate --sample writes."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pytest

from lrpipe.eval import mm
from lrpipe.shards import ShardDir, UnitSpec
from tests.test_pack import make_tokenizer

torch = pytest.importorskip("torch")

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
            "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}"
            "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> str:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    d = tmp_path_factory.mktemp("llava")
    tok = make_tokenizer(TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.chat_template = TEMPLATE
    image_id = tok.convert_tokens_to_ids("<image>")
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                             crop_size={"height": 32, "width": 32}),
                          tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, image_token="<image>", chat_template=TEMPLATE)
    torch.manual_seed(0)
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          image_size=32, patch_size=8, projection_dim=32)
    tc = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vc, text_config=tc, image_token_index=image_id,
                                                      vision_feature_layer=-2,
                                                      vision_feature_select_strategy="default"))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(d)
    proc.save_pretrained(d)
    return str(d)


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
    t = mm.load_task("a-okvqa")
    en, eu = mm.instances(t, data, "en"), mm.instances(t, data, "eu")
    assert [x["id"] for x in en] == [x["id"] for x in eu]
    assert en[1]["options"] == ["cat", "dog", "car", "sun"] and eu[1]["options"][1] == "txakurra"
    assert en[1]["gold"] == eu[1]["gold"] == 1
    p = mm.load_task("pixmo-capqa")
    assert [x["gold"] for x in mm.instances(p, data, "eu")] == [0, 1, None, 0, 1, None]
    v = mm.instances(mm.load_task("vqav2"), data, "en")
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
    image requests and answers 'red' to the English prompt, 'gorria' to the Basque one."""

    name = "fake-vllm"
    supports_images = True

    def __init__(self):
        self.requests, self.closed = [], False

    def generate(self, requests):
        from lrpipe.engines import GenResult

        for r in requests:
            self.requests.append(r)
            text = "gorria" if "Zer kolore" in r.prompt else "Red."
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

    with pytest.raises(mm.InputError, match="cannot take images"):
        mm.EngineVision(TextOnly(), None)
    req = GenRequest(key=1, prompt="<image>\nWhat?", sampling=Sampling(), images=["IMG"])
    assert VLLMEngine._prompt(req) == {"prompt": "<image>\nWhat?", "multi_modal_data": {"image": "IMG"}}
    req2 = GenRequest(key=2, prompt=[1, 2, 3], sampling=Sampling(), images=["A", "B"])
    assert VLLMEngine._prompt(req2) == {"prompt_token_ids": [1, 2, 3], "multi_modal_data": {"image": ["A", "B"]}}
    assert VLLMEngine._prompt(GenRequest(key=3, prompt="x", sampling=Sampling())) == {"prompt": "x"}
