import json
import os

import datasets
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from lrpipe.errors import AccountingError, ConfigMismatchError
from lrpipe.runner import MapStage, UnitOutput, resolve_rank, run_stage
from lrpipe.shards import REJECT_DETAIL, REJECT_REASON, ShardDir, UnitSpec


class Numbers(MapStage):
    """Units of 10 ints; odd numbers rejected."""

    name = "numbers"

    def __init__(self, units=5, tag="a", fail_at=None):
        self.n, self.tag, self.fail_at = units, tag, fail_at
        self.calls = []

    def config(self):
        return {"units": self.n, "tag": self.tag}

    def plan(self):
        return [UnitSpec(index=i, name=f"u{i}", params={"rows": 10}) for i in range(self.n)]

    def process(self, unit):
        if unit.index == self.fail_at:
            raise RuntimeError("boom")
        self.calls.append(unit.index)
        xs = list(range(unit.index * 10, unit.index * 10 + 10))
        kept = pa.table({"id": [f"n{x}" for x in xs if x % 2 == 0], "x": [x for x in xs if x % 2 == 0]})
        odd = [x for x in xs if x % 2]
        rej = pa.table({"id": [f"n{x}" for x in odd], "x": odd, REJECT_REASON: ["odd"] * len(odd),
                        REJECT_DETAIL: [str(x) for x in odd]})
        return UnitOutput(kept, rej, rows_in=10)


def test_layout_loads_with_datasets_and_pyarrow(tmp_path):
    out = tmp_path / "s"
    rep = run_stage(Numbers(), out, progress=False)
    assert rep.complete and rep.rows_out == 25 and rep.rows_rejected == 25
    files = sorted((out / "data").glob("*.arrow"))
    assert [f.name for f in files] == [f"part-{i:05d}.arrow" for i in range(5)]
    with open(files[0], "rb") as fh:
        assert ipc.open_stream(fh).read_all().num_rows == 5
    ds = datasets.load_dataset("arrow", data_files=str(out / "data" / "*.arrow"), split="train")
    assert sorted(ds["id"]) == sorted(f"n{x}" for x in range(0, 50, 2))
    rej = datasets.load_dataset("arrow", data_files=str(out / "rejected" / "*.arrow"), split="train")
    assert set(rej[REJECT_REASON]) == {"odd"}
    m = json.loads((out / "manifest.json").read_text())
    assert m["totals"]["rows_in"] == 50 and m["totals"]["balanced"] and m["complete"]
    assert m["totals"]["rejected_by_reason"] == {"odd": 25}
    for u in m["units"]:
        assert u["status"] == "done" and u["rows_in"] == u["rows_out"] + u["rows_rejected"]
        assert u["checksum"].startswith("sha256:")
    assert m["config_hash"] and m["version"] and m["stage"] == "numbers"


def test_rerun_is_noop_and_resume_skips_done(tmp_path):
    out = tmp_path / "s"
    with pytest.raises(RuntimeError):
        run_stage(Numbers(fail_at=3), out, progress=False)
    m = ShardDir.open(out).manifest()
    assert m["totals"]["units_done"] == 3 and not m["complete"]
    st = Numbers()
    run_stage(st, out, progress=False)
    assert st.calls == [3, 4]
    st2 = Numbers()
    run_stage(st2, out, progress=False)
    assert st2.calls == []


def test_config_mismatch_refused_then_overwrite(tmp_path):
    out = tmp_path / "s"
    run_stage(Numbers(tag="a"), out, progress=False)
    with pytest.raises(ConfigMismatchError, match="tag"):
        run_stage(Numbers(tag="b"), out, progress=False)
    with pytest.raises(ConfigMismatchError, match="world-size"):
        run_stage(Numbers(tag="b"), out, progress=False, overwrite=True, rank=0, world_size=2)
    st = Numbers(tag="b")
    run_stage(st, out, progress=False, overwrite=True)
    assert st.calls == [0, 1, 2, 3, 4]
    assert ShardDir.open(out).header()["config"]["tag"] == "b"


def test_ranks_split_units_and_share_one_directory(tmp_path):
    out = tmp_path / "s"
    a, b, c = Numbers(units=7), Numbers(units=7), Numbers(units=7)
    r0 = run_stage(a, out, rank=0, world_size=3, progress=False)
    assert a.calls == [0, 3, 6] and not r0.complete
    run_stage(b, out, rank=1, world_size=3, progress=False)
    r2 = run_stage(c, out, rank=2, world_size=3, progress=False)
    assert b.calls == [1, 4] and c.calls == [2, 5] and r2.complete
    ids = ShardDir.open(out).read_all().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 35


def test_env_rank_resolution(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_PROCID", "SLURM_NTASKS",
              "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(k, raising=False)
    assert resolve_rank(None, None) == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert resolve_rank(None, None) == (3, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_rank(None, None) == (3 * 2 + 1, 8)  # torchrun inside array task 3: ranks compose
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert resolve_rank(None, None) == (1, 2)
    assert resolve_rank(0, 5) == (0, 5)
    with pytest.raises(ValueError):
        resolve_rank(5, 5)


def test_accounting_error_and_nothing_half_written(tmp_path):
    class Lossy(Numbers):
        def process(self, unit):
            res = super().process(unit)
            return UnitOutput(res.kept, None, rows_in=10)  # drops the odd rows silently

    out = tmp_path / "s"
    with pytest.raises(AccountingError, match="rows in 10"):
        run_stage(Lossy(), out, progress=False)
    assert not list((out / "data").glob("*.arrow"))
    assert not list((out / "units").glob("*.json"))


def test_uncommitted_unit_and_temporaries_are_redone(tmp_path):
    out = tmp_path / "s"
    run_stage(Numbers(), out, progress=False)
    # simulate a kill between data rename and commit of unit 2, and a stray temp file
    (out / "units" / "part-00002.json").unlink()
    (out / "data" / ".part-00002.arrow.tmp.host.123").write_bytes(b"garbage")
    st = Numbers()
    run_stage(st, out, progress=False)
    assert st.calls == [2]
    assert not [f for f in os.listdir(out / "data") if ".tmp." in f]
    assert ShardDir.open(out).manifest()["totals"]["rows_in"] == 50


def test_attempts_count_retries_and_stop_at_final_failures():
    from lrpipe.runner import Attempts

    a = Attempts(retries=2)
    assert a.start("x") == 0 and a.start("y") == 0
    assert a.again("x") == 1 and a.again("x") == 2 and a.again("x") is None  # 1 try + 2 retries
    assert a.again("y", final=True) is None and a["y"] == 0  # a final failure (cut at its budget): no retry
    assert a.tries("x") == 3 and a.tries() == 4
