"""The openai engine against a real `vllm serve` on loopback with the embedded model (no mock)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from lrpipe.engines.base import GenRequest, Sampling
from lrpipe.engines.openai_engine import OpenAIEngine
from lrpipe.shards import ShardDir

from .conftest import PIPE

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    pytest.importorskip("vllm")
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="2", VLLM_CPU_OMP_THREADS_BIND="0-1", VLLM_CPU_NUM_OF_RESERVED_CPU="0")
    # `vllm serve` reads the package version of "vllm", which vllm-cpu does not register; the API
    # server module is the same server without that lookup.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path, "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
           "--gpu-memory-utilization", "0.1", "--no-enable-chunked-prefill", "--max-num-batched-tokens", "8192"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 420
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            break
        except OSError:
            time.sleep(2)
    else:
        proc.kill()
        pytest.fail(f"vllm serve did not start: {log.read_text()[-3000:]}")
    yield url
    os.killpg(proc.pid, 15)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


def test_completions_with_token_ids_seeds_and_schema(server, model_path):
    """Seeds reach the server: the same request sent twice gives the same sample. One request at a time,
    so each runs in a batch of one: requests that meet in the server's batches by timing run in batches
    of other sizes, and on some CPUs (AMX) their samples differ in places (README: Reproducible)."""
    eng = OpenAIEngine(model_path, base_url=server, max_concurrency=1)
    tok = eng.tokenizer
    p = tok(tok.apply_chat_template([{"role": "user", "content": "Say something."}], tokenize=False,
                                    add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    reqs = [GenRequest(key=i, prompt=p, sampling=Sampling(temperature=1.0, max_tokens=8, seed=7 + i % 2))
            for i in range(6)]
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    reqs.append(GenRequest(key="json", prompt=p, sampling=Sampling(temperature=0.5, max_tokens=20, seed=1,
                                                                    json_schema=schema)))
    res = {r.key: r for r in eng.generate(reqs)}
    assert res[0].text == res[2].text == res[4].text and res[1].text == res[3].text == res[5].text
    assert all(res[i].finish_reason in ("stop", "length") and res[i].prompt_tokens == len(p) for i in range(6))
    assert isinstance(json.loads(res["json"].text)["ok"], bool)


def test_magpie_through_server(server, model_path, tmp_path):
    out = tmp_path / "m"
    r = subprocess.run(PIPE + ["run", "magpie", "--engine", "openai", "--base-url", server, "--model", model_path,
                               "--n", "10", "--temps", "0.8,1.2", "--max-tokens", "32", "--response-max-tokens", "32",
                               "--no-progress", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = ShardDir.open(out / "sample").manifest()
    assert m["totals"]["rows_in"] == 10 and m["totals"]["balanced"]
    assert m["provenance"]["engine"]["engine"] == "openai"
