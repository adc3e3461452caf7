"""pipe train mllm on a tiny CLIP + tiny Llama under torchrun (2 ranks, gloo): stage 1 changes only the
connector, stage 2 the connector and the LLM; text-only rows on one rank and image rows on the other
finish their steps; the export is a LLaVA folder transformers loads with the trained model's logits."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from lrpipe.training.checkpoint import latest_checkpoint, load_model_weights
from lrpipe.training.config import TrainConfig, load_config
from lrpipe.training.data import Layout, StepSampler
from lrpipe.training.mllm import MLLMTask, image_chat_template
from tests.test_train import PY, _env
from tests.train_fixtures import mllm_data, mllm_parts

torch = pytest.importorskip("torch")
COMMON = ["--max-steps", "6", "--micro-batch", "1", "--global-batch", "4", "--dtype", "fp32", "--max-length", "256",
          "--save-every", "3"]


def train(stage: int, *args: str) -> None:
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lrpipe.training", "mllm",
           "--stage", str(stage), *COMMON, *args]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)  # a hang fails here
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def weights(run) -> dict[str, torch.Tensor]:
    cfg = TrainConfig.model_validate(json.loads((run / "config.json").read_text()))
    task = MLLMTask(cfg, with_data=False)
    m = task.build(meta=True)
    m.to_empty(device="cpu")
    load_model_weights(latest_checkpoint(run), m)
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def changed(a: dict, b: dict) -> dict[str, set[str]]:
    """Which parts (vision, connector, llm) have any parameter that differs between a and b."""
    out: dict[str, set[str]] = {"vision": set(), "connector": set(), "llm": set()}
    for k in a:
        part = "vision" if "vision_tower" in k else "connector" if "multi_modal_projector" in k else "llm"
        if not torch.equal(a[k], b[k]):
            out[part].add(k)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mllm")
    vision, llm = mllm_parts(root)
    data = mllm_data(root, n_images=24, n_text=24)
    s1, s2 = root / "stage1", root / "stage2"
    train(1, "--vision", str(vision), "--model", str(llm), "--data", str(data), "--out", str(s1))
    train(2, "--model", str(s1 / "final"), "--data", str(data), "--out", str(s2))
    return {"root": root, "vision": vision, "llm": llm, "data": data, "s1": s1, "s2": s2}


@pytest.mark.slow
def test_stage_1_trains_only_the_connector(runs):
    cfg = load_config(None, {"model": str(runs["llm"]), "vision": str(runs["vision"]), "data": str(runs["data"]),
                             "out": str(runs["s1"])}, stage=1)
    task = MLLMTask(cfg)
    init = {k: v.detach().clone() for k, v in task.build(meta=False).state_dict().items()}
    diff = changed(init, weights(runs["s1"]))
    assert diff["connector"] == {"llava.model.multi_modal_projector.proj.weight",
                                 "llava.model.multi_modal_projector.proj.bias"}
    assert not diff["vision"] and not diff["llm"]
    log = [json.loads(x) for x in (runs["s1"] / "log.jsonl").read_text().splitlines()]
    assert log[0]["rows_per_step"] == 4 and log[-1]["event"] == "done"


@pytest.mark.slow
def test_stage_2_trains_connector_and_llm_with_text_rows_beside_image_rows(runs):
    # the fixture's layout really puts a text-only row on one rank and an image row on the other
    sampler = StepSampler(48, Layout(micro=1, world=2, accum=2), seed=33)
    mixed = [s for s in range(6) for k in range(2)
             if len({sampler.rows(s, k, r)[0] >= 24 for r in (0, 1)}) == 2]
    assert mixed, "fixture should mix text and image rows across ranks"
    before, after = weights(runs["s1"]), weights(runs["s2"])
    diff = changed(before, after)
    assert diff["connector"] and diff["llm"] and not diff["vision"]
    assert "llava.model.language_model.layers.0.self_attn.q_proj.weight" in diff["llm"]


@pytest.mark.slow
def test_export_is_a_llava_folder_with_the_trained_logits(runs):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from lrpipe.eval.mm import HFVisionModel

    final = runs["s2"] / "final"
    cfg = json.loads((final / "config.json").read_text())
    assert cfg["architectures"] == ["LlavaForConditionalGeneration"] and cfg["projector_hidden_act"] == "linear"
    hf = LlavaForConditionalGeneration.from_pretrained(final).eval()
    proc = AutoProcessor.from_pretrained(final)
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                    {"type": "text", "text": "Zer da?"}]}],
                                      add_generation_prompt=True)
    assert "<image>\nZer da?" in prompt  # the layout of the training rows
    enc = proc(text=[prompt], images=[image], return_tensors="pt")
    assert int((enc["input_ids"] == cfg["image_token_index"]).sum()) == 16  # (32 / 8)² patches
    ours = MLLMTask(TrainConfig.model_validate(json.loads((runs["s2"] / "config.json").read_text())),
                    with_data=False).build(meta=True)
    ours.to_empty(device="cpu")
    load_model_weights(latest_checkpoint(runs["s2"]), ours)
    hf_buffers = dict(hf.named_buffers())  # non-persistent buffers (rotary, position ids), not in checkpoints
    for name, buf in ours.llava.named_buffers():
        buf.copy_(hf_buffers[name])
    ours.eval()
    with torch.no_grad():
        a = hf(**enc).logits
        b = ours.llava(**enc).logits
    assert np.abs((a - b).numpy()).max() < 1e-5
    m = HFVisionModel(str(final))  # what pipe eval mm loads
    assert len(m.generate([(image, m.prompt("Zer da?", None))], 4)) == 1


def test_image_chat_template_places_the_image_first():
    from jinja2 import Template

    from tests.test_pack import CHATML

    t = Template(image_chat_template(CHATML))
    out = t.render(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]},
                             {"role": "assistant", "content": "A."}], add_generation_prompt=False)
    assert out == "<|im_start|>user\n<image>\nQ?<|im_end|>\n<|im_start|>assistant\nA.<|im_end|>\n"


@pytest.mark.slow
def test_text_only_batch_carries_an_unseen_blank_image(runs):
    """The blank image in a text-only batch changes neither the loss nor any real token's logits."""
    cfg = load_config(None, {"model": str(runs["s1"] / "final"), "data": str(runs["data"]), "out": "x",
                             "max_length": 256}, stage=2)
    task = MLLMTask(cfg)
    model = task.build(meta=False).eval()
    b = task.batch([30, 31])  # rows 24.. are text-only
    assert b["_images"] == 0 and b["pixel_values"].shape[0] == 1
    n = max(b["_lens"])
    assert int((b["input_ids"][0, n:] == task.image_id).sum()) == task.n_patches
    assert int(b["attention_mask"][:, n:].sum()) == 0 and bool((b["labels"][:, n:] == -100).all())
    with torch.no_grad():
        with_blank = model(**{k: v for k, v in b.items() if not k.startswith("_")}, num_items_in_batch=None)
        lm = model.llava(input_ids=b["input_ids"][:, :n], attention_mask=b["attention_mask"][:, :n],
                         labels=b["labels"][:, :n])
        full = model.llava(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                           pixel_values=b["pixel_values"]).logits[:, :n]
    assert abs(float(with_blank) - float(lm.loss)) < 1e-5
    real = b["attention_mask"][:, :n].bool()
    assert (full[real] - lm.logits[real]).abs().max() < 1e-4


@pytest.mark.slow
def test_deepspeed_zero3_trains_the_mllm_like_fsdp2(runs):
    pytest.importorskip("deepspeed")
    out = runs["root"] / "stage2-deepspeed"
    train(2, "--model", str(runs["s1"] / "final"), "--data", str(runs["data"]), "--out", str(out),
          "--parallel", "deepspeed", "--no-export")
    from tests.test_train import curve

    a, b = curve(runs["s2"]), curve(out)
    assert sorted(a) == sorted(b) and max(abs(a[s] - b[s]) for s in a) < 1e-5


def test_a_caption_language_without_a_prompt_stops_before_training(tmp_path):
    """Caption rows in a language the prompt table lacks are an error naming the file and the
    languages, before anything trains (no silent English request); a table of one's own serves them."""
    import pyarrow as pa

    from lrpipe.errors import InputError
    from lrpipe.shards import ShardDir, UnitSpec
    from tests.train_fixtures import _png

    vision, llm = mllm_parts(tmp_path)
    rows = [{"id": f"g{i}", "image": {"bytes": _png(i), "path": None}, "language": "gl", "caption": "un can"}
            for i in range(4)]
    sd = ShardDir.create(tmp_path / "gl", stage="mix", config={}, plan=[UnitSpec(0, "u0")], inputs=[], provenance={})
    sd.write_unit(UnitSpec(0, "u0"), pa.Table.from_pylist(rows), None, 4)
    sd.refresh_manifest()
    base = {"vision": str(vision), "model": str(llm), "data": str(tmp_path / "gl"), "out": str(tmp_path / "r"),
            "dtype": "fp32"}
    with pytest.raises(InputError, match=r"caption\.yaml.*no caption prompt for language\(s\) \['gl'\]"):
        MLLMTask(load_config(None, base, stage=1))
    table = tmp_path / "captions-gl.yaml"
    table.write_text("gl: \"Describe a imaxe brevemente.\"\n")
    task = MLLMTask(load_config(None, {**base, "caption_prompts": str(table)}, stage=1))
    assert task.prompts == {"gl": "Describe a imaxe brevemente."}
