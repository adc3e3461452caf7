"""pipe pack: loss masks from chat templates (with and without generation markers), packing invariants."""

from __future__ import annotations

import json

import pytest

from lrpipe import tokenization
from lrpipe.pipelines import pack
from lrpipe.runner import run_stage
from lrpipe.shards import ShardDir
from lrpipe.sources import FileSource

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|im_start|>", "<|im_end|>", "<pad>"]

# Templates written for these tests in the formats of Llama 3.1 (header blocks, <|eot_id|>, a default
# system block when none is given) and ChatML (with and without {% generation %} markers).
LLAMA31 = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] != 'system' %}<|start_header_id|>system<|end_header_id|>\n\n"
    "Knowledge cutoff: 2023<|eot_id|>{%- endif %}"
    "{%- for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHATML_GEN = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
              "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}"
              "{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
REWRITES = ("{% for m in messages %}{% if loop.last %}[LAST]{% endif %}<|im_start|>{{ m['role'] }}\n"
            "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

CORPUS = ["Kaixo, zer moduz? Ondo nago, eskerrik asko.", "The quick brown fox jumps over the lazy dog.",
          "Euskal Herriko hizkuntza da euskara. 你好，世界。 Ça va? 😀", "def f(x):\n    return x * 2\n"]


def make_tokenizer(template: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(CORPUS * 50, trainer)
    eot = "<|eot_id|>" if "eot_id" in template else "<|im_end|>"
    tok = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<|begin_of_text|>",
                                  eos_token="<|end_of_text|>" if eot == "<|eot_id|>" else "<|im_end|>",
                                  pad_token="<pad>")
    tok.chat_template = template
    return tok


def loss_text(tok, ids, labels):
    """The text of each maximal run of loss tokens."""
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != tokenization.IGNORE:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


CONV = [{"role": "system", "content": "Laguntzaile atsegina zara."},
        {"role": "user", "content": "Kaixo! Zer moduz?"},
        {"role": "assistant", "content": "Ondo nago, eskerrik asko. 😀"},
        {"role": "user", "content": "Idatzi kode bat."},
        {"role": "assistant", "content": "def f(x):\n    return x * 2"},
        {"role": "user", "content": "Eta orain?"},
        {"role": "assistant", "content": ""}]


@pytest.mark.parametrize("template,eot", [(LLAMA31, "<|eot_id|>"), (CHATML, "<|im_end|>"), (CHATML_GEN, "<|im_end|>")])
@pytest.mark.parametrize("conv", [CONV, CONV[1:3], [CONV[1], {"role": "assistant", "content": "你好，世界。"}]])
def test_loss_only_on_assistant_text_and_end_of_turn(template, eot, conv):
    tok = make_tokenizer(template)
    ids, labels = tokenization.tokenize_conversation(tok, conv)
    assert ids == tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
    want = [m["content"].strip() if template is LLAMA31 else m["content"] for m in conv if m["role"] == "assistant"]
    assert loss_text(tok, ids, labels) == [w + eot for w in want]


def test_template_that_rewrites_earlier_turns_is_refused():
    tok = make_tokenizer(REWRITES)
    with pytest.raises(tokenization.TemplateError, match="rewrites earlier turns"):
        tokenization.tokenize_conversation(tok, CONV[1:5])


def test_best_fit_decreasing_keeps_every_token():
    import random

    rng = random.Random(0)
    docs = [pack.Doc(list(range(n)), list(range(n)), f"d{i}") for i, n in enumerate(rng.randint(1, 100) for _ in range(500))]
    bins = pack.pack_bfd(docs, 128)
    assert sorted(d.source_id for b in bins for d in b.docs) == sorted(d.source_id for d in docs)
    assert all(b.used == sum(len(d.ids) for d in b.docs) <= 128 for b in bins)
    lower = -(-sum(len(d.ids) for d in docs) // 128)
    assert len(bins) <= lower * 1.05 + 1  # near the lower bound


def _pack_input(tmp_path, n_conv=60, n_docs=12):
    rows = []
    for i in range(n_conv):
        rows.append({"id": f"c{i:03d}", "conversation": [{"role": "user", "content": f"Galdera {i}: zer moduz?"},
                                                          {"role": "assistant", "content": "Ondo. " * (1 + i % 7)}]})
    for i in range(n_docs):
        rows.append({"id": f"d{i:03d}", "text": ("Euskara hizkuntza zaharra da. " * (3 + 9 * i))})
    rows.append({"id": "long", "conversation": [{"role": "user", "content": "x " * 400},
                                                 {"role": "assistant", "content": "y"}]})
    rows.append({"id": "bad", "other": 1})
    p = tmp_path / "in.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return p


def _run_pack(src, out, world_size=1, seq_len=128):
    tok = make_tokenizer(CHATML)
    for r in range(world_size):
        run_stage(pack.PackStage(FileSource([str(src)], rows_per_unit=25), tok, "test", seq_len=seq_len), out,
                  rank=r, world_size=world_size, progress=False)
    return ShardDir.open(out)


def test_pack_stage_invariants_and_world_sizes(tmp_path):
    src = _pack_input(tmp_path)
    sd = _run_pack(src, tmp_path / "p1")
    m = sd.manifest()
    assert m["totals"]["balanced"] and m["totals"]["rejected_by_reason"] == {"bad_input": 1, "too_long": 1}
    rows = sd.read_all().to_pylist()
    tok = make_tokenizer(CHATML)
    total = 0
    for r in rows:
        assert len(r["input_ids"]) == len(r["labels"]) == len(r["position_ids"]) == 128
        assert sum(r["seq_lens"]) == 128
        start = 0
        for n in r["seq_lens"]:
            assert r["position_ids"][start:start + n] == list(range(n))  # restart at every document
            start += n
        pad = 128 - sum(n for n, _ in zip(r["seq_lens"], r["source_ids"]))
        total += 128 - pad
        assert all(x == tokenization.IGNORE for x in r["labels"][128 - pad:])
    assert total == m["stats"]["tokens_in"]
    # conversations are never split; long corpus documents are, at the row boundary
    ids = [s for r in rows for s in r["source_ids"]]
    assert len([s for s in ids if s.startswith("c")]) == 60 and any("#" in s for s in ids)
    # a conversation's tokens are exactly its tokenization
    one = next(r for r in rows if "c005" in r["source_ids"])
    k = one["source_ids"].index("c005")
    s = sum(one["seq_lens"][:k])
    conv_ids, _ = tokenization.tokenize_conversation(tok, json.loads(src.read_text().splitlines()[5])["conversation"])
    assert one["input_ids"][s:s + one["seq_lens"][k]] == conv_ids
    sd3 = _run_pack(src, tmp_path / "p3", world_size=3)
    key = lambda r: r["source_ids"]  # noqa: E731
    assert sorted(sd3.read_all().to_pylist(), key=key) == sorted(rows, key=key)
    assert pack.padding_waste(m["stats"]) < 0.2


def _conv_rows(n):
    return [{"id": f"c{i:05d}", "conversation": [{"role": "user", "content": f"Question {i}: how are you?"},
                                                  {"role": "assistant", "content": "Fine, thanks. " * (1 + i % 9)}]}
            for i in range(n)]


def test_cli_pack_show_and_kill9_resume(tmp_path, env, model_path):
    import os
    import signal
    import subprocess
    import time

    from .conftest import PIPE

    src = tmp_path / "c.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in _conv_rows(3000)) + "\n"
                   + json.dumps({"id": "doc", "text": "A corpus document. " * 300}))
    args = ["pack", "--input", str(src), "--tokenizer", model_path, "--seq-len", "256", "--rows-per-unit", "30",
            "--no-progress"]
    ref = subprocess.run(PIPE + args + ["--out", str(tmp_path / "ref")], capture_output=True, text=True, env=env)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(PIPE + args + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    killed, deadline = False, time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "units").exists() and len(list((out / "units").glob("*.json"))) >= 5:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.01)
    proc.wait()
    assert killed, "finished before it could be killed"
    assert not ShardDir.open(out).manifest()["complete"]
    again = subprocess.run(PIPE + args + ["--out", str(out)], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = ShardDir.open(tmp_path / "ref"), ShardDir.open(out)
    assert a.read_all().to_pylist() == b.read_all().to_pylist()
    m = b.manifest()
    assert m["totals"]["balanced"] and m["totals"]["rows_consumed"] == 3001 and m["stats"]["documents"] > 3001
    show = subprocess.run(PIPE + ["show", str(out)], capture_output=True, text=True, env=env)
    assert show.returncode == 0, show.stderr[-2000:]
    assert "padding waste" in show.stdout and "loss tokens" in show.stdout and "⟦" in show.stdout
    assert "Fine, thanks." in show.stdout
