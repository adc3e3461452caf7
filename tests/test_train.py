"""pipe train text: document masking, data layout, schedule, and FSDP2 runs under torchrun on CPU
(gloo): loss falls, 2 ranks = 1 rank (global-batch loss), kill -9 + resume = the uninterrupted curve,
SIGTERM on one rank saves on both, the exported folder gives the sharded model's logits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lrpipe.training.data import Layout, StepSampler, additive_mask, collate, document_mask
from lrpipe.training.loop import lr_lambda
from tests.train_fixtures import packed_data

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def tiny_llama(attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM._from_config(cfg, attn_implementation=attn).eval()


def _mask(b, attn):
    return additive_mask(b["attention_mask"], torch.float32) if attn == "eager" else b["attention_mask"]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_block_mask_keeps_packed_documents_apart(attn):
    """Perturbing document A moves none of document B's logits, and B's logits are those of B alone."""
    model = tiny_llama(attn)
    rng = np.random.default_rng(0)
    lens = [7, 9, 4]  # A, B, padding-like third document
    ids = rng.integers(0, 100, sum(lens))
    row = {"input_ids": ids, "labels": ids.copy(), "position_ids": np.concatenate([np.arange(n) for n in lens]),
           "seq_lens": np.array(lens)}
    b = collate([row], flatten=False)
    with torch.no_grad():
        base = model(input_ids=b["input_ids"], position_ids=b["position_ids"],
                     attention_mask=_mask(b, attn)).logits[0]
        pert = dict(row, input_ids=ids.copy())
        pert["input_ids"][:7] = (pert["input_ids"][:7] + 13) % 100
        pb = collate([pert], flatten=False)
        moved = model(input_ids=pb["input_ids"], position_ids=pb["position_ids"],
                      attention_mask=_mask(pb, attn)).logits[0]
        alone = model(input_ids=torch.from_numpy(ids[7:16]).unsqueeze(0)).logits[0]
    assert (moved[:7] - base[:7]).abs().max() > 1e-3  # A itself did change
    assert torch.allclose(moved[7:], base[7:], atol=1e-6)
    assert torch.allclose(base[7:16], alone, atol=1e-5)
    # the first token of each document is not a target (it would be predicted from the previous one)
    assert (b["labels"][0, [0, 7, 16]] == -100).all() and (b["labels"][0, 1:7] >= 0).all()


def test_document_mask_and_flattened_batches():
    m = document_mask([np.array([2, 3])], 5)[0, 0]
    assert m.tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    rows = [{"input_ids": np.arange(4), "labels": np.arange(4), "position_ids": np.array([0, 1, 0, 1]),
             "seq_lens": np.array([2, 2])}] * 2
    f = collate(rows, flatten=True)
    assert f["input_ids"].shape == (1, 8) and "attention_mask" not in f
    assert f["position_ids"][0].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert (f["labels"][0, [0, 2, 4, 6]] == -100).all()


def test_layout_reaches_the_tokens_per_step_on_any_world_size():
    lay = Layout.plan(micro=2, world=128, seq_len=8192, tokens_per_step=2 * 1024 * 1024, global_batch=None)
    assert (lay.accum, lay.rows_per_step * 8192) == (1, 2 * 1024 * 1024)  # the study's 8B run: 128 GPUs, no accumulation
    lay8 = Layout.plan(micro=2, world=8, seq_len=8192, tokens_per_step=2 * 1024 * 1024, global_batch=None)
    assert lay8.accum == 16 and lay8.rows_per_step == 256
    assert Layout.plan(micro=2, world=3, seq_len=8192, tokens_per_step=None, global_batch=32).rows_per_step == 36


def test_sampler_sees_every_row_once_per_epoch_and_is_layout_free():
    n = 50
    a = StepSampler(n, Layout(micro=2, world=2, accum=1), seed=3)
    b = StepSampler(n, Layout(micro=2, world=1, accum=2), seed=3)
    seen = []
    for step in range(a.total_steps(2.0)):
        rows_a = sorted(r for k in range(1) for rank in range(2) for r in a.rows(step, k, rank))
        rows_b = sorted(r for k in range(2) for r in b.rows(step, k, 0))
        assert rows_a == rows_b
        seen += rows_a
    assert a.total_steps(2.0) == 25 and sorted(seen[:48]) != seen[:48]
    assert sorted(seen[:50]) == list(range(50)) and sorted(seen[50:]) == list(range(50))


def test_schedule_warmup_peak_and_cosine_floor():
    f = lr_lambda(total=100, warmup=10, min_ratio=0.33)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.33 + 0.67 * 0.5) and f(100) == pytest.approx(0.33)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


# ------------------------------------------------------------------------------ torchrun (2 ranks, gloo)
ARGS = ["--init", "random", "--max-steps", "12", "--global-batch", "8", "--micro-batch", "2", "--lr", "2e-3",
        "--save-every", "4", "--dtype", "fp32", "--seed", "0", "--keep-checkpoints", "5"]


def _env(**extra):
    env = dict(os.environ, PIPE_PROGRESS="0", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    env.pop("RANK", None)
    return env


def entry(kill_at: int | None = None) -> list[str]:
    """What torchrun starts: ``pipe train``, or the same with rank 0 killed (-9) after step ``kill_at``."""
    return ["-m", "lrpipe.training"] if kill_at is None else [str(ROOT / "tests" / "train_kill.py"), str(kill_at)]


def torchrun(run: Path, data: Path, model: Path, *extra: str, nproc: int = 2, env: dict | None = None,
             check: bool = True, kill_at: int | None = None) -> subprocess.CompletedProcess:
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           *entry(kill_at), "text", "--data", str(data), "--model", str(model), "--out", str(run), *ARGS,
           *extra]
    res = subprocess.run(cmd, env=env or _env(), capture_output=True, text=True, timeout=600)
    if check:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def curve(run: Path) -> dict[int, float]:
    """step -> loss, the last record of each step (a resumed run logs the replayed steps again)."""
    out = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            out[r["step"]] = r["loss"]
    return out


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model, data = packed_data(root)
    return root, model, data


@pytest.fixture(scope="module")
def full_run(fixture_dir):
    root, model, data = fixture_dir
    run = root / "full"
    torchrun(run, data, model)
    return run


@pytest.mark.slow
def test_two_ranks_train_and_match_one_rank(fixture_dir, full_run):
    root, model, data = fixture_dir
    c2 = curve(full_run)
    assert sorted(c2) == list(range(1, 13))
    assert c2[12] < c2[1] - 0.3, c2  # loss falls
    one = root / "one"
    torchrun(one, data, model, nproc=1)
    c1 = curve(one)
    # one rank accumulates 4 micro batches where two ranks take 2 each: the same rows per step and the
    # same loss, because the loss is averaged over the loss tokens of the whole global batch
    assert max(abs(c1[s] - c2[s]) for s in c2) < 1e-5
    start = json.loads((one / "log.jsonl").read_text().splitlines()[0])
    assert start["accum"] == 4 and start["world"] == 1


@pytest.mark.slow
def test_kill_9_and_resume_reproduce_the_uninterrupted_curve(fixture_dir, full_run):
    root, model, data = fixture_dir
    run = root / "killed"
    res = torchrun(run, data, model, kill_at=6, check=False)
    assert res.returncode != 0
    assert [p.name for p in (run / "checkpoints").glob("step_*")] == ["step_00000004"]
    torchrun(run, data, model)  # same command: picks up the latest checkpoint by itself
    events = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"event"' in x]
    assert [e["event"] for e in events] == ["start", "resume", "done"] and events[1]["step"] == 4
    full, resumed = curve(full_run), curve(run)
    assert sorted(resumed) == list(range(1, 13))
    assert max(abs(full[s] - resumed[s]) for s in full) < 1e-6  # same samples, same RNG, same state

    # pipe report on the resumed run: the curve with the resume marked, read in Chromium
    from tests.browser import assert_renders, open_page, report, screenshot_path

    facts = open_page(report(run, root / "killed.html", _env()), screenshot_path(root, "training"))
    assert_renders(facts, min_charts=1)
    assert "resume at step 4" in facts.text and [c["name"] for c in facts.charts] == ["training"]
    page = (root / "killed.html").read_text()
    assert ">resume<" in page  # the marker's label is drawn on the curve


@pytest.mark.slow
def test_sigterm_on_one_rank_saves_on_both_and_resumes(fixture_dir):
    root, model, data = fixture_dir
    run = root / "preempted"
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lrpipe.training",
           "text", "--data", str(data), "--model", str(model), "--out", str(run), *ARGS[:2], "--max-steps", "100000",
           *ARGS[4:8], "--save-every", "100000", "--dtype", "fp32", "--lr", "1e-4"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "log.jsonl").exists() or len(curve(run)) < 3:
        time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[1]), signal.SIGTERM)  # only one rank is told
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    events = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"event"' in x]
    assert events[-1]["event"] == "preempted"
    stopped = events[-1]["step"]
    ck = sorted((run / "checkpoints").glob("step_*"))
    assert [p.name for p in ck] == [f"step_{stopped:08d}"]
    assert sorted(p.name for p in ck[0].glob("extra_rank*.pt")) == ["extra_rank0.pt", "extra_rank1.pt"]
    rerun = [*cmd[:6], *entry(kill_at=stopped + 1), *cmd[8:]]
    res = subprocess.run(rerun, env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode != 0  # killed on purpose right after its first step
    resume = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"resume"' in x]
    assert resume and resume[-1]["step"] == stopped


@pytest.mark.slow
def test_export_gives_the_sharded_models_logits(fixture_dir, full_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    probe = tmp_path / "sharded.npy"
    res = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(ROOT / "tests" / "train_probe.py"), str(full_run), str(probe)],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    sharded = np.load(probe)
    ids = torch.tensor([[5, 17, 33, 2, 99, 41, 8, 64, 120, 7, 300, 12]])
    for folder in (full_run / "final", tmp_path / "exported"):
        if folder.name == "exported":
            from typer.testing import CliRunner

            from lrpipe.cli import app

            r = CliRunner().invoke(app, ["train", "export", str(full_run), "--out", str(folder)])
            assert r.exit_code == 0, r.output
        hf = AutoModelForCausalLM.from_pretrained(folder).eval()
        with torch.no_grad():
            logits = hf(input_ids=ids).logits.numpy()
        assert np.abs(logits - sharded).max() < 1e-5
        tok = AutoTokenizer.from_pretrained(folder)
        assert tok.chat_template and "<|im_start|>" in tok.chat_template
        assert (folder / "generation_config.json").exists() and (folder / "model.safetensors").exists()


def test_shipped_recipes_load_and_stage_defaults_apply(tmp_path):
    from lrpipe.errors import InputError
    from lrpipe.training.config import load_config

    cfgs = sorted((ROOT / "training" / "configs").glob("*.yaml"))
    assert {p.stem for p in cfgs} >= {"text-8b", "text-70b", "mllm-stage1", "mllm-stage2"}
    for p in cfgs:
        stage = 1 if "stage1" in p.stem else 2 if "stage2" in p.stem else None
        c = load_config(p, {"data": "d", "out": "o", "model": None if "text" in p.stem or stage == 1 else "m"},
                        stage=stage)
        if p.stem == "text-8b":
            assert (c.lr, c.min_lr_ratio, c.warmup_ratio, c.weight_decay, c.betas, c.eps, c.micro_batch,
                    c.tokens_per_step, c.epochs, c.seed, c.neftune_alpha, c.sharding) == \
                (1e-5, 0.33, 0.1, 0.1, (0.9, 0.95), 1e-8, 2, 2 * 1024 * 1024, 4, 33, 5, "hybrid")
        if stage == 1:
            assert (c.train, c.lr, c.warmup_ratio, c.global_batch) == ("connector", 1e-3, 0.03, 32)
        if stage == 2:
            assert (c.train, c.lr, c.weight_decay, c.global_batch) == ("connector+llm", 2e-5, 0.01, 128)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1e-5\nlearning_rate: 3\n")
    with pytest.raises(InputError, match="bad.yaml.*learning_rate"):
        load_config(bad, {"data": "d", "out": "o", "model": "m"})


@pytest.mark.slow
def test_deepspeed_zero3_matches_fsdp2_and_resumes(fixture_dir, full_run):
    """The DeepSpeed ZeRO-3 backend (through accelerate) gives FSDP2's loss curve, resumes exactly
    after a kill -9 from its own sharded checkpoint, and exports the same model."""
    pytest.importorskip("deepspeed")
    from transformers import AutoModelForCausalLM

    root, model, data = fixture_dir
    run = root / "deepspeed"
    res = torchrun(run, data, model, "--parallel", "deepspeed", kill_at=6, check=False)
    assert res.returncode != 0
    assert (run / "checkpoints" / "step_00000004" / "deepspeed").is_dir()
    torchrun(run, data, model, "--parallel", "deepspeed")
    full, ds = curve(full_run), curve(run)
    assert sorted(ds) == list(range(1, 13))
    assert max(abs(full[s] - ds[s]) for s in full) < 1e-5
    ids = torch.tensor([[5, 17, 33, 2, 99, 41, 8, 64, 120, 7, 300, 12]])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(full_run / "final")(input_ids=ids).logits
        b = AutoModelForCausalLM.from_pretrained(run / "final")(input_ids=ids).logits
    assert (a - b).abs().max() < 1e-4


def test_mesh_shapes():
    from lrpipe.training.parallel import mesh_shape

    assert mesh_shape(128, 8, "hybrid") == {"replicate": 16, "shard": 8}  # the study's 8B runs
    assert mesh_shape(256, 8, "full") == {"shard": 256}  # the 70B run
    assert mesh_shape(8, 8, "hybrid") == {"shard": 8}  # one node: nothing to replicate across
    assert mesh_shape(4, 4, "hybrid", shard_size=2) == {"replicate": 2, "shard": 2}


@pytest.mark.slow
def test_hybrid_sharding_gives_the_same_curve(fixture_dir, full_run):
    """HSDP (shard groups of 1 rank, replicated twice: a 2-D mesh) trains like full sharding."""
    root, model, data = fixture_dir
    run = root / "hybrid"
    torchrun(run, data, model, "--sharding", "hybrid", "--hybrid-shard-size", "1", "--no-export")
    full, hyb = curve(full_run), curve(run)
    assert max(abs(full[s] - hyb[s]) for s in full) < 1e-5


def test_neftune_noise_only_in_training_and_of_the_right_scale():
    from lrpipe.training.loop import add_neftune

    model = tiny_llama("sdpa")
    ids = torch.randint(0, 100, (1, 20))
    emb = model.get_input_embeddings()
    with torch.no_grad():
        clean = emb(ids)
        add_neftune(model, alpha=5.0, seq_len=20)
        model.eval()
        assert torch.equal(emb(ids), clean)
        model.train()
        noisy = emb(ids)
    bound = 5.0 / (20 * 32) ** 0.5
    assert 0 < (noisy - clean).abs().max() <= bound + 1e-6


def _wandb_history(run_file: Path) -> list[dict]:
    """The history records of a W&B transaction log (``run-<id>.wandb``: LevelDB-style 32 KiB blocks
    of checksummed chunks, each record a protobuf ``Record``), read without the W&B service."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf, out = run_file.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:  # block padding
            pos += left
            continue
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # a full record, or the last chunk of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                out.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return out


@pytest.mark.slow
def test_report_to_wandb_and_tensorboard_across_a_restart(fixture_dir, full_run):
    """--report-to wandb,tensorboard on a node without network: W&B offline, one run id across a
    crash and the resume, every step's loss in both trackers; progress lines in a non-terminal log."""
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    root, model, data = fixture_dir
    run = root / "tracked"
    env = {k: v for k, v in _env().items() if not k.startswith("WANDB_")}
    env.update(PIPE_PROGRESS="1", PIPE_LOG_EVERY="0")
    res = torchrun(run, data, model, "--report-to", "wandb,tensorboard", env=env, kill_at=6,
                   check=False)
    assert res.returncode != 0
    res = torchrun(run, data, model, "--report-to", "wandb,tensorboard", "--run-name", "tiny", env=env)
    assert "W&B runs offline" in res.stdout and "wandb sync" in res.stdout
    # a batch job's log (stderr is a pipe here): one line per step at PIPE_LOG_EVERY=0, the last one done
    lines = [x for x in res.stderr.splitlines() if "train text: step" in x]
    assert [x.split("step ")[1].split("/")[0] for x in lines] == [str(s) for s in range(5, 13)], lines
    assert "step 12/12 (100.0%), loss " in lines[-1] and "tok/s/gpu" in lines[-1] and "ETA 0:00:00" in lines[-1]

    want = curve(run)
    assert sorted(want) == list(range(1, 13))
    # W&B: the same run id continued by the resumed job; together its segments hold every step
    run_id = (run / "wandb_id").read_text().strip()
    segments = sorted((run / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and all(s.name.endswith(run_id) for s in segments)
    got = {}
    for s in segments:
        for h in _wandb_history(s / f"run-{run_id}.wandb"):
            if "train/loss" in h:
                got[h["_step"]] = h["train/loss"]
    assert sorted(got) == list(range(1, 13)) and max(abs(got[s] - want[s]) for s in want) < 1e-6
    # TensorBoard: the same curve (the resumed job's value where a step was logged twice)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = {}
    for f in sorted((run / "tensorboard").glob("events.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(f))
        acc.Reload()
        tb.update({e.step: e.value for e in acc.Scalars("train/loss")})
    assert sorted(tb) == list(range(1, 13)) and max(abs(tb[s] - want[s]) for s in want) < 1e-5
