"""``pipe report``: statistics written with each unit, and the page read in headless Chromium.

Every page test opens the HTML offline (tests/browser.py) and checks what a reader sees against the
data itself: the funnel's counts are the manifests', each reject reason's sample rows are rows
rejected for that reason, the kept rows shown are kept rows, every chart is drawn. The chain tests
of the other stages (study chain, training resume, evaluation) build their own pages the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from lrpipe.page import build_report, collect_page
from lrpipe.profile import LENGTH_EDGES, SAMPLE_PER_REASON, facet_keys
from lrpipe.shards import ShardDir, UnitSpec
from tests.browser import assert_renders, open_page, screenshot_path

ROOT = Path(__file__).resolve().parents[1]

CATS = ["general", "math", "code"]
TEMPS = [0.8, 1.0, 1.2]


def magpie_like(n: int, start: int) -> pa.Table:
    rows = []
    for i in range(start, start + n):
        rows.append({"id": f"r{i:05d}", "category": CATS[i % 3], "temperature": TEMPS[(i // 3) % 3] + 1e-16,
                     "instruction": "word " * (1 + i % 40), "instruction_tokens": 1 + (i * 7) % 300,
                     "instruction_eu": "hitz " * (1 + i % 50)})
    return pa.Table.from_pylist(rows)


def write_stage(path: Path, stage: str, units: int, rows: int, reject_every: dict[str, int]) -> ShardDir:
    """A shard directory written the way the runner writes one, with rejects by reason."""
    plan = [UnitSpec(i, f"unit-{i}") for i in range(units)]
    sd = ShardDir.create(path, stage=stage, config={"stage": stage, "model": "m"}, plan=plan)
    for u in plan:
        t = magpie_like(rows, u.index * rows)
        keep, rej, reasons = [], [], []
        for i in range(t.num_rows):
            why = next((r for r, k in reject_every.items() if i % k == 0), None)
            (rej if why else keep).append(i)
            if why:
                reasons.append(why)
        kept = t.take(pa.array(keep, pa.int64()))
        rejected = t.take(pa.array(rej, pa.int64())).append_column("reject_reason", pa.array(reasons)) \
            .append_column("reject_detail", pa.array([f"detail {r}" for r in reasons]))
        sd.write_unit(u, kept, rejected, rows_in=t.num_rows)
    sd.refresh_manifest()
    return sd


def test_each_unit_writes_a_profile_that_adds_up_to_its_manifest(tmp_path):
    sd = write_stage(tmp_path / "s", "magpie.sample", units=3, rows=60, reject_every={"dup": 5, "colon": 7})
    m = sd.manifest()
    profiles = [sd.profile(i) for i in range(3)]
    assert all(p is not None and "error" not in p for p in profiles)
    page = collect_page(tmp_path / "s", detect_languages=False)
    st = page["stages"][0]
    # facets and histograms sum to the manifest's counts
    from lrpipe.page.collect import shard_summary

    summ = shard_summary(tmp_path / "s", tmp_path)
    assert sum(summ["kept"]["facets"]["category"].values()) == m["totals"]["rows_out"]
    assert sum(summ["rejected"]["facets"]["category"].values()) == m["totals"]["rows_rejected"]
    hist = summ["kept"]["lengths"]["instruction (tokens)"]
    assert sum(hist["all"]) == m["totals"]["rows_out"] and len(hist["all"]) == len(LENGTH_EDGES)
    assert sum(sum(v) for k, v in hist.items() if k.startswith("category=")) == m["totals"]["rows_out"]
    assert sum(summ["kept"]["ratios"]["instruction_eu / instruction"]) == m["totals"]["rows_out"]
    cells = summ["kept"]["facets"]["category|temperature"]
    assert set(cells) == {f"{c}|{t:g}" for c in CATS for t in TEMPS}  # 0.8 + 1e-16 reads as 0.8
    # every sampled rejected row is a row rejected for that reason
    rejected = {r["id"]: r["reject_reason"] for r in sd.read_all(rejected=True).to_pylist()}
    kept_ids = set(sd.read_all().column("id").to_pylist())
    for r in st["reasons"]:
        assert 0 < len(r["samples"]) <= min(6, r["count"], 3 * SAMPLE_PER_REASON)
        assert all(rejected[x["id"]] == r["reason"] for x in r["samples"])
    assert st["samples_kept"] and all(x["id"] in kept_ids for x in st["samples_kept"])
    # shown rows come from across the units, not the first one only
    assert len({int(x["id"][1:]) // 60 for x in st["samples_kept"]}) > 1


def test_a_redone_unit_rewrites_its_profile_and_old_dirs_are_profiled_from_data(tmp_path):
    sd = write_stage(tmp_path / "s", "filter", units=2, rows=30, reject_every={"dup": 4})
    first = json.loads((tmp_path / "s" / "profile" / "part-00001.json").read_text())
    # a unit written before profiles existed: the report reads that unit's files instead
    (tmp_path / "s" / "profile" / "part-00001.json").unlink()
    page = collect_page(tmp_path / "s", detect_languages=False)
    assert page["stages"][0]["units_profiled_from_data"] == 1
    from lrpipe.page.collect import shard_summary

    summ = shard_summary(tmp_path / "s", tmp_path)
    assert sum(summ["kept"]["facets"]["category"].values()) == sd.manifest()["totals"]["rows_out"]
    # the same unit written again (a resumed run redoes an uncommitted unit) gives the same profile
    write_stage(tmp_path / "t", "filter", units=2, rows=30, reject_every={"dup": 4})
    assert json.loads((tmp_path / "t" / "profile" / "part-00001.json").read_text()) == first


def test_page_opens_offline_with_every_chart_and_the_rows_it_claims(tmp_path):
    write_stage(tmp_path / "chain" / "a_sample", "magpie.sample", units=4, rows=50, reject_every={"max_tokens": 6})
    write_stage(tmp_path / "chain" / "b_filtered", "filter", units=4, rows=40, reject_every={"dedup": 5, "colon": 9})
    out = build_report(tmp_path / "chain", tmp_path / "page.html", detect_languages=False)
    html = out.read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # nothing to fetch
    facts = open_page(out, screenshot_path(tmp_path, "synthetic"))
    assert_renders(facts, min_charts=5)
    names = [c["name"] for c in facts.charts]
    assert names.count("funnel") == 1 and names.count("heat") == 1 and "lengths" in names and "ratios" in names
    for stage, reasons in (("a_sample", ["max_tokens"]), ("b_filtered", ["colon", "dedup"])):
        sd = ShardDir.open(tmp_path / "chain" / stage)
        rejected = {r["id"]: r["reject_reason"] for r in sd.read_all(rejected=True).to_pylist()}
        for reason in reasons:
            table = facts.table(f"{stage} rejected:{reason}")
            head, rows = table[0], table[1:]
            assert rows, (stage, reason)
            ids = [r[head.index("id")] for r in rows]
            assert all(rejected[i] == reason for i in ids)
            assert all(r[head.index("reject_detail")] == f"detail {reason}" for r in rows)
        kept = facts.table(f"{stage} kept")
        assert len(kept) > 1
    # the funnel table says what the manifests say
    for stage in ("a_sample", "b_filtered"):
        t = ShardDir.open(tmp_path / "chain" / stage).manifest()["totals"]
        assert f"{stage}\t{'magpie.sample' if stage == 'a_sample' else 'filter'}\t{t['rows_in']:,}\t" \
               f"{t['rows_out']:,}\t{t['rows_rejected']:,}" in facts.text


def test_nothing_to_report_is_one_line_naming_the_path(tmp_path):
    res = subprocess.run([sys.executable, "-m", "lrpipe", "report", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT)
    assert res.returncode != 0
    assert str(tmp_path) in res.stderr and "nothing to report" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_page_of_the_quickstart_output(magpie_run, tmp_path, env):
    """``pipe run magpie`` then ``pipe report``: the funnel is the manifests', the heat map covers
    every (category, temperature) cell the run planned, the sample rows are rows of their kind."""
    out = tmp_path / "magpie.html"
    res = subprocess.run([sys.executable, "-m", "lrpipe", "report", str(magpie_run), "--out", str(out)],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    facts = open_page(out, screenshot_path(tmp_path, "quickstart"))
    assert_renders(facts, min_charts=4)
    assert out.stat().st_size < 5e6
    data = collect_page(magpie_run, detect_languages=False)
    names = [s["name"] for s in data["stages"]]
    assert names == ["sample", "respond", "filtered"]
    sample = ShardDir.open(magpie_run / "sample").read_all()
    rejected_sample = ShardDir.open(magpie_run / "sample").read_all(rejected=True)
    both = pa.concat_tables([sample, rejected_sample.select(sample.column_names)])
    planned = set(zip(both.column("category").to_pylist(), facet_keys(both.column("temperature")).to_pylist()))
    hm_cells = {tuple(k.split("|")) for k in collect_page_heat(magpie_run)}
    assert hm_cells == planned
    for s in data["stages"]:
        sd = ShardDir.open(magpie_run / s["name"])
        t = sd.manifest()["totals"]
        assert f"{t['rows_in']:,}\t{t['rows_out']:,}\t{t['rows_rejected']:,}" in facts.text
        kept_ids = set(sd.read_all().column("id").to_pylist())
        table = facts.table(f"{s['name']} kept")
        if t["rows_out"]:
            assert [r[table[0].index("id")] for r in table[1:]] and all(
                r[table[0].index("id")] in kept_ids for r in table[1:])
        rej = {r["id"]: r["reject_reason"] for r in sd.read_all(rejected=True).to_pylist()} if t["rows_rejected"] else {}
        for reason in t["rejected_by_reason"]:
            tb = facts.table(f"{s['name']} rejected:{reason}")
            assert len(tb) > 1 and all(rej[r[tb[0].index("id")]] == reason for r in tb[1:])


def collect_page_heat(path: Path) -> dict[str, tuple[int, int]]:
    from lrpipe.page import collect as c

    found = c.discover(path)
    stages = [c.shard_summary(d, path) for d in found.shard_dirs]
    return c.heat_map(stages)["cells"]
