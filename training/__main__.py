"""``python -m lrpipe.training text|mllm|export ...`` = ``pipe train ...`` (for ``torchrun -m``)."""

import sys

from lrpipe.cli import main

if __name__ == "__main__":
    sys.argv = ["pipe", "train", *sys.argv[1:]]
    main()
