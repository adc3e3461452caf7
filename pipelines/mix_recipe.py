"""A mixture recipe (YAML): sources with a language and a quantity, parallel pairs with a target share,
a total, a seed and the tokenizer that counts tokens (README: "Mixtures"). Shipped examples live in
``pipelines/recipes/mix/`` and are found by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RECIPES = Path(__file__).parent / "recipes" / "mix"


class Total(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: int | None = Field(None, gt=0)
    tokens: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> Total:
        if (self.rows is None) == (self.tokens is None):
            raise ValueError("total needs exactly one of rows, tokens")
        return self


class MixSource(BaseModel):
    """One source of a mixture. ``input`` or ``parallel`` ({language: input}); at most one quantity."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[^:\s]+$")
    input: str | None = None
    parallel: dict[str, str] | None = None
    language: str | None = None
    weight: float | None = Field(None, gt=0)
    rows: int | None = Field(None, ge=0)
    tokens: int | None = Field(None, ge=0)
    epochs: float | None = Field(None, ge=0)
    target_share: float | None = Field(None, ge=0, le=1)
    unpaired: Literal["drop", "keep"] = "drop"
    split: str = "train"
    #: the id column (``uuid``...); default: ``id`` or another usual id column, else ids derived from the
    #: rows' content, the same rule every stage uses, so a translation pairs with its source
    id_field: str | None = None
    #: on a side of language L: ``X_L`` replaces ``X`` and other languages' ``X_M`` are dropped, so a
    #: ``pipe translate`` directory (``instruction`` + ``instruction_eu``) serves either language
    language_columns: bool = True

    @model_validator(mode="after")
    def _check(self) -> MixSource:
        if (self.input is None) == (self.parallel is None):
            raise ValueError(f"source '{self.name}': give exactly one of input, parallel")
        quantities = [k for k in ("weight", "rows", "tokens", "epochs") if getattr(self, k) is not None]
        if len(quantities) > 1:
            raise ValueError(f"source '{self.name}': give at most one of weight, rows, tokens, epochs "
                             f"(got {', '.join(quantities)})")
        if self.parallel is not None:
            if len(self.parallel) != 2:
                raise ValueError(f"source '{self.name}': parallel needs exactly two languages, "
                                 f"e.g. {{en: DIR, eu: DIR}}")
        else:
            if self.language is None:
                raise ValueError(f"source '{self.name}': give its language")
            if self.target_share is not None:
                raise ValueError(f"source '{self.name}': target_share needs a parallel source")
        return self

    @property
    def quantity(self) -> str:
        return next((k for k in ("weight", "rows", "tokens", "epochs") if getattr(self, k) is not None), "epochs")


class MixRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "mix"
    description: str = ""
    target_lang: str | None = None
    seed: int = 0
    #: counts tokens as ``pipe pack`` will (HF id or folder; None: the embedded model; "none": rows only)
    tokenizer: str | None = None
    total: Total | None = None
    rows_per_unit: int = Field(10000, gt=0)
    sources: list[MixSource]

    @model_validator(mode="after")
    def _check(self) -> MixRecipe:
        if not self.sources:
            raise ValueError("a mixture needs at least one source")
        names = [s.name for s in self.sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique (repeated: {sorted(dup)})")
        weighted = [s.name for s in self.sources if s.weight is not None]
        if weighted and self.total is None:
            raise ValueError(f"sources {weighted} have a weight: give the mixture a total (rows or tokens)")
        if self.total is not None and not weighted:
            raise ValueError("total is only used by weighted sources; give at least one a weight")
        for s in self.sources:
            if s.parallel is not None:
                if self.target_lang is None:
                    raise ValueError(f"parallel source '{s.name}' needs the recipe's target_lang")
                if self.target_lang not in s.parallel:
                    raise ValueError(f"parallel source '{s.name}' has languages {list(s.parallel)}, "
                                     f"not the target_lang '{self.target_lang}'")
        counting = self.tokenizer is not None and self.tokenizer.lower() == "none"
        if counting and (any(s.tokens is not None for s in self.sources) or (self.total and self.total.tokens)):
            raise ValueError("token budgets need a tokenizer (tokenizer: none counts rows only)")
        return self

    def languages(self) -> list[str]:
        langs = [self.target_lang] if self.target_lang else []
        for s in self.sources:
            langs += list(s.parallel) if s.parallel else [s.language]  # type: ignore[list-item]
        return list(dict.fromkeys(x for x in langs if x))


def load_mix_recipe(path: str | Path, **overrides: Any) -> MixRecipe:
    """Read and validate a mixture recipe (a path, or the name of a recipe shipped with pipe); inputs
    relative to the recipe file are read from there; ``overrides`` (None values ignored) win."""
    from lrpipe.config_files import load

    def update(data: dict[str, Any], p: Path) -> None:
        for s in data.get("sources") or []:  # relative inputs are relative to the recipe file
            if isinstance(s, dict):
                if isinstance(s.get("input"), str):
                    s["input"] = _resolve(s["input"], p.parent)
                if isinstance(s.get("parallel"), dict):
                    s["parallel"] = {k: _resolve(v, p.parent) for k, v in s["parallel"].items()}
        for k, v in overrides.items():
            if v is None:
                continue
            if k == "target_share":
                shares = v if isinstance(v, dict) else {None: v}
                sources = {s.get("name"): s for s in data.get("sources") or [] if isinstance(s, dict)}
                unknown = [n for n in shares if n is not None and n not in sources]
                if unknown:
                    raise ValueError(f"--target-share names no source of the recipe: {unknown} "
                                     f"(sources: {list(sources)})")
                for name, src in sources.items():
                    share = shares.get(name, shares.get(None))
                    if share is None:
                        continue
                    if "parallel" not in src:
                        if name in shares:
                            raise ValueError(f"--target-share {name}=...: source '{name}' is not parallel")
                        continue
                    src["target_share"] = share
            else:
                data[k] = v

    return load(MixRecipe, path, RECIPES, kind="mixture recipe", update=update)


def parse_target_shares(values: list[str] | None) -> dict[str | None, float] | None:
    """``--target-share`` as given: ``0.8`` (every parallel source) and ``NAME=0.2`` (one source), repeated;
    ``None`` when not given. A later value for the same source wins."""
    if not values:
        return None
    out: dict[str | None, float] = {}
    for v in values:
        name, _, share = v.rpartition("=")
        try:
            x = float(share)
        except ValueError:
            raise ValueError(f"--target-share {v!r}: expected SHARE or SOURCE=SHARE with a number") from None
        if not 0 <= x <= 1:
            raise ValueError(f"--target-share {v!r}: a share is between 0 and 1")
        out[name or None] = x
    return out


def _resolve(spec: str, base: Path) -> str:
    if spec.startswith("hf://") or Path(spec).is_absolute():
        return spec
    cand = base / spec  # relative to the recipe; else as given (a Hub id, or relative to the cwd)
    return str(cand) if cand.exists() or any(c in spec for c in "*?[") else spec
