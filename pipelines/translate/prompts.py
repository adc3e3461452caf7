"""Few-shot examples and the prompts built from them (completion mode for base LLMs, chat mode for
instruct LLMs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrpipe.errors import InputError
from lrpipe.pipelines.translate.items import format_text
from lrpipe.pipelines.translate.recipe import FEWSHOT, Recipe
from lrpipe.prompting import load_prompt


@dataclass
class Shots:
    examples: list[dict[str, Any]]
    meta: dict[str, Any]


def load_shots(recipe: Recipe) -> Shots:
    if not recipe.fewshot:
        return Shots([], {})
    p = Path(recipe.fewshot)
    path = p if p.suffix == ".jsonl" and p.exists() else FEWSHOT / f"{recipe.fewshot}.{recipe.source_lang}-{recipe.target_lang}.jsonl"
    if not path.exists():
        raise InputError(f"no few-shot file for {recipe.source_lang}->{recipe.target_lang} (set fewshot: null for "
                         "zero-shot, or write one; see fewshot/README.md)", path=str(path))
    meta, examples = {}, []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"invalid JSON ({e.msg})", path=str(path), row=i) from e
        if "_meta" in obj:
            meta = obj["_meta"]
        elif "source" in obj and "target" in obj:
            examples.append(obj)
        else:
            raise InputError("a few-shot line needs 'source' and 'target'", path=str(path), row=i)
    return Shots(examples, meta)


class PromptBuilder:
    """Renders a row's prompt (token ids) for the recipe's mode, with the shared few-shot prefix first
    so that the engine's prefix cache serves it to every row."""

    def __init__(self, recipe: Recipe, tokenizer: Any, shots: Shots) -> None:
        self.recipe, self.tok, self.shots = recipe, tokenizer, shots
        meta = shots.meta
        from lrpipe.languages import language_name

        self.src_name = language_name(recipe.source_lang, recipe.source_name)
        self.tgt_name = language_name(recipe.target_lang, recipe.target_name)
        self.labels_src = meta.get("labels", {}).get("source", {"question": "Question", "answer": "Answer"})
        self.labels_tgt = meta.get("labels", {}).get("target", {"question": "Question", "answer": "Answer"})
        style = recipe.style or meta.get("style") or f"standard {self.tgt_name}"
        self.json = recipe.format == "json"
        self.system = load_prompt("translate", recipe.system_prompt, src_name=self.src_name, tgt_name=self.tgt_name,
                                  style=style, json=self.json)

    def render_item(self, item: Any, target: bool = False) -> str:
        if self.json:
            return json.dumps(item, ensure_ascii=False)
        return format_text(item, self.labels_tgt if target else self.labels_src)

    def _user(self, item: Any) -> str:
        return load_prompt("translate", self.recipe.user_prompt, tgt_name=self.tgt_name, src_name=self.src_name,
                           json=self.json, query=self.render_item(item))

    def text(self, item: Any) -> str | list[dict[str, str]]:
        if self.recipe.mode == "completion":
            examples = [{"source": self.render_item(e["source"]), "target": self.render_item(e["target"], True)}
                        for e in self.shots.examples]
            return load_prompt("translate", self.recipe.completion_prompt, system=self.system, examples=examples,
                               src_name=self.src_name, tgt_name=self.tgt_name,
                               query=self.render_item(item)) + "\n"
        msgs = [{"role": "system", "content": self.system}]
        for e in self.shots.examples:
            msgs.append({"role": "user", "content": self._user(e["source"])})
            msgs.append({"role": "assistant", "content": self.render_item(e["target"], True)})
        msgs.append({"role": "user", "content": self._user(item)})
        return msgs

    def ids(self, item: Any) -> list[int]:
        t = self.text(item)
        if isinstance(t, str):
            bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
            return bos + list(self.tok(t, add_special_tokens=False)["input_ids"])
        from lrpipe.chat import chat_prompt_ids

        return chat_prompt_ids(self.tok, t)

    def stop(self) -> tuple[str, ...]:
        """Completion mode without a schema: stop where the next example would start."""
        if self.recipe.mode == "completion" and not self.json:
            return (f"\n{self.src_name}:",)
        return ()
