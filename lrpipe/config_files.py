"""One loader for every YAML file pipe reads: translation and mixture recipes, training recipes, MT
presets, filter chains, multimodal task files, the text suites, judge criteria, prompt tables.

* **Found the same way**: a path to a ``.yaml`` file, or the name of one shipped in a search folder
  (``a-okvqa`` → ``pipelines/recipes/translate/a-okvqa.yaml``); an unknown name lists what there is.
* **Errors the same way**: a YAML syntax error names the file, line and column; a file that is not the
  expected mapping or list says so; a pydantic model's refusal lists *every* problem, one line each,
  each with the file and the key (``recipe.yaml: sampling.temperature: Input should be a valid
  number``), so a user fixes a file in one go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from lrpipe.errors import InputError

M = TypeVar("M", bound=BaseModel)


class ConfigError(InputError):
    """A configuration file that cannot be used as it is: one line per problem, each naming the file."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems[:1] + [f"{path}: {p}" for p in problems[1:]]), path=str(path))


def available(folder: Path) -> list[str]:
    """Names of the YAML files shipped in ``folder``."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def find(name_or_path: str | Path, folder: Path | None, kind: str) -> Path:
    """A path to a YAML file, or a name in ``folder``."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    if folder is not None and (folder / f"{name_or_path}.yaml").exists():
        return folder / f"{name_or_path}.yaml"
    if p.exists() and p.is_file():
        return p
    have = f" (have: {', '.join(available(folder))}; or a .yaml path)" if folder is not None else ""
    raise InputError(f"no {kind} '{name_or_path}'{have}", path=None if folder is not None else str(p))


def read_yaml(path: str | Path, kind: str = "file", expect: type | tuple[type, ...] | None = dict) -> Any:
    """The parsed file (an empty file is an empty mapping when a mapping is expected)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise InputError(f"cannot read the {kind} ({e.strerror or e})", path=str(path)) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(path, [f"invalid YAML{at}: {problem}"]) from e
    if data is None and expect is dict:
        data = {}
    if expect is not None and not isinstance(data, expect):
        want = "a mapping of keys" if expect is dict else "a list" if expect is list else str(expect)
        raise ConfigError(path, [f"a {kind} is {want}, not {type(data).__name__}"])
    return data


def problems_of(e: ValidationError) -> list[str]:
    """Every problem of a pydantic refusal: ``key.path: message (got value)``."""
    out = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__") or "(top level)"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        got = err.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, dict | list) and len(repr(got)) < 60 else ""
        out.append(f"{loc}: {msg}{shown}")
    return out


def validate(model: type[M], data: Any, path: str | Path, kind: str) -> M:
    """``model`` from ``data`` read from ``path``; a refusal lists every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = problems_of(e)
        problems[0] = f"invalid {kind}: {problems[0]}"
        raise ConfigError(path, problems) from e


def load(model: type[M], name_or_path: str | Path, folder: Path | None = None, *, kind: str,
         update: Any = None) -> M:
    """Find, read and validate a YAML file as ``model``; ``update(data)`` may change the mapping
    first (command-line overrides, paths relative to the file)."""
    path = find(name_or_path, folder, kind)
    data = read_yaml(path, kind)
    if update is not None:
        update(data, path)
    return validate(model, data, path, kind)
