"""Engine contract on the transformers engine (fast, deterministic on CPU)."""

import json

from lrpipe.engines.base import GenRequest, Sampling, ScoreRequest


def _prompt(tok, text="Write a haiku."):
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def test_per_request_seeds(hf_engine):
    """What the engine keeps on every CPU: the same batch twice gives the same samples, and the seed is
    the request's own (other seeds, other samples). What it does not promise: the same request alone and
    inside a batch of another size. Another batch shape takes other matmul kernels (AMX, AVX-512, AVX2),
    the logits differ in their last bits and a sample at temperature 1 can diverge (README: Reproducible)."""
    p = _prompt(hf_engine.tokenizer)
    reqs = [GenRequest(key=k, prompt=p, sampling=Sampling(temperature=1.0, max_tokens=24, seed=s))
            for k, s in [("a", 1), ("b", 2), ("c", 3), ("d", 4)]]
    first = {r.key: r for r in hf_engine.generate(reqs)}
    again = {r.key: r for r in hf_engine.generate(reqs)}
    assert {k: r.text for k, r in first.items()} == {k: r.text for k, r in again.items()}
    assert len({r.text for r in first.values()}) >= 2, "four seeds gave one sample: the seed is not the request's"
    for r in first.values():
        assert r.finish_reason in ("stop", "length") and r.output_tokens > 0 and r.prompt_tokens > 0


def test_max_tokens_and_stop_strings(hf_engine):
    p = _prompt(hf_engine.tokenizer, "Count from 1 to 20 separated by commas.")
    r = list(hf_engine.generate([GenRequest(key=0, prompt=p, sampling=Sampling(temperature=0, max_tokens=5))]))[0]
    assert r.finish_reason == "length" and r.output_tokens == 5
    full = list(hf_engine.generate([GenRequest(key=0, prompt=p, sampling=Sampling(temperature=0, max_tokens=40))]))[0]
    assert "3" in full.text
    stop = full.text[full.text.index("3"):][:1]
    s = list(hf_engine.generate([GenRequest(key=0, prompt=p, sampling=Sampling(temperature=0, max_tokens=40,
                                                                                stop=(stop,)))]))[0]
    assert s.finish_reason == "stop" and stop not in s.text and full.text.startswith(s.text)


def test_json_schema_constraint(hf_engine):
    schema = {"type": "object", "properties": {"rating": {"type": "string", "enum": ["poor", "good"]}},
              "required": ["rating"], "additionalProperties": False}
    p = _prompt(hf_engine.tokenizer, "Rate this instruction: 'hello'. Reply in JSON.")
    res = list(hf_engine.generate([GenRequest(key=i, prompt=p, sampling=Sampling(temperature=1.0, max_tokens=30, seed=i,
                                                                                  json_schema=schema))
                                   for i in range(3)]))
    for r in res:
        assert r.finish_reason == "stop"
        assert json.loads(r.text)["rating"] in ("poor", "good")


def test_error_isolated_to_its_request(hf_engine):
    ok = GenRequest(key="ok", prompt=[1, 2, 3], sampling=Sampling(max_tokens=3, seed=0))
    bad = GenRequest(key="bad", prompt=[], sampling=Sampling(max_tokens=3, seed=0))
    res = {r.key: r for r in hf_engine.generate([ok, bad])}
    assert res["bad"].finish_reason == "error" and "empty prompt" in res["bad"].error
    assert res["ok"].finish_reason in ("stop", "length")


def test_score_prefers_likely_continuation(hf_engine):
    a, b = hf_engine.score([ScoreRequest(key=0, context="The capital of France is", continuation=" Paris"),
                            ScoreRequest(key=1, context="The capital of France is", continuation=" banana")])
    assert a.logprob > b.logprob and a.num_tokens >= 1
