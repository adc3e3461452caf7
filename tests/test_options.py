"""Options are checked where they are parsed: a bad value is one line naming the option, before any work.

The examples are the ones a new user met (issue 30): each used to answer with a library's message
(numpy, matplotlib, huggingface_hub) or a traceback, or to run and reject every row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lrpipe", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.fixture(scope="module")
def battles(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("opts") / "battles.jsonl"
    p.write_text("\n".join(json.dumps({"model_a": a, "model_b": b, "winner": "model_a"})
                           for a, b in (("x", "y"), ("y", "z"), ("z", "x"))) + "\n")
    return p


@pytest.mark.parametrize("args, names", [
    (["--by", "nosuchfield"], ["--by", "nosuchfield"]),
    (["--rounds", "-1"], ["--rounds"]),
    (["--lower", "90", "--upper", "10"], ["--lower", "--upper"]),
    (["--lower", "-5"], ["--lower"]),
])
def test_arena_options(battles, tmp_path, args, names):
    res = pipe("arena", str(battles), "--out", str(tmp_path / "o"), *args)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and all(n in lines[0] for n in names), res.stderr
    assert not (tmp_path / "o").exists()  # refused before any work


def test_pack_seq_len_zero(battles, tmp_path):
    res = pipe("pack", "--input", str(battles), "--out", str(tmp_path / "p"), "--tokenizer", "embedded",
               "--seq-len", "0")
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0 and len(lines) == 1 and "--seq-len" in lines[0], res.stderr
    assert not (tmp_path / "p").exists()


def test_a_model_path_that_does_not_exist_reads_the_same_everywhere(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text('{"id": "1", "caption": "a cat"}\n')
    mt = pipe("mt", "--input", str(src), "--out", str(tmp_path / "m"), "--field", "caption", "--model",
              "/nonexistent/marian", "--no-progress")
    pack = pipe("pack", "--input", str(src), "--out", str(tmp_path / "p"), "--tokenizer", "/nonexistent/marian")
    for res in (mt, pack):
        lines = res.stderr.strip().splitlines()
        assert res.returncode != 0 and len(lines) == 1, res.stderr
        assert "/nonexistent/marian: no such model folder" in lines[0]


def test_an_unexpected_error_is_one_line_and_a_log_with_the_traceback(monkeypatch, tmp_path, capsys):
    import lrpipe.show
    from lrpipe.cli import main

    def broken(*a, **k):
        raise RuntimeError("something no one planned for")

    monkeypatch.setattr(lrpipe.show, "describe", broken)
    monkeypatch.setenv("LRPIPE_CACHE", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["pipe", "show", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RuntimeError: something no one planned for" in err[0]
    log = Path(err[0].rsplit("traceback is in ", 1)[1].rstrip(")"))
    assert log.parent == tmp_path / "logs" and "Traceback" in log.read_text() and "broken" in log.read_text()
