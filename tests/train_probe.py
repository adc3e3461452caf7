"""Under torchrun: the logits of a fixed batch from the *sharded* model restored from a checkpoint
(the test compares them with the exported HF folder's). Usage: train_probe.py RUN OUT.npy"""

import sys
from pathlib import Path

if __name__ == "__main__":
    import json

    import numpy as np
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from lrpipe.training.checkpoint import latest_checkpoint
    from lrpipe.training.config import TrainConfig
    from lrpipe.training.parallel import init_distributed, make_mesh, materialize
    from lrpipe.training.text import TextTask

    run, out = Path(sys.argv[1]), sys.argv[2]
    cfg = TrainConfig.model_validate(json.loads((run / "config.json").read_text()))
    task = TextTask(cfg)
    env = init_distributed()
    model = materialize(task.build, task.prepare, env, make_mesh(env, "full"), bf16=False)
    sd = get_model_state_dict(model)
    state = {"model": sd}
    dcp.load(state, checkpoint_id=str(latest_checkpoint(run)))
    set_model_state_dict(model, state["model"])
    model.eval()
    ids = torch.tensor([[5, 17, 33, 2, 99, 41, 8, 64, 120, 7, 300, 12]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    if env.rank == 0:
        np.save(out, logits.float().numpy())
    torch.distributed.destroy_process_group()
