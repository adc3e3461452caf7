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


class RowError(InputError):
    """One row cannot be read as the stage expects (unknown role, wrong type, null where text is
    needed). Stages reject that row with the message as its ``reject_detail`` and go on; only faults
    that make a whole input unreadable stop a job."""


class ConfigMismatchError(PipeError):
    """An output directory holds work made with another configuration."""

    exit_code = 3


class ModelError(PipeError):
    """The model cannot do what the stage needs (for example a base model for Magpie)."""

    exit_code = 4


class AccountingError(PipeError):
    """A stage returned rows that do not add up (rows in != rows out + rows rejected): a bug."""

    exit_code = 5


def validation_message(e: Exception, option: dict[str, str] | None = None, where: str | None = None) -> str:
    """One line from a pydantic ``ValidationError``: the first problem, named by its command-line option
    (``option`` maps a field path such as ``response.max_tokens`` to ``--response-max-tokens``; by
    default ``n`` → ``--n``) or, for a file, by its key; plus how many more there are."""
    errors = e.errors() if hasattr(e, "errors") else []
    if not errors:
        return str(e).splitlines()[0]
    first = errors[0]
    loc = ".".join(str(x) for x in first.get("loc", ()) if x != "__root__")
    name = (option or {}).get(loc) or (f"--{loc.replace('_', '-').replace('.', '-')}" if where is None else loc)
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    got = first.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, dict | list) and len(repr(got)) < 60 else ""
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    head = f"{where}: " if where else ""
    return f"{head}invalid {name}: {msg}{shown}{more}" if name else f"{head}{msg}{shown}{more}"
