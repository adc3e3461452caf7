"""Prompt files (jinja2) shipped in ``prompts/`` as package data, or from a user folder."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from lrpipe.errors import InputError


def prompt_root() -> Path:
    return Path(str(resources.files("lrpipe.prompts")))


def list_prompts(folder: str, root: str | Path | None = None) -> list[str]:
    base = Path(root) if root else prompt_root() / folder
    if not base.is_dir():
        raise InputError("prompt folder not found", path=str(base))
    return sorted(p.stem for p in base.glob("*.j2"))


def load_prompt(folder: str, name: str, root: str | Path | None = None, **variables: Any) -> str:
    """Render ``<root or prompts/folder>/<name>.j2`` with ``variables`` (StrictUndefined: a missing
    variable is an error naming the file, not a silently empty string)."""
    base = Path(root) if root else prompt_root() / folder
    path = base / f"{name}.j2"
    if not path.exists():
        raise InputError(f"no prompt '{name}' (have: {', '.join(list_prompts(folder, root)) or 'none'})",
                         path=str(path))
    try:
        return _compiled(str(path), path.stat().st_mtime_ns).render(**variables).strip()
    except jinja2.TemplateError as e:
        raise InputError(f"template error: {e}", path=str(path)) from e


@functools.lru_cache(maxsize=256)
def _compiled(path: str, mtime_ns: int) -> jinja2.Template:
    """Templates are rendered once per row on million-row jobs: compile each file once (per version)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
    return env.from_string(Path(path).read_text())
