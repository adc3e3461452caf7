"""The study file: a published study as data (README: "Reproduce the studies").

A study names its language pair, its models, its external inputs and its **steps**. A step is one
``pipe`` command (``run: translate``) with exactly that command's options (``options: {max-tokens:
512}``) and positional arguments; nothing is learnt twice, and every option is checked against the
command itself. Steps name what they read by step name, never by path: a value ``@magpie/filtered``
is the ``filtered`` folder of step ``magpie``'s output, ``@corpus`` one of the study's ``sources`` (a
file next to the study file, or a Hub id), ``@*/answer`` the ``answer`` step of every grid cell (a
repeated option). ``{target_lang}``, ``{models.judge}`` and a grid cell's ``{cell}``, ``{backbone}``,
``{backbone.model}`` are replaced in every string; a mapping given as an option (a mixture recipe
inline) is written to a YAML file and passed as its path.

The **grid** expands step templates over its axes (mixtures × backbones × ...) into named cells
(``INS_EN_C_EU_I_EN+EU``), each with its own steps (``<cell>/pack``, ``<cell>/train``...); ``final``
steps come after the grid and may read every cell. :func:`expand` gives the steps in the study's
order, each with its command line, its output folder and the steps it reads.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lrpipe.errors import InputError

STUDIES = Path(__file__).resolve().parents[2] / "pipelines" / "recipes" / "studies"
_NAME = r"^[A-Za-z0-9{][A-Za-z0-9_.+\-/{}]*$"


class Expect(BaseModel):
    """What a step is expected to produce and cost, where it cannot be derived from its options (a corpus
    of N tokens, an evaluation of H GPU hours). In a grid, values may be templates (``"{data.tokens}"``)."""

    model_config = ConfigDict(extra="forbid")
    rows: float | str | None = None
    tokens: float | str | None = None
    gpu_hours: float | str | None = None

    def filled(self, variables: dict[str, Any], where: str) -> Expect:
        data = {k: _fill(v, variables, where) for k, v in self.model_dump().items() if v is not None}
        try:
            return Expect.model_validate({k: float(v) for k, v in data.items()})
        except ValueError as e:
            raise InputError(f"expect: not a number ({e})", path=where) from e


class SlurmSpec(BaseModel):
    """How ``pipe study submit`` sizes the step's job."""

    model_config = ConfigDict(extra="forbid")
    array: int = Field(1, ge=1)          # generation: array tasks (nodes), each a rank group of one output
    nodes: int = Field(1, ge=1)          # training: nodes
    gpus_per_node: int = Field(8, ge=0)
    tp: int = Field(1, ge=1)
    time: str = "24:00:00"
    partition: str | None = None


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=_NAME)
    run: str
    args: list[Any] = []
    options: dict[str, Any] = {}
    #: how it starts: one process, or torchrun with ``nproc`` processes (default: this node's GPUs, else 2)
    launcher: Literal["local", "torchrun"] = "local"
    nproc: int | None = Field(None, ge=1)
    #: the folder under the step's output that holds its result (``run magpie``: filtered)
    output: str | None = None
    after: list[str] = []
    expect: Expect | None = None
    slurm: SlurmSpec = SlurmSpec()
    #: where and why this step differs from the paper (shown by ``pipe study plan``)
    note: str = ""

    @field_validator("run")
    @classmethod
    def _words(cls, v: str) -> str:
        if not v.split():
            raise ValueError("name the pipe command, e.g. 'translate' or 'run magpie'")
        return " ".join(v.split())


class Grid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: axis → values: a list of names, or {name: {field: value}} (``{backbone.model}`` in templates)
    axes: dict[str, list[str] | dict[str, dict[str, Any]]]
    name: str = Field(pattern=_NAME)
    #: combinations left out (Table 3's gray cells): each a mapping of axis values
    exclude: list[dict[str, str]] = []
    steps: list[StepSpec]


class Throughput(BaseModel):
    """Tokens per second per GPU, for ``pipe study plan``'s GPU-hour estimates (a measured run's figures
    replace them: ``--measured``)."""

    model_config = ConfigDict(extra="forbid")
    generate: float = Field(1500.0, gt=0)
    train: float = Field(3000.0, gt=0)
    eval: float = Field(20000.0, gt=0)


class Study(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    paper: str = ""
    source_lang: str = "en"
    target_lang: str
    models: dict[str, str] = {}
    #: external inputs: files (relative to the study file), folders, Hub ids
    sources: dict[str, str] = {}
    throughput: Throughput = Throughput()
    #: the study's own notes: what differs from the paper and why
    notes: list[str] = []
    steps: list[StepSpec] = []
    grid: Grid | None = None
    final: list[StepSpec] = []


def list_studies() -> list[str]:
    return sorted(p.stem for p in STUDIES.glob("*.yaml"))


def load_study(name_or_path: str | Path) -> tuple[Study, Path]:
    """A study (shipped name or path), validated: every problem one line naming the file and key."""
    from lrpipe.config_files import find, read_yaml, validate

    path = find(name_or_path, STUDIES, "study")
    return validate(Study, read_yaml(path, "study"), path, "study"), path


# ------------------------------------------------------------------------------------------ expansion
@dataclass
class Step:
    """One expanded step: what ``pipe study`` runs."""

    name: str
    run: str
    args: list[Any]
    options: dict[str, Any]
    launcher: str
    nproc: int | None
    output: str | None
    deps: list[str]
    spec: StepSpec
    cell: str | None = None
    axes: dict[str, str] = field(default_factory=dict)

    @property
    def words(self) -> list[str]:
        return self.run.split()


_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")


def _fill(value: Any, variables: dict[str, Any], where: str) -> Any:
    """``{var}`` replaced in every string of ``value`` (mappings and lists walked)."""
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in variables:
                raise InputError(f"unknown variable {{{m.group(1)}}} (have: {', '.join(sorted(variables))})",
                                 path=where)
            return str(variables[m.group(1)])

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [_fill(v, variables, where) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, variables, where) for k, v in value.items()}
    return value


def _refs(value: Any) -> list[str]:
    """Every ``@ref`` in ``value``."""
    if isinstance(value, str):
        return [value[1:]] if value.startswith("@") else []
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs(v)]
    return []


def cells(grid: Grid) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """(cell name, axis values, template variables) of every grid cell, in axis order."""
    names = list(grid.axes)
    values = [list(v) if isinstance(v, list) else list(v) for v in grid.axes.values()]
    out = []
    for combo in itertools.product(*values):
        axes = dict(zip(names, combo))
        if any(all(axes.get(k) == v for k, v in ex.items()) for ex in grid.exclude):
            continue
        variables: dict[str, Any] = dict(axes)
        for axis, value in axes.items():
            payload = grid.axes[axis]
            if isinstance(payload, dict):
                for k, v in (payload[value] or {}).items():
                    variables[f"{axis}.{k}"] = v
        name = _fill(grid.name, variables, "grid.name")
        out.append((name, axes, variables))
    return out


def expand(study: Study, path: Path) -> list[Step]:
    """The study's steps in order (its ``steps``, each grid cell's, its ``final`` ones), with templates
    filled and the steps each reads (``deps``); an unknown reference or variable, a repeated name or a
    cycle is an error naming the file and the step."""
    base = {"study": study.name, "source_lang": study.source_lang, "target_lang": study.target_lang,
            **{f"models.{k}": v for k, v in study.models.items()}}
    raw: list[tuple[StepSpec, dict[str, Any], str | None, dict[str, str]]] = []
    raw += [(s, base, None, {}) for s in study.steps]
    grid_steps: dict[str, list[str]] = {}
    if study.grid is not None:
        for cell, axes, variables in cells(study.grid):
            for s in study.grid.steps:
                raw.append((s, {**base, **variables, "cell": cell}, cell, axes))
                grid_steps.setdefault(s.name, []).append(f"{cell}/{s.name}")
    raw += [(s, base, None, {}) for s in study.final]

    steps: list[Step] = []
    names: set[str] = set()
    for spec, variables, cell, axes in raw:
        where = f"{path}: {'grid.' if cell else ''}steps.{spec.name}"
        name = f"{cell}/{spec.name}" if cell else _fill(spec.name, variables, where)
        if name in names:
            raise InputError(f"two steps are named '{name}'", path=str(path))
        names.add(name)
        args = _fill(spec.args, variables, where)
        options = _fill(spec.options, variables, where)
        if spec.expect is not None:
            spec = spec.model_copy(update={"expect": spec.expect.filled(variables, where)})
        steps.append(Step(name=name, run=spec.run, args=args, options=options, launcher=spec.launcher,
                          nproc=spec.nproc, output=_fill(spec.output, variables, where) if spec.output else None,
                          deps=[], spec=spec, cell=cell, axes=axes))
    for st in steps:
        where = f"{path}: steps.{st.name}"
        local = {s.name.split("/", 1)[1]: s.name for s in steps if st.cell and s.cell == st.cell}
        deps: list[str] = []
        for ref in _refs(st.args) + _refs(st.options):
            deps += resolve_ref(ref, st, steps, local, grid_steps, study, where)[1]
        for a in st.spec.after:
            if a not in names:
                raise InputError(f"after: no step '{a}'", path=where)
            deps.append(a)
        st.deps = list(dict.fromkeys(d for d in deps if d != st.name))
    order(steps, path)
    return steps


def resolve_ref(ref: str, st: Step, steps: list[Step], local: dict[str, str], grid_steps: dict[str, list[str]],
                study: Study, where: str) -> tuple[list[str], list[str]]:
    """``(paths relative to the study's output or source values, steps)`` a reference names: a step (the
    cell's own first), ``*/name`` (that step of every cell), a group of steps (``bench`` for
    ``bench/a-okvqa``...), or a source. A path below a step (``magpie/filtered``) is kept."""
    by_name = {s.name: s for s in steps}
    if ref.startswith("*/"):
        head, _, rest = ref[2:].partition("/")
        if head not in grid_steps:
            raise InputError(f"@{ref}: no grid step '{head}'", path=where)
        return [f"{n}/{rest}".rstrip("/") for n in grid_steps[head]], list(grid_steps[head])
    parts = ref.split("/")
    for k in range(len(parts), 0, -1):  # the longest prefix that is a step
        head, rest = "/".join(parts[:k]), "/".join(parts[k:])
        name = local.get(head) or (head if head in by_name else None)
        if name is not None:
            return [f"{name}/{rest}".rstrip("/")], [name]
    if parts[0] in study.sources:
        return [], []
    group = [s.name for s in steps if s.name.startswith(ref.rstrip("/") + "/")]
    if group:
        return [ref.rstrip("/")], group
    raise InputError(f"@{ref} names no step or source (steps: {', '.join(s.name for s in steps[:12])}"
                     f"{'...' if len(steps) > 12 else ''}; sources: {', '.join(study.sources) or 'none'})", path=where)


def order(steps: list[Step], path: Path) -> list[Step]:
    """The steps in dependency order (the study's own order where it is free); a cycle is an error."""
    by_name = {s.name: s for s in steps}
    state: dict[str, int] = {}
    out: list[Step] = []

    def visit(s: Step, trail: list[str]) -> None:
        if state.get(s.name) == 2:
            return
        if state.get(s.name) == 1:
            raise InputError(f"the steps form a cycle: {' -> '.join([*trail, s.name])}", path=str(path))
        state[s.name] = 1
        for d in s.deps:
            visit(by_name[d], [*trail, s.name])
        state[s.name] = 2
        out.append(s)

    for s in steps:
        visit(s, [])
    return out
