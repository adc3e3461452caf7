"""The ``pipe`` command: a Typer app whose command groups live in one module each (``common`` holds
what they share). Importing this package registers every command."""

from __future__ import annotations

import logging
import os
import sys

from lrpipe.cli import data, evaluate, hub, study, train  # noqa: F401  (registers the commands)
from lrpipe.cli.common import app
from lrpipe.errors import PipeError

__all__ = ["app", "main"]


def main() -> None:
    logging.basicConfig(level=os.environ.get("PIPE_LOG", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    try:
        app()
    except PipeError as e:  # raised outside a command's own handler
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)

