"""``pipe judge``: pairwise LLM-as-judge through the engine layer, writing battles for ``pipe arena``
(README: "Evaluation"; the multimodal study's judge protocol).

For every question and every pair of models that both answered it, the judge sees the question and
the two answers twice — in both orders — and returns a JSON object with one verdict per criterion
(``A``, ``B`` or ``tie``), constrained by a JSON schema so only valid verdicts can come back. Per
criterion, the pair's result is the model both orders prefer, and a **tie when the orders disagree**
(position bias cancels out instead of deciding). Criteria are a YAML file (default: the study's three,
in its order of importance); the prompt is ``prompts/judge/pairwise.j2``. Besides the criteria the judge
gives an **overall** verdict (criterion ``overall``), weighing them in their order of importance as the
study's annotators did: the one verdict per pair its Table 2 counts as win / tie / loss.

It runs as a :class:`GenerationStage`: units of questions, every request of every unit streamed into
one engine job, resumable after a crash, ``--rank/--world-size`` like every stage. A verdict that
fails (cut output, invalid JSON) is retried with a new seed and sampling temperature, then the pair is
rejected with its reason. Accounting is in *pairs*: each (question, model pair) either gives one
battle row per criterion or one rejected row.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any

import pyarrow as pa

from lrpipe.chat import chat_request
from lrpipe.engines.base import Engine, GenRequest, GenResult, Sampling
from lrpipe.errors import InputError
from lrpipe.prompting import load_prompt, prompt_root
from lrpipe.readers import read_table
from lrpipe.runner import Attempts, GenerationStage, UnitOutput
from lrpipe.shards import REJECT_DETAIL, REJECT_REASON, UnitSpec

VERDICTS = ("A", "B", "tie")


def load_criteria(path: str | Path | None, language: str) -> list[dict[str, str]]:
    p = Path(path) if path else prompt_root() / "judge" / "criteria.yaml"
    from lrpipe.config_files import read_yaml

    items = read_yaml(p, "criteria file", expect=list)
    if not items:
        raise InputError("criteria: a non-empty list of {name, title, description}", path=str(p))
    out = []
    for i, c in enumerate(items):
        if not isinstance(c, dict) or not c.get("name") or not c.get("description"):
            raise InputError("each criterion needs a name and a description", path=str(p), row=i)
        out.append({"name": str(c["name"]), "title": str(c.get("title") or c["name"]),
                    "description": str(c["description"]).replace("{language}", language)})
    return out


QUESTION_COLUMNS = ("question", "instruction", "prompt")


def _rows(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a file or of a shard directory (``pipe answer``, ``pipe translate`` output)."""
    from lrpipe.shards import ShardDir

    if ShardDir.is_shard_dir(path):
        return ShardDir.open(path).read_all().to_pylist()
    return read_table(str(path)).to_pylist()


def answer_paths(paths: list[str | Path]) -> list[Path]:
    """``--answers`` as given: files, shard directories, or a folder of shard directories (``pipe
    answer --out`` with several models: one per model)."""
    from lrpipe.shards import ShardDir

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not ShardDir.is_shard_dir(p):
            subs = sorted(d for d in p.iterdir() if ShardDir.is_shard_dir(d))
            if not subs:
                raise InputError("neither a shard directory nor a folder of them", path=str(p))
            out += subs
        else:
            out.append(p)
    return out


def question_field_of(rows: list[dict[str, Any]], field: str | None, where: str) -> str:
    if field:
        return field
    for c in QUESTION_COLUMNS:
        if rows and c in rows[0]:
            return c
    raise InputError(f"no question column (looked for {', '.join(QUESTION_COLUMNS)}; give --question-field)",
                     path=where)


def read_questions(path: str | Path, fields: list[str]) -> list[dict[str, Any]]:
    """The questions (a file or a shard directory) as rows; a row without one of ``fields`` (id,
    question, image) is an error naming the file, row and field, before any engine starts."""
    qs = _rows(path)
    for i, q in enumerate(qs):
        for f in fields:
            if q.get(f) is None:
                raise InputError("missing field", path=str(path), row=i, field=f)
    return qs


def read_answers(paths: list[str | Path], id_field: str = "id", answer_field: str = "answer") -> dict[str, dict[str, str]]:
    """model -> {question id -> answer}; the model is the rows' ``model`` column, else the file's stem
    (or the shard directory's name)."""
    out: dict[str, dict[str, str]] = {}
    for p in answer_paths(paths):
        for i, r in enumerate(_rows(p)):
            for f in (id_field, answer_field):
                if r.get(f) is None:
                    raise InputError("missing field", path=str(p), row=i, field=f)
            model = str(r.get("model") or Path(p).stem)
            out.setdefault(model, {})[str(r[id_field])] = str(r[answer_field])
    if len(out) < 2:
        raise InputError(f"need answers of at least two models, have {sorted(out)}", path=str(paths[0]))
    return out


class JudgeStage(GenerationStage):
    name = "judge"

    def __init__(self, questions: list[dict[str, Any]], answers: dict[str, dict[str, str]], engine: Engine,
                 judge_id: str, criteria: list[dict[str, str]], language: str, *, question_field: str = "question",
                 id_field: str = "id", image_field: str | None = None, processor: Any = None,
                 rows_per_unit: int = 50, retries: int = 2, seed: int = 0, max_tokens: int = 160,
                 prompt: str = "pairwise", overall: bool = True) -> None:
        self.questions, self.answers, self.engine, self.judge_id = questions, answers, engine, judge_id
        self.criteria, self.language, self.qf, self.idf = criteria, language, question_field, id_field
        self.rows_per_unit, self.retries, self.seed, self.max_tokens, self.prompt = (
            rows_per_unit, retries, seed, max_tokens, prompt)
        self.overall = overall
        self.models = sorted(answers)
        # An MLLM judge sees the question's image: the prompt goes through the model's processor chat
        # template (image placeholder first, as the models were trained) and the image rides along.
        # (an OpenAI-compatible chat endpoint, a hosted judge, takes the messages and renders them itself)
        self.image_field, self.processor = image_field, processor
        if image_field and not engine.supports_images:
            raise InputError(f"judging with images needs an engine that takes them (vllm, transformers with a "
                             f"multimodal model, openai --openai-api chat), not {engine.name}")
        self.by_id = {str(q[id_field]): q for q in questions}
        names = self.verdict_names()
        self.schema = {"type": "object", "properties": {n: {"type": "string", "enum": list(VERDICTS)} for n in names},
                       "required": names, "additionalProperties": False}

    def verdict_names(self) -> list[str]:
        """The verdicts each reply holds: one per criterion, then ``overall``."""
        return [c["name"] for c in self.criteria] + (["overall"] if self.overall else [])

    def config(self) -> dict[str, Any]:
        return {"judge": self.judge_id, "criteria": self.criteria, "language": self.language, "models": self.models,
                "image_field": self.image_field, "overall": self.overall,
                "prompt": self.prompt, "seed": self.seed, "retries": self.retries, "max_tokens": self.max_tokens,
                "questions": len(self.questions)}

    def plan(self) -> list[UnitSpec]:
        n = len(self.questions)
        return [UnitSpec(index=k, name=f"questions[{s}:{min(s + self.rows_per_unit, n)}]",
                         params={"start": s, "rows": min(self.rows_per_unit, n - s)})
                for k, s in enumerate(range(0, n, self.rows_per_unit))]

    def _pairs(self, unit: UnitSpec) -> list[tuple[str, str, str]]:
        """(question id, model 1, model 2) for every pair, in a fixed order."""
        qs = self.questions[unit.params["start"]:unit.params["start"] + unit.params["rows"]]
        return [(str(q[self.idf]), a, b) for q in qs for a, b in combinations(self.models, 2)]

    def _request(self, unit: UnitSpec, k: int, order: int, attempt: int, q: dict[str, Any], first: str,
                 second: str) -> GenRequest:
        text = load_prompt("judge", self.prompt, question=q[self.qf], answer_a=self.answers[first][str(q[self.idf])],
                           answer_b=self.answers[second][str(q[self.idf])], criteria=self.criteria,
                           language=self.language, overall=self.overall)
        from lrpipe.seeding import seed_for

        s = Sampling(temperature=0.0 if attempt == 0 else 0.7, top_p=1.0, max_tokens=self.max_tokens,
                     seed=seed_for(self.seed, "judge", unit.index, k, order, attempt), json_schema=self.schema)
        images = None
        if self.image_field:
            from lrpipe.eval.mm_data import load_image

            images = [load_image(q[self.image_field], f"question {q[self.idf]}, field {self.image_field}")]
        return chat_request(self.engine, (k, order, attempt), [{"role": "user", "content": text}], s, images=images,
                            processor=self.processor)

    def requests(self, unit: UnitSpec) -> tuple[Any, list[GenRequest]]:
        by_id = self.by_id
        ctx: dict[str, Any] = {"pairs": self._pairs(unit), "verdicts": {}, "attempts": Attempts(self.retries),
                               "missing": {}}
        reqs = []
        for k, (qid, a, b) in enumerate(ctx["pairs"]):
            if qid not in self.answers[a] or qid not in self.answers[b]:
                ctx["missing"][k] = [m for m in (a, b) if qid not in self.answers[m]]
                continue
            for order, (x, y) in enumerate(((a, b), (b, a))):
                reqs.append(self._request(unit, k, order, ctx["attempts"].start((k, order)), by_id[qid], x, y))
        return ctx, reqs

    def parse(self, res: GenResult) -> dict[str, str] | None:
        if res.finish_reason != "stop":
            return None
        try:
            obj = json.loads(res.text)
        except json.JSONDecodeError:
            return None
        names = self.verdict_names()
        if not isinstance(obj, dict) or any(obj.get(n) not in VERDICTS for n in names):
            return None
        return {n: obj[n] for n in names}

    def review(self, unit: UnitSpec, context: Any, results: dict[Any, GenResult]) -> list[GenRequest]:
        by_id = self.by_id
        more = []
        attempts: Attempts = context["attempts"]
        for (k, order), attempt in list(attempts.items()):
            if (k, order) in context["verdicts"]:
                continue
            v = self.parse(results[(k, order, attempt)])
            if v is not None:
                context["verdicts"][(k, order)] = v
            elif (nxt := attempts.again((k, order))) is not None:
                qid, a, b = context["pairs"][k]
                x, y = (a, b) if order == 0 else (b, a)
                more.append(self._request(unit, k, order, nxt, by_id[qid], x, y))
        return more

    def finalize(self, unit: UnitSpec, context: Any, results: dict[Any, GenResult]) -> UnitOutput:
        rows, rejected = [], []
        lang = self.language
        for k, (qid, a, b) in enumerate(context["pairs"]):
            if k in context["missing"]:
                rejected.append({"question_id": qid, "model_a": a, "model_b": b, REJECT_REASON: "missing_answer",
                                 REJECT_DETAIL: f"no answer from {', '.join(context['missing'][k])}"})
                continue
            v1, v2 = context["verdicts"].get((k, 0)), context["verdicts"].get((k, 1))
            if v1 is None or v2 is None:
                last = results[(k, 0 if v1 is None else 1, context["attempts"][(k, 0 if v1 is None else 1)])]
                rejected.append({"question_id": qid, "model_a": a, "model_b": b, REJECT_REASON: "judge_invalid",
                                 REJECT_DETAIL: f"{last.finish_reason}: {(last.error or last.text)[:200]}"})
                continue
            for n in self.verdict_names():
                # order 0 showed (a, b), order 1 showed (b, a): map both verdicts to model names
                first = {"A": a, "B": b, "tie": "tie"}[v1[n]]
                second = {"A": b, "B": a, "tie": "tie"}[v2[n]]
                won = first if first == second else "tie"
                winner = "model_a" if won == a else "model_b" if won == b else "tie"
                rows.append({"question_id": qid, "model_a": a, "model_b": b, "winner": winner, "criterion": n,
                             "annotator": self.judge_id, "language": lang, "verdict_ab": v1[n], "verdict_ba": v2[n]})
        schema = pa.schema([(f, pa.string()) for f in ("question_id", "model_a", "model_b", "winner", "criterion",
                                                        "annotator", "language", "verdict_ab", "verdict_ba")])
        kept = pa.Table.from_pylist(rows, schema=schema)
        rej_schema = pa.schema([(f, pa.string()) for f in ("question_id", "model_a", "model_b", REJECT_REASON,
                                                            REJECT_DETAIL)])
        judged = len(context["pairs"]) - len(rejected)
        return UnitOutput(kept=kept, rejected=pa.Table.from_pylist(rejected, schema=rej_schema),
                          rows_in=len(context["pairs"]), rows_consumed=judged,
                          stats={"pairs_judged": judged, "requests": context["attempts"].tries()})
