"""JSON-schema constrained decoding for the transformers engine, through outlines.

outlines (outlines-core) compiles a JSON schema to a regular expression and then to a token-level
index over the model's vocabulary; a ``Guide`` walks that index as tokens are sampled and tells which
tokens may come next. Compiling the index is the expensive part, so indices are cached per schema
(translation derives one schema per distinct message count, not per row).
"""

from __future__ import annotations

import json
from typing import Any


def _vocabulary(tokenizer: Any) -> Any:
    from outlines.backends.outlines_core import OutlinesCoreBackend
    from outlines.models.transformers import TransformerTokenizer

    t = TransformerTokenizer(tokenizer)
    return OutlinesCoreBackend.create_outlines_core_vocabulary(
        tokenizer.get_vocab(), t.eos_token_id, t.eos_token, t.convert_token_to_string)


class JsonConstraint:
    """Per-request state: masks logits to the tokens the schema allows after ``out_ids``."""

    def __init__(self, tokenizer: Any, schema: dict[str, Any], cache: dict[str, Any]) -> None:
        from outlines_core import Guide, Index
        from outlines_core.json_schema import build_regex_from_schema

        key = json.dumps(schema, sort_keys=True)
        if "__vocab__" not in cache:
            cache["__vocab__"] = _vocabulary(tokenizer)
        if key not in cache:
            # no free whitespace between JSON tokens (as the vLLM engine): a small model would fill it
            cache[key] = Index(build_regex_from_schema(key, whitespace_pattern=""), cache["__vocab__"])
        self.guide = Guide(cache[key])
        self.eos = tokenizer.eos_token_id
        self.consumed = 0

    def _sync(self, out_ids: list[int]) -> None:
        while self.consumed < len(out_ids):
            self.guide.advance(out_ids[self.consumed], return_tokens=False)
            self.consumed += 1

    def apply(self, out_ids: list[int], logits: Any) -> Any:
        import torch

        self._sync(out_ids)
        allowed = list(self.guide.get_tokens())
        mask = torch.full_like(logits, float("-inf"))
        idx = torch.tensor([a for a in allowed if a < logits.shape[-1]], dtype=torch.long, device=logits.device)
        mask[idx] = 0.0
        return logits + mask

    def is_finished(self, out_ids: list[int]) -> bool:
        self._sync(out_ids)
        return self.guide.is_finished()
