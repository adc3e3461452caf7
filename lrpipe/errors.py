"""Errors a user can act on.

Every error raised for bad input names the file, row and field it is about, so that a two-day
job that stops says exactly what to fix. The CLI turns a :class:`PipeError` into one message on
stderr and a non-zero exit code (its ``exit_code``), never a traceback.
"""

from __future__ import annotations


class PipeError(Exception):
    """Base class: an error whose message is meant for the user, with an exit code."""

    exit_code = 1


class InputError(PipeError):
    """The input cannot be read as asked (missing file, unreadable shard, wrong column, bad row)."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 field: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        self.path, self.row, self.field = path, row, field
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")


class ConfigMismatchError(PipeError):
    """An output directory holds work made with another configuration."""

    exit_code = 3


class ModelError(PipeError):
    """The model cannot do what the stage needs (for example a base model for Magpie)."""

    exit_code = 4


class AccountingError(PipeError):
    """A stage returned rows that do not add up (rows in != rows out + rows rejected): a bug."""

    exit_code = 5
