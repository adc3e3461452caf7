"""Pre-query templates and stop tokens derived from chat templates (Llama-3.1, ChatML, Qwen-style),
with tokenizers built in the test from the embedded model's vocabulary."""

import copy

import pytest

from lrpipe.chat import normalize_conversation, pre_query
from lrpipe.errors import InputError, ModelError

# Written for these tests to render like Llama-3.1's template: a system header with the knowledge and
# today dates always present, the user's system text appended to it.
LLAMA31 = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}{{- 'Today Date: 26 Jul 2024\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
QWEN = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}{%- if message.role != 'system' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
ALPACA = ("{% for m in messages %}{% if m.role == 'system' %}{{ m.content }}\n\n{% elif m.role == 'user' %}"
          "### Instruction:\n{{ m.content }}\n\n### Response:\n{% else %}{{ m.content }}{% endif %}{% endfor %}")


@pytest.fixture(scope="module")
def llama_tok(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|begin_of_text|>", "<|start_header_id|>",
                                                          "<|end_header_id|>", "<|eot_id|>"]})
    tok.bos_token = "<|begin_of_text|>"
    tok.eos_token = "<|eot_id|>"
    tok.chat_template = LLAMA31
    return tok


def test_llama31_general_has_date_header_and_stops_on_eot(llama_tok):
    pq = pre_query(llama_tok, None)
    assert pq.text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                       "December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")
    eot = llama_tok.convert_tokens_to_ids("<|eot_id|>")
    assert pq.stop_token_ids[0] == eot and pq.stop == ()
    # BOS exactly once, and the ids decode back to the text
    assert pq.token_ids.count(llama_tok.convert_tokens_to_ids("<|begin_of_text|>")) == 1
    assert llama_tok.decode(pq.token_ids) == pq.text


def test_llama31_math_system_prompt(llama_tok):
    pq = pre_query(llama_tok, "You are a math tutor.")
    assert pq.text.endswith("Today Date: 26 Jul 2024\n\nYou are a math tutor.<|eot_id|>"
                            "<|start_header_id|>user<|end_header_id|>\n\n")


def test_chatml_smollm2(tokenizer):
    pq = pre_query(tokenizer, None)
    assert pq.text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                       "<|im_end|>\n<|im_start|>user\n")
    assert pq.stop_token_ids[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "assistant" not in pq.stop
    pq2 = pre_query(tokenizer, "Translate things.")
    assert pq2.text == "<|im_start|>system\nTranslate things.<|im_end|>\n<|im_start|>user\n"


def test_qwen_default_system_prompt(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = QWEN
    pq = pre_query(tok, None)
    assert "You are Qwen, created by Alibaba Cloud." in pq.text and pq.text.endswith("<|im_start|>user\n")
    pq2 = pre_query(tok, "Code helper.")
    assert "Qwen" not in pq2.text and "Code helper." in pq2.text


def test_plain_text_turn_end_becomes_stop_string(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ALPACA
    pq = pre_query(tok, "Sys.")
    assert pq.text.endswith("### Instruction:\n")
    assert pq.stop == ("### Response:",)


def test_non_chat_model_is_refused(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    with pytest.raises(ModelError, match="no chat template"):
        pre_query(tok, None)


def test_normalize_sharegpt_and_messages():
    sg = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    assert normalize_conversation(sg) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert normalize_conversation(msgs) == msgs
    with pytest.raises(InputError, match=r"data.jsonl, row 7, field 'conversations': message 1 has unknown role"):
        normalize_conversation([{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}],
                               path="data.jsonl", row=7, field="conversations")
    with pytest.raises(InputError, match="expected a non-empty list"):
        normalize_conversation("text", path="f", row=0)
