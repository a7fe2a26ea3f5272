"""``appliance export``: a Hive-partitioned Parquet dataset that DuckDB,
polars and pandas read as it is, equal to the API's JSON bar for bar, and
incremental (nothing written when nothing changed, one file when one
session changed). Real PostgreSQL; the stock of test_columnar."""
from __future__ import annotations

import datetime as dt
import json
import os

import duckdb
import pandas as pd
import polars as pl
import yaml
from click.testing import CliRunner

from appliance.core.errors import ExportError
from appliance.ops import export
from tests.integration.test_columnar import END, START, _json_bars, stocked  # noqa: F401
from tests.minute_store import store_minutes


def _files(out) -> dict:
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns
            for p in out.rglob("*.parquet")}


def test_cli_export_is_read_by_duckdb_polars_and_pandas_as_json_says(client, stocked,
                                                                     tmp_path):
    out = tmp_path / "dataset"
    r = CliRunner().invoke(
        __import__("appliance.cli.main", fromlist=["main"]).main,
        ["--config", str(stocked.config.path), "export", "--timeframe", "1m",
         "--start", START, "--end", END, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "2 file(s) written" in r.output
    assert set(_files(out)) == {"timeframe=1m/year=2024/month=5/bars.parquet",
                                "timeframe=1m/year=2024/month=6/bars.parquet"}
    manifest = json.loads((out / "manifest.json").read_text())
    june = manifest["partitions"]["timeframe=1m/year=2024/month=6"]
    assert june["symbols"] == ["AAPL", "NVDA"] and june["rows"] > 0 and june["fingerprint"]

    want = {s: _json_bars(client, f"/api/v1/historical/{s}?timeframe=1m&start={START}"
                                  f"&end={END}&include_invalid=true") for s in ("AAPL", "NVDA")}
    rows = duckdb.sql(f"""SELECT symbol, time, close, volume, validated, timeframe, year, month
                          FROM read_parquet('{out}/**/*.parquet', hive_partitioning=true)
                          ORDER BY symbol, time""").fetchall()
    assert len(rows) == sum(len(v) for v in want.values())
    assert {r[5] for r in rows} == {"1m"} and {(r[6], r[7]) for r in rows} == {(2024, 5),
                                                                               (2024, 6)}
    nvda = [r for r in rows if r[0] == "NVDA"]
    for j, r in zip(want["NVDA"], nvda, strict=False):
        assert r[1] == dt.datetime.fromisoformat(j["time"])
        assert (r[2], r[3], r[4]) == (j["close"], j["volume"], j["validated"])
    assert not all(r[4] for r in nvda)  # the invalid bars are there, flagged

    lf = pl.scan_parquet(f"{out}/**/*.parquet", hive_partitioning=True)
    got = (lf.filter(pl.col("symbol").cast(pl.String) == "NVDA").sort("time")
           .select("close").collect())
    assert got["close"].to_list() == [j["close"] for j in want["NVDA"]]
    df = pd.read_parquet(out / "timeframe=1m")
    assert len(df) == len(rows) and set(df["month"].astype(int)) == {5, 6}


def test_a_second_export_writes_nothing_and_a_changed_session_one_file(stocked, tmp_path):
    out = tmp_path / "ds"
    start, end = dt.date.fromisoformat(START), dt.date.fromisoformat(END)
    first = export.export(stocked.read_conn, "5m", start, end, out, tz="America/New_York")
    assert len(first["written"]) == 2
    files = _files(out)
    manifest = (out / "manifest.json").read_text()
    saved = (out / "manifest.json").stat().st_mtime_ns

    again = export.export(stocked.read_conn, "5m", start, end, out, tz="America/New_York")
    assert again == {"written": [], "unchanged": 2, "removed": [], "rows": 0}
    assert _files(out) == files and (out / "manifest.json").read_text() == manifest
    assert (out / "manifest.json").stat().st_mtime_ns == saved  # not even written again

    store_minutes(stocked, "AAPL", "2024-06-12", "2024-06-12", seed=11)  # one session again
    third = export.export(stocked.read_conn, "5m", start, end, out, tz="America/New_York")
    assert third["written"] == ["timeframe=5m/year=2024/month=6"]
    now = _files(out)
    may = "timeframe=5m/year=2024/month=5/bars.parquet"
    june = "timeframe=5m/year=2024/month=6/bars.parquet"
    assert now[may] == files[may] and now[june] != files[june]


def test_daily_and_weekly_datasets_equal_json(client, stocked, tmp_path):
    out = tmp_path / "ds"
    for tf in ("1d", "1w"):
        export.export(stocked.read_conn, tf, dt.date(2024, 1, 1), dt.date(2024, 6, 30), out,
                      tz="America/New_York")
    con = duckdb.connect()
    for tf, start, end in (("1d", "2024-01-01", "2024-06-30"), ("1w", "2024-01-07",
                                                                 "2024-07-06")):
        want = _json_bars(client, f"/api/v1/historical/NVDA?timeframe={tf}&start={start}"
                                  f"&end={end}&include_invalid=true")
        got = con.sql(f"""SELECT timezone('America/New_York', time)::date, close, volume
                          FROM read_parquet('{out}/timeframe={tf}/**/*.parquet',
                                            hive_partitioning=true)
                          WHERE symbol = 'NVDA' ORDER BY time""").fetchall()
        assert [(g[0].isoformat(), g[1], g[2]) for g in got] == \
            [(j["time"], j["close"], j["volume"]) for j in want], tf


def test_a_manifest_that_is_not_one_is_refused_by_name(stocked, tmp_path):
    (tmp_path / "manifest.json").write_text("[1, 2]")
    try:
        export.export(stocked.read_conn, "1d", dt.date(2024, 1, 1), dt.date(2024, 1, 31),
                      tmp_path, tz="America/New_York")
    except ValueError as e:
        assert "manifest.json is not an export manifest" in str(e)
    else:
        raise AssertionError("an unreadable manifest was overwritten")


def test_the_scheduled_export_job_keeps_the_configured_dataset_up_to_date(stocked,
                                                                        config_factory,
                                                                        tmp_path):
    from appliance.jobs import runs
    from appliance.jobs.reload import reload_config
    from appliance.ops.export import export_dataset
    res = runs.execute(stocked, "export", runs.manual_slot(), export_dataset, params={})
    assert res["status"] == "ok" and "export.out is empty" in res["skipped"]

    out = tmp_path / "nightly"
    data = yaml.safe_load(stocked.config.path.read_text())
    data["export"] = {"out": str(out), "timeframes": ["1m", "1d"]}
    stocked.config.path.write_text(yaml.safe_dump(data))
    assert reload_config(stocked, source="cli")["ok"]
    first = runs.execute(stocked, "export", runs.manual_slot(), export_dataset, params={})
    assert first["status"] == "ok", first
    r = first
    assert r["timeframes"]["1m"]["written"] == 2 and r["timeframes"]["1d"]["written"] > 2
    assert r["rows"] == r["timeframes"]["1m"]["rows"] + r["timeframes"]["1d"]["rows"] > 0
    # the console's Jobs table shows the bars written in its Rows column
    from appliance.store import runs as runs_sql
    from appliance.web.console.jobs import run_view
    with stocked.conn() as conn:
        assert run_view(runs_sql.get(conn, first["run_id"]))["rows"] == r["rows"]
    assert (out / "timeframe=1d").is_dir() and (out / "timeframe=1m").is_dir()
    again = runs.execute(stocked, "export", runs.manual_slot(), export_dataset, params={})
    assert again["status"] == "ok" and again["files_written"] == 0

    # history.start moved later, one symbol's since before it: a new dataset
    # still holds that symbol's bars stored before the start
    def first_month(d):
        return min((int(p.parent.name[5:]), int(p.name[6:]))
                   for p in (d / "timeframe=1d").glob("year=*/month=*"))
    start = stocked.config.history_start("1d")
    data["history"] = {"start": "2024-06-03"}
    data["symbols"] = [{"symbol": "NVDA", "since": start.isoformat()}, "AAPL", "MSFT"]
    data["export"] = {"out": str(tmp_path / "fresh"), "timeframes": ["1d"]}
    stocked.config.path.write_text(yaml.safe_dump(data))
    assert reload_config(stocked, source="cli")["ok"]
    fresh = runs.execute(stocked, "export", runs.manual_slot(), export_dataset, params={})
    assert fresh["status"] == "ok", fresh
    assert first_month(tmp_path / "fresh") == first_month(out) < (2024, 6)


def test_bad_ranges_are_refused_by_name(stocked, tmp_path):
    r = CliRunner().invoke(
        __import__("appliance.cli.main", fromlist=["main"]).main,
        ["--config", str(stocked.config.path), "export", "--timeframe", "1d",
         "--start", "2024-02-01", "--end", "2024-01-01", "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "--start (2024-02-01) is after --end (2024-01-01)" in r.output
    r = CliRunner().invoke(
        __import__("appliance.cli.main", fromlist=["main"]).main,
        ["--config", str(stocked.config.path), "export", "--timeframe", "1d",
         "--start", "2024-01-01", "--end", "9999-12-31", "--out", str(tmp_path / "d")])
    assert r.exit_code == 1 and "must be before 9999-12-01" in r.output


def test_a_month_that_cannot_be_written_fails_the_run_by_name_and_leaves_no_half_file(
        stocked, tmp_path):
    out = tmp_path / "ds"
    start, end = dt.date.fromisoformat(START), dt.date.fromisoformat(END)
    # June's file cannot replace a directory of the same name: a real error
    # of the file system, while May is written by the other worker
    blocked = out / "timeframe=1m/year=2024/month=6" / export.FILE
    blocked.mkdir(parents=True)
    try:
        export.export(stocked.read_conn, "1m", start, end, out, tz="America/New_York")
    except ExportError as e:
        assert f"cannot write {blocked}: Is a directory" in e.message, e.message
        assert "the 1 month file(s) written are kept" in e.message, e.message
    else:
        raise AssertionError("a month that could not be written was not an error")
    assert not list(out.rglob("*.tmp"))  # nothing half-written is left
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["partitions"]) == {"timeframe=1m/year=2024/month=5"}
    may = _files(out)["timeframe=1m/year=2024/month=5/bars.parquet"]

    blocked.rmdir()
    again = export.export(stocked.read_conn, "1m", start, end, out, tz="America/New_York")
    assert again["written"] == ["timeframe=1m/year=2024/month=6"] and again["unchanged"] == 1
    assert _files(out)["timeframe=1m/year=2024/month=5/bars.parquet"] == may
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/**/*.parquet')").fetchall()[0][0]
    assert n == again["rows"] + manifest["partitions"]["timeframe=1m/year=2024/month=5"]["rows"]


def test_a_full_disk_is_named_with_what_is_free_and_the_next_run_writes_the_rest(
        stocked, tmpfs):
    small_disk = tmpfs("4m")
    out = small_disk / "ds"
    st = os.statvfs(small_disk)
    filler = small_disk / "filler"  # leaves 64 KiB: the manifest fits, no month does
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 64 * 1024))
    r = CliRunner().invoke(
        __import__("appliance.cli.main", fromlist=["main"]).main,
        ["--config", str(stocked.config.path), "export", "--timeframe", "1m",
         "--start", START, "--end", END, "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output, r.output
    assert f"error: cannot write {out}/timeframe=1m/year=2024/month=" in r.output, r.output
    assert "No space left on device (" in r.output and " KiB free)" in r.output, r.output
    assert "the next run writes only what is missing" in r.output, r.output
    # no half-written file, no empty directory of a month not written
    assert sorted(p.name for p in out.rglob("*")) == ["manifest.json"], list(out.rglob("*"))
    assert json.loads((out / "manifest.json").read_text())["partitions"] == {}

    filler.unlink()
    again = export.export(stocked.read_conn, "1m", dt.date.fromisoformat(START),
                          dt.date.fromisoformat(END), out, tz="America/New_York")
    assert again["written"] == ["timeframe=1m/year=2024/month=5",
                                "timeframe=1m/year=2024/month=6"], again
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/**/*.parquet')").fetchall()[0][0]
    assert n == again["rows"] > 0


def test_every_file_a_failed_run_leaves_is_in_its_manifest(stocked, tmp_path):
    # May cannot be written while June, written at the same time, may end
    # first: whatever the order, a file on disk is a file the manifest lists
    start, end = dt.date.fromisoformat(START), dt.date.fromisoformat(END)
    for i in range(8):
        out = tmp_path / f"ds{i}"
        (out / "timeframe=1m/year=2024/month=5" / export.FILE).mkdir(parents=True)
        try:
            export.export(stocked.read_conn, "1m", start, end, out, tz="America/New_York")
        except ExportError as e:
            assert "month=5" in e.message
        else:
            raise AssertionError("a month that could not be written was not an error")
        listed = {p["file"] for p in json.loads((out / "manifest.json").read_text())
                  ["partitions"].values()}
        on_disk = {f for f in _files(out) if not (out / f).is_dir()}
        assert on_disk == listed, (i, on_disk, listed)
