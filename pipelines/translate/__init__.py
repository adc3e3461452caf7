"""``pipe translate <recipe>``: few-shot LLM translation of conversations and question-answer items
under per-row JSON schemas, with validation and retries (README: "Translation").

A **recipe** (YAML, ``pipelines/recipes/translate/`` or any path) says what a row's item is
(``conversation``: a list of messages; ``qa``: a question with zero, one or a list of answers), which
columns hold it, the mode (``completion`` for base LLMs, Fig. 7 of the instruction study; ``chat`` for
instruct LLMs, Figs. 4-7 of the multimodal study), the output format (JSON under a schema derived per
row, or the paper's ``**Galdera:** … **Erantzuna:** …`` text), the few-shot file, sampling, retries and
checks. Adding a dataset is a new YAML file.

Every row ends in ``data/`` (original columns, untouched images, translated columns ``<field>_<tgt>``
and ``translate_attempts``) or in ``rejected/`` with the reason of its last failed attempt. A failed
attempt is retried with a new seed, in the same engine stream as everything else, so retries never
drain the engine.

Modules: ``recipe`` (the YAML), ``items`` (what gets translated), ``checks``, ``prompts``, ``stages``.
"""

from __future__ import annotations

from lrpipe.pipelines.translate.checks import (
    CHECK_REASONS,
    FINAL_REASONS,
    Checker,
    missing_protected,
    protected,
)
from lrpipe.pipelines.translate.items import extract, format_text, parse_text, schema_for, texts_of
from lrpipe.pipelines.translate.prompts import PromptBuilder, Shots, load_shots
from lrpipe.pipelines.translate.recipe import (
    CHECKS,
    FEWSHOT,
    RECIPES,
    Fields,
    MessageField,
    Recipe,
    RecipeSampling,
    list_recipes,
    load_recipe,
    recipe_table,
)
from lrpipe.pipelines.translate.stages import (
    REASONS,
    SampleStage,
    TranslateStage,
    dry_run,
    format_dry_run,
    sample_first,
    selected,
)

__all__ = [
    "CHECKS",
    "CHECK_REASONS",
    "Checker",
    "FEWSHOT",
    "FINAL_REASONS",
    "Fields",
    "MessageField",
    "PromptBuilder",
    "REASONS",
    "RECIPES",
    "Recipe",
    "RecipeSampling",
    "SampleStage",
    "Shots",
    "TranslateStage",
    "dry_run",
    "extract",
    "format_dry_run",
    "format_text",
    "list_recipes",
    "load_recipe",
    "load_shots",
    "missing_protected",
    "parse_text",
    "protected",
    "recipe_table",
    "sample_first",
    "schema_for",
    "selected",
    "texts_of",
]
