"""Memory probe for the streaming export (run in a fresh process so its peak RSS is its own).

    export_rss.py make RUN DATA   a real FSDP2 checkpoint of a ~46M-parameter Llama (one process)
    export_rss.py export RUN OUT MAX_SHARD_BYTES    prints {"before": kB, "peak": kB} around the export
"""

import json
import sys
from pathlib import Path


def vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


if __name__ == "__main__":
    import torch

    from lrpipe.training.config import TrainConfig

    run = Path(sys.argv[2])
    if sys.argv[1] == "make":
        from transformers import LlamaConfig

        from lrpipe.training import checkpoint as ckpt
        from lrpipe.training.backends import make_optimizer
        from lrpipe.training.parallel import init_distributed, make_mesh, materialize, shutdown
        from lrpipe.training.text import TextTask

        run.mkdir(parents=True)
        LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1408, num_hidden_layers=12,
                    num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False).save_pretrained(run / "m")
        cfg = TrainConfig(model=str(run / "m" / "config.json"), data=sys.argv[3], out=str(run), init="random",
                          dtype="fp32", gradient_checkpointing=False)
        (run / "config.json").write_text(json.dumps(cfg.model_dump()))
        task = TextTask(cfg)
        env = init_distributed()
        model = materialize(task.build, task.prepare, env, make_mesh(env, "full"), bf16=False)
        optim = make_optimizer(model, cfg, env)
        sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 1.0)
        ckpt.save(run, 1, model, optim, sched, 0, 1)
        print(json.dumps({"params": sum(p.numel() for p in model.parameters())}))
        shutdown()
    else:
        import safetensors.torch  # noqa: F401  (everything the export imports, before the baseline)
        import torch.distributed.checkpoint  # noqa: F401
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM, GenerationConfig  # noqa: F401

        from lrpipe.training import export  # noqa: F401
        from lrpipe.training.checkpoint import latest_checkpoint
        from lrpipe.training.text import export_causal_lm

        cfg = TrainConfig.model_validate(json.loads((run / "config.json").read_text()))
        ck = latest_checkpoint(run)
        before = vm("VmHWM")
        export_causal_lm(cfg, ck, Path(sys.argv[3]), None, max_shard_bytes=int(sys.argv[4]))
        print(json.dumps({"before": before, "peak": vm("VmHWM")}))
