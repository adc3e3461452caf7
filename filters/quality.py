"""``quality``: the generating model rates each instruction (and optionally each response) with
Magpie's five labels — very poor, poor, average, good, excellent — under a JSON-schema enum, through
the engine layer; rows rated very poor or poor are removed (configurable) and the label stays as a
column on every row. The study removed prompts *or responses* the model judged poor and published no
scale; Magpie's scale is the natural one.

The rating runs as part of the filter stage's engine stream (greedy decoding, short outputs), so a
million rows are one continuous engine job, and a rating that fails (engine error, cut output)
rejects the row with ``quality_error`` rather than keeping an unjudged row silently.
"""

from __future__ import annotations

import json
from typing import Any

from lrpipe.chat import chat_prompt_ids
from lrpipe.engines.base import GenResult, Sampling
from lrpipe.filters.base import Filter, register
from lrpipe.prompting import load_prompt

LABELS = ("very poor", "poor", "average", "good", "excellent")
COLUMN = {"instruction": "quality", "response": "response_quality"}


@register
class Quality(Filter):
    name = "quality"
    needs_engine = True

    def __init__(self, field: str | list[str] = "instruction", labels: list[str] = LABELS,
                 reject: list[str] = ("very poor", "poor"), max_tokens: int = 32, prompt: str = "quality",
                 instruction_field: str = "instruction", **params: Any) -> None:
        fields = [field] if isinstance(field, str) else list(field)
        super().__init__(field=",".join(fields), labels=list(labels), reject=list(reject), max_tokens=max_tokens,
                         prompt=prompt, **params)
        self.fields, self.labels, self.reject_labels = fields, list(labels), set(reject)
        self.max_tokens, self.prompt, self.instruction_field = max_tokens, prompt, instruction_field
        unknown = self.reject_labels - set(self.labels)
        if unknown:
            raise ValueError(f"quality: reject labels {sorted(unknown)} are not in labels {self.labels}")
        self.schema = {"type": "object", "properties": {"quality": {"type": "string", "enum": self.labels}},
                       "required": ["quality"], "additionalProperties": False}

    def column(self, field: str) -> str:
        return COLUMN.get(field, f"{field}_quality")

    def requests(self, row: dict[str, Any], tokenizer: Any) -> list[tuple[str, list[int], Sampling]]:
        out = []
        for f in self.fields:
            # a response is judged against the instruction it answers
            text = load_prompt("filters", self.prompt, what=f, labels=self.labels, text=row.get(f) or "",
                               instruction=row.get(self.instruction_field) or "")
            ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": text}])
            out.append((f, ids, Sampling(temperature=0.0, top_p=1.0, max_tokens=self.max_tokens, seed=0,
                                         json_schema=self.schema)))
        return out

    def parse(self, res: GenResult) -> str | None:
        if res.finish_reason != "stop":
            return None
        try:
            label = json.loads(res.text)["quality"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return None
        return label if label in self.labels else None

    def keep(self, row: dict[str, Any]) -> bool:  # pragma: no cover - engine filters run in the stage
        raise RuntimeError("the quality filter needs an engine: run it through pipe filter --engine/--model "
                           "or as the filter step of pipe run magpie")
