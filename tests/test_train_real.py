"""pipe train on real checkpoints and real launchers: a bf16-saved checkpoint (how every released model
is saved) trains with fp32 masters on every rank; preemption signals sent to the launcher (torchrun, or
the Slurm batch script with srun shimmed) leave a checkpoint at the step in progress and no orphan; the
embedded SmolLM2, saved as its upstream release is (bf16 safetensors), fine-tunes on real `pipe run
magpie` rows and its export generates through vLLM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.test_train import PY, ROOT, _env, curve, torchrun
from tests.train_fixtures import packed_data

FIXED_CONVERSATIONS = ROOT / "tests" / "data" / "fixed_conversations.jsonl"

torch = pytest.importorskip("torch")


def save_bf16(src: Path | str, dst: Path, seed: int | None = 0) -> Path:
    """The model in ``src`` (or a fresh one from its config, with ``seed``) saved the way released
    checkpoints are: bf16 safetensors, ``"dtype": "bfloat16"`` in config.json, tokenizer beside it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if seed is None:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    else:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src), dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    assert json.loads((dst / "config.json").read_text())["dtype"] == "bfloat16"
    return dst


@pytest.fixture(scope="module")
def bf16_fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    model, data = packed_data(root, n=200)
    return root, save_bf16(model, root / "tiny-bf16"), data


def reference_step(model_dir: Path, data: Path, lr: float) -> tuple[dict, dict]:
    """One optimizer step in one process, fp32 throughout, on the rows the 2-rank run takes at step 0:
    (weights before, weights after)."""
    from transformers import AutoModelForCausalLM

    from lrpipe.training.backends import make_optimizer
    from lrpipe.training.config import TrainConfig
    from lrpipe.training.data import Layout, StepSampler
    from lrpipe.training.text import TextTask

    cfg = TrainConfig(model=str(model_dir), data=str(data), out="unused", dtype="fp32", lr=lr, global_batch=8,
                      micro_batch=2, seed=0, gradient_checkpointing=False)
    task = TextTask(cfg)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=task.attn)
    model.train()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lay = Layout.plan(micro=2, world=2, seq_len=task.seq_len, tokens_per_step=None, global_batch=8)
    sampler = StepSampler(task.n_rows, lay, cfg.seed)
    batches = [task.batch(sampler.rows(0, k, r)) for r in range(2) for k in range(lay.accum)]
    n = sum(task.loss_tokens(b) for b in batches)
    for b in batches:  # the loop's loss: summed over tokens, divided by the global batch's loss tokens
        task.forward(model, b, float(n)).backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters()], cfg.max_grad_norm)
    make_optimizer(model, cfg, SimpleNamespace(device=torch.device("cpu"))).step()  # warmup of 1 step: lr × 1
    return before, {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_fp32_dcp(ck: Path) -> None:
    """FSDP2: every tensor the ranks saved (weights, Adam's moments) is fp32, and each rank's chunks
    hold 4 bytes an element (plus a small header)."""
    from math import prod

    import torch.distributed.checkpoint as dcp

    md = dcp.FileSystemReader(str(ck)).read_metadata()
    meta = md.state_dict_metadata
    dtypes = {k: m.properties.dtype for k, m in meta.items() if hasattr(m, "properties")}
    assert {k for k in dtypes if k.startswith("optim.state.") and k.endswith("exp_avg_sq")}
    assert set(dtypes.values()) == {torch.float32}, {k: v for k, v in dtypes.items() if v != torch.float32}
    per_rank: dict[str, int] = {}
    for idx, info in md.storage_data.items():
        if not hasattr(meta[idx.fqn], "chunks"):  # pickled values (the optimizer's param groups)
            continue
        chunk = next(c for c in meta[idx.fqn].chunks if tuple(c.offsets) == tuple(idx.offset))
        n = prod(chunk.sizes)
        if n >= 1000:
            assert 4 * n <= info.length < 4 * n + 4096, (idx.fqn, info.relative_path, info.length, n)
            per_rank[info.relative_path] = per_rank.get(info.relative_path, 0) + 1
    assert sorted(per_rank) == ["__0_0.distcp", "__1_0.distcp"] and min(per_rank.values()) > 20


def assert_fp32_deepspeed(ck: Path) -> None:
    """DeepSpeed: each rank's partition of the masters and of Adam's moments is fp32."""
    files = sorted((ck / "deepspeed").glob("zero_pp_rank_*_optim_states.pt"))
    assert len(files) == 2
    for f in files:
        opt = torch.load(f, weights_only=False)["optimizer_state_dict"]
        assert {t.dtype for t in opt["fp32_flat_groups"]} == {torch.float32}
        moments = [v for st in opt["optimizer_state_dict"]["state"].values() for k, v in st.items() if k != "step"]
        assert moments and {m.dtype for m in moments} == {torch.float32} and sum(m.numel() for m in moments) > 1000


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["fsdp2", "deepspeed"])
def test_a_bf16_checkpoint_trains_with_fp32_masters_on_every_rank(bf16_fixture, tmp_path, parallel):
    from transformers import AutoConfig, AutoModelForCausalLM

    from lrpipe.training.checkpoint import latest_checkpoint, load_model_weights

    if parallel == "deepspeed":
        pytest.importorskip("deepspeed")
    root, model, data = bf16_fixture
    run = tmp_path / "run"
    res = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                          "lrpipe.training", "text", "--data", str(data), "--model", str(model), "--out", str(run),
                          "--dtype", "fp32", "--max-steps", "1", "--lr", "1e-5", "--global-batch", "8",
                          "--micro-batch", "2", "--seed", "0", "--no-gradient-checkpointing", "--no-export",
                          "--parallel", parallel],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ck = latest_checkpoint(run)
    (assert_fp32_dcp if parallel == "fsdp2" else assert_fp32_deepspeed)(ck)
    # the step is the fp32 AdamW step of a single-process reference: ~lr on (almost) every weight,
    # which bf16 masters would have rounded away
    before, ref = reference_step(model, data, 1e-5)
    trained = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model), dtype=torch.float32)
    load_model_weights(ck, trained)
    got = trained.state_dict()
    changed = total = 0
    for k, w0 in before.items():
        d_ref, d_got = ref[k] - w0, got[k] - w0
        assert (d_got - d_ref).abs().max() < 5e-8, (k, (d_got - d_ref).abs().max())
        changed += int((d_got.abs() > 5e-6).sum())
        total += w0.numel()
        rounded = (w0 + d_got).to(torch.bfloat16).float() - w0  # what a bf16 master would have kept
        assert (rounded == 0).float().mean() > 0.5, k
    assert changed / total > 0.7  # the rest: embedding rows of tokens not in the batch (weight decay only)


def test_the_loaded_weights_are_cast_one_tensor_at_a_time(tmp_path):
    """Single process, the same code path: a bf16 checkpoint gives fp32 shards equal to its values."""
    from transformers import AutoModelForCausalLM

    from lrpipe.training.config import TrainConfig
    from lrpipe.training.parallel import init_distributed, make_mesh, materialize, shutdown
    from lrpipe.training.text import TextTask

    model, data = packed_data(tmp_path, n=40)
    bf16 = save_bf16(model, tmp_path / "bf16")
    task = TextTask(TrainConfig(model=str(bf16), data=str(data), out=str(tmp_path / "o"), dtype="fp32",
                                gradient_checkpointing=False))
    env = init_distributed()
    try:
        sharded = materialize(task.build, task.prepare, env, make_mesh(env, "full"), bf16=False)
        ref = AutoModelForCausalLM.from_pretrained(bf16)  # bf16 values
        for (k, p), r in zip(sharded.state_dict().items(), ref.state_dict().values()):
            local = p.to_local() if hasattr(p, "to_local") else p
            assert local.dtype == torch.float32 and torch.equal(local, r.float()), k
        buf = dict(sharded.named_buffers())["model.rotary_emb.inv_freq"]
        assert buf.dtype == torch.float32 and torch.allclose(buf, dict(ref.named_buffers())["model.rotary_emb.inv_freq"].float())
    finally:
        shutdown()


# ------------------------------------------------------------------------------ preemption at the launcher
LONG = ["--init", "random", "--max-steps", "100000", "--epochs", "1000", "--global-batch", "8", "--micro-batch", "2", "--lr", "1e-4",
        "--save-every", "100000", "--dtype", "fp32", "--seed", "0", "--no-export", "--no-gradient-checkpointing"]


def leftovers(run: Path) -> list[int]:
    """Processes still alive whose command line names the run folder."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if str(run).encode() in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


def shims(root: Path) -> tuple[Path, Path]:
    """``srun`` (runs its command, options dropped) and ``scontrol`` (hostnames; requeue logged)."""
    d = root / "shims"
    d.mkdir(exist_ok=True)
    log = root / "scontrol.log"
    (d / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (d / "scontrol").write_text(f'#!/bin/bash\nif [ "$1" = show ]; then echo localhost; else echo "$@" >> {log}; fi\n')
    for f in ("srun", "scontrol"):
        (d / f).chmod(0o755)
    return d, log


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("launcher,sig", [("torchrun", "SIGUSR1"), ("torchrun", "SIGTERM"),
                                          ("torchrun --signals-to-handle", "SIGUSR1"),
                                          ("sbatch", "SIGUSR1"), ("sbatch", "SIGTERM")])
def test_a_signal_to_the_launcher_leaves_a_checkpoint_and_no_orphan(bf16_fixture, tmp_path, launcher, sig):
    root, _, data = bf16_fixture
    model = root / "tiny-llama"
    run = tmp_path / "run"
    env = _env()
    if launcher == "sbatch":
        shim_dir, requeued = shims(tmp_path)
        env.update(PATH=f"{shim_dir}:{Path(PY).parent}:{env['PATH']}", RUN=str(run), DATA=str(data), RECIPE="",
                   GPUS_PER_NODE="2", SLURM_JOB_ID="4242", SLURM_NNODES="1", SLURM_JOB_NODELIST="localhost",
                   RDZV_PORT=str(free_port()), SHUTDOWN_TIMEOUT="120")
        cmd = ["bash", str(ROOT / "training" / "slurm" / "train-8b.sbatch"), "--model", str(model), *LONG]
    else:
        flags = ["--signals-to-handle", "SIGTERM,SIGINT,SIGUSR1"] if "signals" in launcher else []
        cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *flags, "-m",
               "lrpipe.training", "text", "--data", str(data), "--model", str(model), "--out", str(run), *LONG]
    log = open(tmp_path / "launcher.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not ((run / "log.jsonl").exists() and len(curve(run)) >= 3):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "launcher.log").read_text()[-3000:]
            time.sleep(0.2)
        os.kill(proc.pid, getattr(signal, sig))  # to the launcher only, as Slurm or an operator would
        rc = proc.wait(timeout=300)
        deadline = time.time() + 120
        while leftovers(run) and time.time() < deadline:  # ranks whose launcher died finish on their own
            time.sleep(0.5)
        assert not leftovers(run), "orphaned ranks"
    finally:
        for pid in leftovers(run):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    events = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"event"' in x]
    assert events[-1]["event"] == "preempted", (tmp_path / "launcher.log").read_text()[-3000:]
    stopped = events[-1]["step"]
    assert [p.name for p in sorted((run / "checkpoints").glob("step_*"))] == [f"step_{stopped:08d}"]
    assert not (run / "STOP").exists()
    if launcher == "sbatch":
        assert rc == 0 and requeued.read_text().split() == ["requeue", "4242"]
    # the rerun (what the requeued job runs) resumes at that step
    torchrun(run, data, model, "--max-steps", str(stopped + 1), "--save-every", "100000", "--no-export")
    events = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"event"' in x]
    assert [e["event"] for e in events[-2:]] == ["resume", "done"] and events[-2]["step"] == stopped


# ------------------------------------------------------------------------------ export memory
@pytest.mark.slow
def test_export_streams_shards_and_never_holds_the_model(bf16_fixture, tmp_path):
    """A ~46M-parameter model (185 MB in fp32) exported in 10 MB shards: the exporting process grows by
    a fraction of the model's size (the old path built the whole fp32 model first), and the folder loads
    with transformers to the checkpoint's weights."""
    from transformers import AutoModelForCausalLM

    from lrpipe.training.checkpoint import latest_checkpoint, load_model_weights

    _, _, data = bf16_fixture
    probe = str(ROOT / "tests" / "export_rss.py")
    made = subprocess.run([PY, probe, "make", str(tmp_path / "run"), str(data)], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    n_params = json.loads(made.stdout.strip().splitlines()[-1])["params"]
    model_kb = 4 * n_params / 1024
    res = subprocess.run([PY, probe, "export", str(tmp_path / "run"), str(tmp_path / "hf"), str(10 * 1000**2)],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    mem = json.loads(res.stdout.strip().splitlines()[-1])
    shards = sorted((tmp_path / "hf").glob("model-*.safetensors"))
    assert len(shards) >= 8 and (tmp_path / "hf" / "model.safetensors.index.json").exists()
    assert mem["peak"] - mem["before"] < 0.5 * model_kb, (mem, model_kb)  # the old path: > 1.0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    ref = AutoModelForCausalLM.from_config(hf.config, dtype=torch.float32)
    load_model_weights(latest_checkpoint(tmp_path / "run"), ref)
    for (k, a), b in zip(hf.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


# ------------------------------------------------------------------------------ the embedded model, for real
@pytest.mark.slow
@pytest.mark.vllm
def test_fine_tune_the_embedded_model_and_generate_from_the_export(tmp_path, model_path):
    """SmolLM2-135M-Instruct saved as its upstream release is (bf16 safetensors) fine-tunes on packed
    rows of fixed conversations (2 ranks, FSDP2, fp32 masters), its loss falls, and the exported folder
    loads in vLLM and generates through pipe's engine layer.

    The data is a fixed file, not a sampled run: what a 135M model samples differs from one CPU to the
    next, and with it the curve. On these 12 conversations (3 packed rows, each seen 8 times in 12 steps)
    the mean loss of steps 1-3 was 1.74 and of steps 10-12 0.074 (ratio 0.04), the same to three decimals
    with the default (AMX), AVX-512 and AVX2 kernels (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA). The test
    asks for a ratio under 0.5: a model that does not learn stays near 1, and the margin is 12x."""
    from typer.testing import CliRunner

    from lrpipe.chat import chat_prompt_ids
    from lrpipe.cli import app
    from lrpipe.engines.base import GenRequest, Sampling
    from lrpipe.engines.vllm_engine import VLLMEngine
    from lrpipe.shards import ShardDir

    base = save_bf16(model_path, tmp_path / "smollm2-bf16", seed=None)
    r = CliRunner().invoke(app, ["pack", "--input", str(FIXED_CONVERSATIONS), "--out", str(tmp_path / "packed"),
                                 "--tokenizer", str(base), "--seq-len", "512", "--no-progress"])
    assert r.exit_code == 0, r.output
    n_rows = ShardDir.open(tmp_path / "packed").manifest()["totals"]["rows_out"]
    assert n_rows >= 2
    run = tmp_path / "run"
    res = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                          "lrpipe.training", "text", "--data", str(tmp_path / "packed"), "--model", str(base),
                          "--out", str(run), "--dtype", "fp32", "--lr", "1e-4", "--warmup-ratio", "0.05",
                          "--global-batch", "2", "--micro-batch", "1", "--epochs", "100", "--max-steps", "12",
                          "--no-gradient-checkpointing", "--save-every", "1000"],
                         env=_env(), capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    losses = curve(run)
    assert sorted(losses) == list(range(1, 13))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (10, 11, 12)) / 3
    assert last < 0.5 * first, losses
    final = run / "final"
    assert (final / "model.safetensors").exists() and (final / "tokenizer_config.json").exists()
    eng = VLLMEngine(str(final), gpu_memory_utilization=0.1, max_model_len=1024)
    try:
        prompts = [chat_prompt_ids(eng.tokenizer, [{"role": "user", "content": q}])
                   for q in ("What is the capital of France?", "Give me two tips to sleep better.")]
        out = list(eng.generate(GenRequest(key=i, prompt=p, sampling=Sampling(temperature=0.0, max_tokens=16))
                                for i, p in enumerate(prompts)))
    finally:
        eng.close()
    assert sorted(o.key for o in out) == [0, 1]
    assert all(o.finish_reason in ("stop", "length") and o.output_tokens > 0 and o.text.strip() for o in out), out
