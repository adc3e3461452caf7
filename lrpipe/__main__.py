"""``python -m lrpipe``: the ``pipe`` command (how ``--dp`` starts its replicas)."""

from lrpipe.cli import main

main()
