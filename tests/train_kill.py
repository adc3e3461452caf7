"""Under torchrun: ``pipe train`` whose rank 0 dies by SIGKILL right after it logs step N, i.e. after
the step's update and before its checkpoint (the crash the resume tests recover from). The fault is
injected here, around the library's own log writer, so the training loop carries no test hook.

Usage: ``torchrun ... tests/train_kill.py N text --data ... --out ...``
"""

import os
import sys

if __name__ == "__main__":
    from lrpipe.cli import main
    from lrpipe.training import metrics

    kill_at = int(sys.argv.pop(1))
    write = metrics.RunLog.write

    def write_then_die(self: metrics.RunLog, rec: dict) -> None:
        write(self, rec)
        if self.rank == 0 and rec.get("step") == kill_at and "loss" in rec:
            os.kill(os.getpid(), 9)

    metrics.RunLog.write = write_then_die  # type: ignore[method-assign]
    sys.argv = ["pipe", "train", *sys.argv[1:]]
    main()
