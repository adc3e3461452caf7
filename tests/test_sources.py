import gzip
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lrpipe.errors import InputError
from lrpipe.shards import table_to_ipc_bytes
from lrpipe.sources import FileSource, ShardSource, open_source

ROWS = [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
        for i in range(5)]


def _write_all(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    (tmp_path / "b.json").write_text(json.dumps({"data": ROWS}))
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "c.parquet")
    (tmp_path / "d.arrow").write_bytes(table_to_ipc_bytes(pa.Table.from_pylist(ROWS)))
    (tmp_path / "e.csv").write_text("id,instruction\nr0,hello\nr1,world\n")
    (tmp_path / "f.jsonl.gz").write_bytes(gzip.compress(("\n".join(json.dumps(r) for r in ROWS) + "\n").encode()))


@pytest.mark.parametrize("name", ["a.jsonl", "b.json", "c.parquet", "d.arrow", "f.jsonl.gz"])
def test_local_formats_keep_columns_and_read_sharegpt(tmp_path, name):
    from lrpipe.chat import conversation_of

    _write_all(tmp_path)
    src = open_source(tmp_path / name, rows_per_unit=2)
    units = src.units()
    assert [u.params["rows"] for u in units] == [2, 2, 1]
    t = pa.concat_tables([src.read_unit(u) for u in units])
    assert t.column("id").to_pylist() == [r["id"] for r in ROWS]
    # the column keeps its name and form; stages read the conversation where they need it
    assert "conversation" not in t.column_names
    assert t.column("conversations").to_pylist()[3] == ROWS[3]["conversations"]
    assert conversation_of(t.to_pylist()[3]) == [{"role": "user", "content": "q3"},
                                                {"role": "assistant", "content": "a3"}]


def test_csv_and_folder(tmp_path):
    _write_all(tmp_path)
    src = open_source(tmp_path / "e.csv")
    assert src.read_unit(src.units()[0]).column("instruction").to_pylist() == ["hello", "world"]
    folder = open_source(tmp_path)
    assert isinstance(folder, FileSource) and len(folder.paths) == 6


def test_whole_input_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_source(tmp_path / "missing.jsonl")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(ROWS[0]) + "\n")
    src = open_source(good)
    with pytest.raises(InputError, match=r"missing column\(s\) \['instruction'\]"):
        src.require(["instruction"])
    junk = tmp_path / "junk.arrow"
    junk.write_bytes(b"not arrow at all")
    with pytest.raises(InputError, match="junk.arrow: not a readable Arrow shard"):
        open_source(junk).units()
    with pytest.raises(InputError, match=r"x.txt: unsupported file type"):
        (tmp_path / "x.txt").write_text("hi")
        open_source(tmp_path / "x.txt").units()


def test_row_faults_are_rejected_rows_not_a_failed_input(tmp_path):
    """Invalid JSON, invalid UTF-8, a non-object and a value of the wrong type: those rows are
    rejects with file, row and field; every other row is read."""
    p = tmp_path / "bad.jsonl"
    lines = [json.dumps({"id": f"r{i}", "n": i}).encode() for i in range(20)]
    lines[3] = b'{"id": "r3", "n": '            # invalid JSON
    lines[7] = b'{"id": "r7", "n": "\xff\xfe"}'  # invalid UTF-8
    lines[9] = b'["not", "an", "object"]'
    lines[12] = json.dumps({"id": "r12", "n": {"a": 1}}).encode()  # an object among integers
    lines[16] = json.dumps({"id": 16, "n": 16}).encode()  # an integer id among string ids
    p.write_bytes(b"\n".join(lines) + b"\n")
    src = open_source(p, rows_per_unit=8)
    units = src.units()
    tables = [src.read_unit(u) for u in units]
    rejects = [src.rejects(u) for u in units]
    got = [i for t in tables for i in t.column("id").to_pylist()]
    assert got == [f"r{i}" for i in range(20) if i not in (3, 7, 9, 12, 16)]
    details = [d for r in rejects if r is not None for d in r.column("reject_detail").to_pylist()]
    assert len(details) == 5 and sum(t.num_rows for t in tables) + 5 == 20
    for pattern in (r"bad.jsonl, row 3: invalid JSON", r"bad.jsonl, row 7: not UTF-8",
                    r"bad.jsonl, row 9: expected an object", r"bad.jsonl, row 12, field 'n': object value",
                    r"bad.jsonl, row 16, field 'id': number value"):
        assert any(re.search(pattern, d) for d in details), (pattern, details)
    # each reject is in the unit its line falls in: the unit of rows 8-15 of the good rows holds row 16's
    assert [0 if r is None else r.num_rows for r in rejects] == [3, 2]


def test_ids_when_the_input_has_none(tmp_path):
    """CC3M/PixMo-AMA layouts: ids from the content, the same for any unit layout and any copy of
    the data; a named id column (uuid) wins."""
    rows = [{"image_url": f"https://x.org/{i}.jpg", "caption": f"a photo of {i % 7} dogs"} for i in range(30)]
    rows.append(dict(rows[3]))  # an exact duplicate row
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "cc3m.parquet")
    (tmp_path / "copy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = open_source(tmp_path / "cc3m.parquet", rows_per_unit=7)
    b = open_source(tmp_path / "copy.jsonl", rows_per_unit=100)
    ids_a = [i for u in a.units() for i in a.read_unit(u).column("id").to_pylist()]
    ids_b = b.read_unit(b.units()[0]).column("id").to_pylist()
    assert ids_a[:30] == ids_b[:30] and len(set(ids_b)) == 31 and ids_b[30] == ids_b[3] + "~2"
    assert all(re.fullmatch(r"h[0-9a-f]{20}(~\d+)?", i) for i in ids_b)
    mag = tmp_path / "magpie-align.jsonl"
    mag.write_text("".join(json.dumps({"uuid": f"u-{i}", "instruction": "q", "response": "a"}) + "\n"
                           for i in range(3)))
    src = open_source(mag)
    t = src.read_unit(src.units()[0])
    assert t.column("id").to_pylist() == ["u-0", "u-1", "u-2"] and "uuid" in t.column_names


def test_shard_source_mirrors_units(tmp_path):
    from lrpipe.runner import run_stage
    from tests.test_shards import Numbers

    run_stage(Numbers(units=3), tmp_path / "s", progress=False)
    src = open_source(tmp_path / "s")
    assert isinstance(src, ShardSource)
    assert [u.index for u in src.units()] == [0, 1, 2]
    assert src.read_unit(src.units()[1]).column("x").to_pylist() == [10, 12, 14, 16, 18]
    (tmp_path / "s" / "units" / "part-00001.json").unlink()
    src = open_source(tmp_path / "s")
    with pytest.raises(InputError, match="not finished"):
        src.read_unit(src.units()[1])


def test_hub_spec_parsing():
    from lrpipe.sources import HubSource

    s = open_source("hf://HiTZ/Magpie-Llama-3.1-8B-Instruct-Filtered-1M:default@main", split="train",
                    streaming=True)
    assert isinstance(s, HubSource)
    assert (s.hub_id, s.config_name, s.revision, s.streaming) == (
        "HiTZ/Magpie-Llama-3.1-8B-Instruct-Filtered-1M", "default", "main", True)


def test_hub_source_reads_a_local_dataset_script_free_repo(tmp_path):
    """The Hub loader path is datasets.load_dataset; exercised here on a local parquet 'repo' folder."""
    from lrpipe.sources import HubSource

    repo = tmp_path / "org" / "ds" / "data"
    repo.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS), repo / "train-00000-of-00001.parquet")
    s = HubSource(f"hf://{tmp_path / 'org' / 'ds'}", split="train", rows_per_unit=2)
    units = s.units()
    assert len(units) == 3
    t = s.read_unit(units[2])
    assert t.column("id").to_pylist() == ["r4"] and "conversations" in t.column_names


def test_jsonl_rows_with_different_keys_keep_every_column(tmp_path):
    from lrpipe.sources import FileSource

    p = tmp_path / "mixed.jsonl"
    p.write_text('{"id": "a", "conversation": [{"role": "user", "content": "hi"}]}\n{"id": "b", "text": "doc"}\n')
    t = FileSource([str(p)]).read_unit(FileSource([str(p)]).units()[0])
    assert t.column_names == ["id", "conversation", "text"]
    assert t.column("text").to_pylist() == [None, "doc"]


def test_jsonl_keeps_strings_that_look_like_dates(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"id": "a", "when": "2020-01-01T00:00:00", "n": 1}\n\n{"id": "b", "when": "later", "n": 2.5}\n')
    t = FileSource([str(p)]).read_unit(FileSource([str(p)]).units()[0])
    assert t.column("when").to_pylist() == ["2020-01-01T00:00:00", "later"]
    assert t.column("n").to_pylist() == [1.0, 2.5]
