"""Text that is not UTF-8 never reaches a shard: every reader sets such a row aside as ``bad_input`` with
its file, row and field, the other rows go on, and nothing written fails Arrow's full validation.

Arrow's JSON, Parquet, Arrow and CSV readers take string bytes as they are (CSV even turns the whole
column into binary), so a Latin-1 line used to be written into a shard that no reader could open.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from lrpipe.errors import AccountingError
from lrpipe.shards import ShardDir, UnitSpec
from lrpipe.sources import FileSource

from .conftest import PIPE
from .fakes import TranslatorServer

LATIN1 = "café au lait".encode("latin-1")  # b"caf\xe9 au lait": not UTF-8
GOOD = [{"id": "a", "caption": "A man rides a bicycle."}, {"id": "c", "caption": "Two dogs play in the park."},
        {"id": "d", "caption": "The sun sets over the mountains."}]


def _jsonl_bytes(bad_line: bytes) -> bytes:
    lines = [json.dumps(GOOD[0]).encode(), bad_line] + [json.dumps(r).encode() for r in GOOD[1:]]
    return b"\n".join(lines) + b"\n"


def _bad_caption_line() -> bytes:
    return b'{"id": "b", "caption": "' + LATIN1 + b'"}'


def _invalid_string_table() -> pa.Table:
    """The four rows as Arrow would hold them after reading bytes unchecked (row 1 invalid)."""
    caps = [GOOD[0]["caption"].encode(), LATIN1] + [r["caption"].encode() for r in GOOD[1:]]
    return pa.table({"id": ["a", "b", "c", "d"], "caption": pa.array(caps, pa.binary()).view(pa.string())})


def write_input(kind: str, folder: Path) -> Path:
    """Three good rows and, second, one whose caption is Latin-1, in the file kind named."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("jsonl", "jsonl.gz", "jsonl.zst"):
        p = folder / f"in.{kind}"
        data = _jsonl_bytes(_bad_caption_line())
        if kind == "jsonl":
            p.write_bytes(data)
        elif kind == "jsonl.gz":
            p.write_bytes(gzip.compress(data))
        else:
            with pa.CompressedOutputStream(str(p), "zstd") as out:
                out.write(data)
        return p
    if kind == "json":
        p = folder / "in.json"
        body = b",".join([json.dumps(GOOD[0]).encode(), _bad_caption_line()] + [json.dumps(r).encode() for r in GOOD[1:]])
        p.write_bytes(b"[" + body + b"]")
        return p
    table = _invalid_string_table()
    p = folder / f"in.{kind}"
    if kind == "parquet":
        pq.write_table(table, p)
    elif kind == "arrow":
        with pa.OSFile(str(p), "wb") as sink, ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    else:
        pcsv.write_csv(table, p)
    return p


KINDS = ["jsonl", "jsonl.gz", "jsonl.zst", "json", "parquet", "arrow", "csv"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_reader_sets_the_row_aside_with_file_row_and_field(tmp_path, kind):
    path = write_input(kind, tmp_path)
    src = FileSource([str(path)], rows_per_unit=2)
    kept, bad = [], []
    for u in src.units():
        t = src.read_unit(u)
        t.validate(full=True)
        kept += t.to_pylist()
        rej = src.rejects(u)
        if rej is not None:
            rej.validate(full=True)
            bad += rej.to_pylist()
    assert [r["id"] for r in kept] == ["a", "c", "d"]
    assert [r["caption"] for r in kept] == [r["caption"] for r in GOOD]
    assert len(bad) == 1 and bad[0]["reject_reason"] == "bad_input", bad
    detail = bad[0]["reject_detail"]
    assert str(path) in detail and "row 1" in detail and "not UTF-8" in detail, detail
    if kind != "jsonl" and not kind.startswith("jsonl"):
        assert "field 'caption'" in detail, detail
    assert "caf" in bad[0]["raw_row"]


def test_many_bad_rows_in_a_large_table_are_all_found(tmp_path):
    n = 5000
    caps = [f"caption {i}".encode() for i in range(n)]
    bad_at = {7, 8, 2500, 4999}
    for i in bad_at:
        caps[i] = LATIN1
    pq.write_table(pa.table({"id": [str(i) for i in range(n)],
                             "caption": pa.array(caps, pa.binary()).view(pa.string())}), tmp_path / "big.parquet")
    src = FileSource([str(tmp_path / "big.parquet")], rows_per_unit=1000)
    ids = [i for u in src.units() for i in src.read_unit(u).column("id").to_pylist()]
    rejected = [r for u in src.units() if (t := src.rejects(u)) is not None for r in t.to_pylist()]
    assert ids == [str(i) for i in range(n) if i not in bad_at]
    assert sorted(int(r["reject_detail"].split("row ")[1].split(",")[0]) for r in rejected) == sorted(bad_at)


def test_a_shard_that_would_not_validate_is_never_written(tmp_path):
    sd = ShardDir.create(tmp_path / "o", stage="test", config={}, plan=[UnitSpec(0, "u0")], inputs=[], provenance={})
    with pytest.raises(AccountingError, match="column 'caption' does not validate"):
        sd.write_unit(UnitSpec(0, "u0"), _invalid_string_table(), None, rows_in=4)
    assert not list(sd.data_dir.glob("*.arrow")) and 0 not in sd.done_indices()


# ------------------------------------------------------------------------------ every stage entry
def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(PIPE + args, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, f"pipe {' '.join(args)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr
    return r


def assert_one_bad_input(out: Path, src: Path, kept_ids: set[str]) -> None:
    """Every shard file validates; the Latin-1 row is the one bad_input with file and line; the rest kept."""
    sd = ShardDir.open(out)
    for f in sd.data_files() + sd.rejected_files():
        from lrpipe.shards import read_arrow

        read_arrow(f).validate(full=True)
    m = sd.manifest()
    assert m["complete"] and m["totals"]["balanced"] and m["totals"]["rows_in"] == 4, m["totals"]
    rej = [r for r in sd.read_all(rejected=True).to_pylist() if r["reject_reason"] == "bad_input"]
    assert len(rej) == 1, rej
    assert str(src) in rej[0]["reject_detail"] and "row 1" in rej[0]["reject_detail"], rej[0]["reject_detail"]
    assert "not UTF-8" in rej[0]["reject_detail"]
    assert set(sd.read_all().column("id").to_pylist()) == kept_ids


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.zst"])
def test_pipe_filter(tmp_path, env, kind):
    src = write_input(kind, tmp_path)
    _run(["filter", "--input", str(src), "--out", str(tmp_path / "o"), "--field", "caption", "--filters", "empty",
          "--no-progress"], env)
    assert_one_bad_input(tmp_path / "o", src, {"a", "c", "d"})


@pytest.mark.slow
def test_pipe_mt(tmp_path, env, tiny_marian):
    src = write_input("jsonl.gz", tmp_path)
    _run(["mt", "--input", str(src), "--out", str(tmp_path / "o"), "--field", "caption", "--backend", "transformers",
          "--model", tiny_marian, "--no-progress"], env)
    assert_one_bad_input(tmp_path / "o", src, {"a", "c", "d"})


def _conversations_file(tmp_path: Path) -> Path:
    rows = [json.dumps({"id": i, "instruction": f"Describe picture {i}.", "response": f"Picture {i} shows a dog."})
            .encode() for i in ("a", "c", "d")]
    bad = b'{"id": "b", "instruction": "Describe ' + LATIN1 + b'.", "response": "A cup."}'
    p = tmp_path / "conv.jsonl"
    p.write_bytes(b"\n".join([rows[0], bad, rows[1], rows[2]]) + b"\n")
    return p


@pytest.mark.slow
def test_pipe_translate(tmp_path, env, model_path, tokenizer):
    import yaml

    src = _conversations_file(tmp_path)
    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "pipelines/recipes/translate/magpie.yaml")
                            .read_text())
    recipe["checks"] = [c for c in recipe["checks"] if c != "language"]  # the scripted marker is no language
    (tmp_path / "magpie.yaml").write_text(yaml.safe_dump(recipe))
    with TranslatorServer(tokenizer) as srv:
        _run(["translate", str(tmp_path / "magpie.yaml"), "--input", str(src), "--out", str(tmp_path / "o"),
              "--engine", "openai", "--base-url", srv.url, "--model", model_path, "--no-progress"], env)
    assert_one_bad_input(tmp_path / "o", src, {"a", "c", "d"})


def test_pipe_pack(tmp_path, env, model_path):
    src = _conversations_file(tmp_path)
    _run(["pack", "--input", str(src), "--out", str(tmp_path / "o"), "--tokenizer", model_path, "--seq-len", "256",
          "--no-progress"], env)
    sd = ShardDir.open(tmp_path / "o")
    for f in sd.data_files() + sd.rejected_files():
        from lrpipe.shards import read_arrow

        read_arrow(f).validate(full=True)
    m = sd.manifest()
    assert m["complete"] and m["totals"]["balanced"] and m["totals"]["rows_in"] == 4
    rej = sd.read_all(rejected=True).to_pylist()
    assert [r["reject_reason"] for r in rej] == ["bad_input"] and "row 1" in rej[0]["reject_detail"]
    assert str(src) in rej[0]["reject_detail"]
    packed = [i for row in sd.read_all().to_pylist() for i in row["source_ids"]]
    assert sorted(packed) == ["a", "c", "d"]
