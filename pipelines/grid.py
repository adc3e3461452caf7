"""``pipe mix grid``: the instruction study's data grid (Table 3) as mixture recipes, built or not.

Seven non-empty combinations of a target-language corpus and English / target-language instructions;
each becomes a :class:`~lrpipe.pipelines.mix_recipe.MixRecipe` YAML (and, with ``build``, a mixture), and
``GRID.md`` names the model each would train on every backbone of the table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from lrpipe.errors import PipeError
from lrpipe.pipelines.mix import build_mix
from lrpipe.pipelines.mix_recipe import MixRecipe

#: the instruction study's data grid (Table 3): corpus C_TGT, instructions I_EN, I_TGT, in its order
GRID = [("I_EN", (False, True, False)), ("I_TGT", (False, False, True)), ("I_EN+TGT", (False, True, True)),
        ("C_TGT", (True, False, False)), ("C_TGT_I_EN", (True, True, False)), ("C_TGT_I_TGT", (True, False, True)),
        ("C_TGT_I_EN+TGT", (True, True, True))]
BACKBONES = [("BASE_EN", "BAS_EN"), ("BASE_TGT", "BAS_TGT"), ("INSTRUCT_EN", "INS_EN")]


def grid_recipes(corpus: str, instructions_en: str, instructions_tgt: str, target_lang: str, *,
                 instruction_rows: int | None = None, seed: int = 0, tokenizer: str | None = None,
                 source_lang: str = "en") -> list[tuple[str, dict[str, Any], str]]:
    """The 7 non-empty data combinations: (name, recipe dict, description). Names follow Table 3
    with the target language's code in place of EU (``C_EU_I_EN+EU``...). ``instruction_rows``
    samples that many rows per instruction language (the study: 1M of about 2.35M), the same ids in
    both languages because sampling orders ids by ``(seed, id)`` only."""
    T, S = target_lang.upper(), source_lang.upper()
    out = []
    for name, (c, ie, it) in GRID:
        name = name.replace("TGT", T).replace("EN", S)
        sources: list[dict[str, Any]] = []
        if c:
            sources.append({"name": f"corpus_{target_lang}", "input": corpus, "language": target_lang})
        for use, path, lang in ((ie, instructions_en, source_lang), (it, instructions_tgt, target_lang)):
            if use:
                src: dict[str, Any] = {"name": f"instructions_{lang}", "input": path, "language": lang}
                if instruction_rows:
                    src["rows"] = instruction_rows
                sources.append(src)
        parts = [p for p, on in ((f"corpus {T}", c), (f"instructions {S}", ie), (f"instructions {T}", it)) if on]
        recipe = {"name": name, "description": " + ".join(parts), "target_lang": target_lang, "seed": seed,
                  "sources": sources}
        if tokenizer is not None:
            recipe["tokenizer"] = tokenizer
        out.append((name, recipe, " + ".join(parts)))
    return out


def grid_table(entries: list[tuple[str, dict[str, Any], str]], target_lang: str, source_lang: str = "en",
               built: dict[str, dict[str, Any]] | None = None) -> str:
    """Markdown: each combination, what it holds, and the model names of Table 3 per backbone
    (``-`` where the backbone has already seen that data, the table's gray cells)."""
    T, S = target_lang.upper(), source_lang.upper()
    heads = [b.replace("TGT", T).replace("EN", S) for b, _ in BACKBONES]
    lines = ["| data | contents | " + " | ".join(f"model on {h}" for h in heads) + (" | rows | tokens |" if built else ""),
             "|---|---|" + "---|" * len(heads) + ("---:|---:|" if built else "")]
    for name, recipe, desc in entries:
        corpus_only = [s["name"] for s in recipe["sources"]] == [f"corpus_{target_lang}"]
        en_only = [s["name"] for s in recipe["sources"]] == [f"instructions_{source_lang}"]
        shorthand = name.replace("_I_", " I_")
        # Table 3's gray cells: the backbone has already seen that data (BASE_EN + corpus is BASE_TGT
        # itself, BASE_EN + English instructions is INSTRUCT_EN)
        gray = {("BASE_EN", True, False), ("BASE_TGT", True, False), ("BASE_EN", False, True),
                ("INSTRUCT_EN", False, True)}
        cells = ["-" if (b, corpus_only, en_only) in gray else f"{short.replace('TGT', T).replace('EN', S)} {shorthand}"
                 for b, short in BACKBONES]
        row = f"| {name} | {desc} | " + " | ".join(cells) + " |"
        if built:
            b = built.get(name, {})
            row += f" {b.get('rows', 0):,} | {b.get('tokens') or 0:,} |"
        lines.append(row)
    return "\n".join(lines) + "\n"




def write_grid(out: str | Path, corpus: str | None, instructions_en: str | None, instructions_tgt: str | None,
               target_lang: str | None = None, *, instruction_rows: int | None = None, seed: int = 0,
               tokenizer: str | None = None, build: bool = False, **build_options: Any) -> str:
    """``out/recipes/<name>.yaml`` for every combination, ``out/GRID.md``, and with ``build`` every
    mixture in ``out/<name>``; returns the table. The target language defaults to the one a
    ``pipe translate`` directory of target instructions records."""
    from lrpipe.shards import ShardDir
    from lrpipe.sources import is_hub_spec

    if not (corpus and instructions_en and instructions_tgt):
        raise PipeError("pipe mix grid needs --corpus, --instructions-en and --instructions-tgt")
    if target_lang is None and ShardDir.is_shard_dir(instructions_tgt):
        target_lang = (ShardDir.open(instructions_tgt).header().get("config") or {}).get("recipe", {}).get(
            "target_lang")
    if not target_lang:
        raise PipeError("give --target-lang (the target-language instructions do not record it)")
    out = Path(out)
    paths = [p if is_hub_spec(p) else os.path.abspath(p) for p in (corpus, instructions_en, instructions_tgt)]
    entries = grid_recipes(*paths, target_lang, instruction_rows=instruction_rows, seed=seed, tokenizer=tokenizer)
    (out / "recipes").mkdir(parents=True, exist_ok=True)
    built: dict[str, dict[str, Any]] = {}
    for name, recipe, _ in entries:
        (out / "recipes" / f"{name}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
        if build:
            rep = build_mix(MixRecipe.model_validate(recipe), out / name, **build_options)
            plan = json.loads((out / name / "mix.json").read_text())
            built[name] = {"rows": plan["rows"], "tokens": plan["tokens"], "complete": rep.complete}
    table = grid_table(entries, target_lang, built=built or None)
    (out / "GRID.md").write_text(f"# Data grid (instruction study, Table 3)\n\n{table}")
    return table
