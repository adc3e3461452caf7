"""The ``pipe`` command: a Typer app whose command groups live in one module each (``common`` holds
what they share). Importing this package registers every command."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from lrpipe.cli import data, evaluate, hub, study, train  # noqa: F401  (registers the commands)
from lrpipe.cli.common import app
from lrpipe.errors import PipeError

__all__ = ["app", "main"]


def main() -> None:
    """Run ``pipe``. Every failure is one line on stderr: a bad option names the option (click's
    message without its usage box), a :class:`PipeError` is its message, and anything unexpected is
    its type and message with the path of a log file that holds the traceback."""
    import typer

    click = _click()

    logging.basicConfig(level=os.environ.get("PIPE_LOG", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    try:
        code = app(standalone_mode=False)
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx is not None else "pipe"
        print(f"error: {cmd}: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as e:
        print(f"error: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except PipeError as e:  # raised outside a command's own handler
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - a bug: one line here, the traceback in a file
        log = _traceback_file()
        print(f"error: {type(e).__name__}: {e} (a bug in pipe: the traceback is in {log})", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _click() -> object:
    """The exceptions of the click Typer runs on: Typer 0.2x vendors its own (``typer._click``), older
    releases use click itself."""
    import typer

    vendored = getattr(getattr(typer.core, "_click", None), "exceptions", None)
    if vendored is not None and hasattr(vendored, "UsageError"):
        return vendored
    import click.exceptions

    return click.exceptions


def _traceback_file() -> str:
    """Write the current exception's traceback to ``$LRPIPE_CACHE/logs`` (or the temp folder)."""
    import tempfile
    import time
    import traceback

    folder = Path(os.environ.get("LRPIPE_CACHE", Path.home() / ".cache" / "lrpipe")) / "logs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir())
    path = folder / f"pipe-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text(" ".join(sys.argv) + "\n\n" + traceback.format_exc())
    return str(path)

