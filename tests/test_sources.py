import json

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


@pytest.mark.parametrize("name", ["a.jsonl", "b.json", "c.parquet", "d.arrow"])
def test_local_formats_normalize_sharegpt(tmp_path, name):
    _write_all(tmp_path)
    src = open_source(tmp_path / name, rows_per_unit=2)
    units = src.units()
    assert [u.params["rows"] for u in units] == [2, 2, 1]
    t = pa.concat_tables([src.read_unit(u) for u in units])
    assert t.column("id").to_pylist() == [r["id"] for r in ROWS]
    assert t.column("conversation").to_pylist()[3] == [{"role": "user", "content": "q3"},
                                                      {"role": "assistant", "content": "a3"}]
    assert "conversations" not in t.column_names


def test_csv_and_folder(tmp_path):
    _write_all(tmp_path)
    src = open_source(tmp_path / "e.csv")
    assert src.read_unit(src.units()[0]).column("instruction").to_pylist() == ["hello", "world"]
    folder = open_source(tmp_path)
    assert isinstance(folder, FileSource) and len(folder.paths) == 5


def test_errors_name_file_row_field(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_source(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n{"id": 2\n')
    with pytest.raises(InputError, match=r"bad.jsonl, row 1: invalid JSON"):
        open_source(bad).units()
    conv = tmp_path / "conv.jsonl"
    conv.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"id": "x", "conversations": [{"speaker": "a"}]}) + "\n")
    src = open_source(conv)
    with pytest.raises(InputError, match=r"conv.jsonl, row 1, field 'conversations'"):
        src.read_unit(src.units()[0])
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(ROWS[0]) + "\n")
    src = open_source(good)
    with pytest.raises(InputError, match=r"missing column\(s\) \['instruction'\]"):
        src.require(["instruction"])
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"a": 1}\n{"a": "x"}\n')
    with pytest.raises(InputError, match=r"mixed.jsonl, row 1, field 'a'"):
        open_source(mixed).units()
    junk = tmp_path / "junk.arrow"
    junk.write_bytes(b"not arrow at all")
    with pytest.raises(InputError, match="not a readable Arrow shard"):
        open_source(junk).units()


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
    assert t.column("id").to_pylist() == ["r4"] and "conversation" in t.column_names


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
