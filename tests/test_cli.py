"""The command line's shape: every command keeps its options (a stored list, changed only on purpose),
and every command fails the same way."""

from __future__ import annotations

import json
from pathlib import Path

import typer.main
from typer.testing import CliRunner

from lrpipe.cli import app

STORED = Path(__file__).parent / "data" / "cli_options.json"


def option_sets() -> dict[str, list[str]]:
    """``{"run magpie": ["--api-key", ...], ...}`` for every command and group of ``pipe``."""
    out: dict[str, list[str]] = {}

    def walk(cmd, path):
        for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
            walk(sub, [*path, name])
        out[" ".join(path) or "(root)"] = sorted({o for p in cmd.params for o in (*p.opts, *p.secondary_opts)})

    walk(typer.main.get_command(app), [])
    return out


def test_every_command_keeps_its_options():
    # regenerate on purpose with: python -c "from tests.test_cli import option_sets; ..." (see STORED)
    assert option_sets() == json.loads(STORED.read_text())


def test_every_command_reports_errors_in_one_line(tmp_path):
    """A PipeError and a refused value end the same way in every command: one line, its exit code."""
    r = CliRunner().invoke(app, ["run", "magpie", "--n", "0", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and r.output == "error: invalid --n: Input should be greater than 0 (got 0)\n"
    r = CliRunner().invoke(app, ["arena", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "a")])
    assert r.exit_code != 0 and r.output.startswith("error: ") and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["show", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and r.output.startswith("error: ")


# ------------------------------------------------------------------------------------------ what the CLI calls
def test_magpie_options_become_a_config():
    import pytest

    from lrpipe.errors import PipeError
    from lrpipe.pipelines.magpie import config_from_options

    kw = dict(model=None, n=10, temps="0.8:1.2", categories="general,math", weights="math=3", steps="sample,respond",
              filters="dedup,quality", top_p=1.0, max_tokens=64, chunk_size=5, seed=0, response_temperature=0.0,
              response_top_p=1.0, response_max_tokens=64)
    cfg, steps = config_from_options(**kw)
    assert steps == ("sample", "respond") and cfg.categories == {"general": 1.0, "math": 3.0} and len(cfg.temps) == 10
    assert cfg.filters == ["dedup", {"name": "quality", "field": ["instruction", "response"]}]
    with pytest.raises(PipeError, match="--weights names 'code'"):
        config_from_options(**{**kw, "weights": "code=2"})
    with pytest.raises(PipeError, match=r"unknown step\(s\) \['answer'\]"):
        config_from_options(**{**kw, "steps": "sample,answer"})
    with pytest.raises(PipeError, match="invalid --response-max-tokens"):
        config_from_options(**{**kw, "response_max_tokens": 0})


def test_questions_are_checked_before_an_engine_starts(tmp_path):
    import pytest

    from lrpipe.errors import InputError
    from lrpipe.eval.judge import read_questions

    p = tmp_path / "q.jsonl"
    p.write_text('{"id": "a", "question": "Zer?"}\n{"id": "b"}\n')
    with pytest.raises(InputError, match="q.jsonl, row 1, field 'question'"):
        read_questions(p, ["id", "question"])
    assert read_questions(p, ["id"])[1] == {"id": "b", "question": None}


def test_correlation_from_the_two_files(tmp_path):
    import pytest

    from lrpipe.errors import InputError
    from lrpipe.eval.agreement import correlate_files

    bench = tmp_path / "b.json"
    bench.write_text(json.dumps([{"model": m, "score": s} for m, s in (("a", 1), ("b", 2), ("c", 3), ("d", 4))]))
    arena = tmp_path / "r.json"
    arena.write_text(json.dumps({"groups": {"all": {"ratings": [{"model": m, "score": s} for m, s in
                                                                (("a", 900), ("b", 950), ("c", 1010), ("x", 5))]}}}))
    res = correlate_files(bench, arena, rounds=50, seed=1)
    assert res["models"] == ["a", "b", "c"] and res["rho"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="no rating group 'eu'"):
        correlate_files(bench, arena, "eu")
    bench.write_text("{not json")
    with pytest.raises(InputError, match="cannot read the inputs"):
        correlate_files(bench, arena)


def test_the_sample_wait_returns_when_the_directory_completes(tmp_path):
    import threading

    from lrpipe.runner import run_stage
    from lrpipe.shards import wait_until_complete

    from .test_shards import Numbers

    out = tmp_path / "s"
    run_stage(Numbers(), out, rank=0, world_size=2, progress=False)  # half the units: incomplete
    t = threading.Thread(target=wait_until_complete, args=(out, 0.05))
    t.start()
    t.join(0.5)
    assert t.is_alive()  # still waiting for rank 1
    run_stage(Numbers(), out, rank=1, world_size=2, progress=False)
    t.join(5)
    assert not t.is_alive()
