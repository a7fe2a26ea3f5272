"""Arrow and Parquet answers read by the real research clients (pyarrow,
pandas, polars, DuckDB), bar for bar against the JSON answer: every
timeframe, raw and split-adjusted, NVDA with a 10-for-1 split and
extended-hours minute sessions; the bulk endpoint's scope, limit, order and
disconnects. Real PostgreSQL and Redis; daily bars from the demo provider."""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import time
from zoneinfo import ZoneInfo

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
import yaml

from appliance.core import timeframes
from tests.minute_store import store_minutes
from tests.support import wait_until

START, END = "2024-05-28", "2024-06-14"
PARQUET, ARROW = "application/vnd.apache.parquet", "application/vnd.apache.arrow.stream"
EXPORT_KEY, READ_KEY = "mda_export_key_for_tests_0123456789", "mda_read_key_for_tests_0123456789"
SLOW_KEY, SLOW_RATE = "mda_slow_key_for_tests_0123456789", 5000
NY = ZoneInfo("America/New_York")
PRICES = ("open", "high", "low", "close", "volume", "vwap")


def _key(name: str, key: str, scopes: list[str]) -> dict:
    return {"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": scopes}


@pytest.fixture
def stocked(runtime, config_factory):
    """Demo daily bars of AAPL, MSFT and NVDA (NVDA splits 10-for-1 on
    2024-06-10); NVDA's and AAPL's extended-hours minutes of START..END."""
    from appliance.ingest.backfill import run_backfill
    from appliance.jobs import runs
    from appliance.jobs.reload import reload_config
    config_factory(symbols=["AAPL", "MSFT", "NVDA"],
                   server={"api_keys": [_key("research", EXPORT_KEY, ["read", "export"]),
                                        _key("reader", READ_KEY, ["read"]),
                                        {**_key("slow", SLOW_KEY, ["read", "export"]),
                                         "export_rows_per_second": SLOW_RATE}],
                           "export": {"max_rows": 100_000}})
    assert reload_config(runtime, source="cli")["ok"]
    res = runs.execute(runtime, "backfill", runs.manual_slot(), run_backfill, params={})
    assert res["status"] == "ok", res  # the demo provider is deterministic: nothing fails
    store_minutes(runtime, "NVDA", START, END, split_date="2024-06-10", invalid=3)
    store_minutes(runtime, "AAPL", START, END, seed=9)
    return runtime


def _get(client, url, **headers):
    r = client.get(url, headers=headers)
    assert r.status_code == 200, (url, r.status_code, r.get_data(as_text=True)[:500])
    return r


def _json_bars(client, url: str) -> list[dict]:
    out = []
    while url:
        d = _get(client, url).get_json()
        out += d["data"]
        url = d.get("next")
    return out


def _next_of(r) -> str | None:
    link = r.headers.get("Link")
    return link[1:link.index(">")] if link else None


def _tables(client, url: str, fmt: str) -> list[pa.Table]:
    """Every page of a Parquet or Arrow answer, following the Link header."""
    out = []
    url = f"{url}&format={fmt}"
    while url:
        r = _get(client, url)
        assert r.mimetype == (PARQUET if fmt == "parquet" else ARROW)
        data = r.get_data()
        out.append(pq.read_table(io.BytesIO(data)) if fmt == "parquet"
                   else ipc.open_stream(data).read_all())
        url = _next_of(r)
    return out


def _same(rows: list[dict], table: pa.Table, timeframe: str) -> None:
    """The table's bars are the JSON rows, value for value."""
    got = table.to_pylist()
    assert len(got) == len(rows)
    for j, a in zip(rows, got, strict=False):
        if timeframe in ("1d", "1w"):
            local = a["time"].astimezone(NY)
            assert (local.date().isoformat(), local.time()) == (j["time"], dt.time(0))
        else:
            assert a["time"] == dt.datetime.fromisoformat(j["time"])
            assert a["session"].isoformat() == j["session"]
        for c in PRICES:
            assert a[c] == j[c], (c, j, a)
        for c in ("trades", "validated", "gap_detected", "gap_kind", "source", "sessions"):
            if c in j:
                assert a[c] == j[c], (c, j, a)
        if "quality_score" in j:
            assert a["quality_score"] == pytest.approx(j["quality_score"], rel=1e-6)


@pytest.mark.parametrize("adjusted", ["false", "true"])
def test_parquet_and_arrow_equal_json_bar_for_bar_on_every_timeframe(client, stocked,
                                                                     adjusted):
    for tf in timeframes.ALL:
        start = "2024-01-02" if tf in ("1d", "1w") else START
        limit = {"1m": "&limit=4000", "5m": "&limit=700", "1w": "&limit=10"}.get(tf, "")
        url = (f"/api/v1/historical/NVDA?timeframe={tf}&start={start}&end={END}"
               f"&adjusted={adjusted}{limit}")
        rows = _json_bars(client, url)
        assert rows, tf
        for fmt in ("parquet", "arrow"):
            pages = _tables(client, url, fmt)
            if tf in ("1m", "5m", "1w"):
                assert len(pages) > 1, (tf, "the same cursor pages")
            _same(rows, pa.concat_tables(pages), tf)


def test_split_adjusted_minutes_before_the_split_are_a_tenth(client, stocked):
    url = "/api/v1/historical/NVDA?timeframe=1h&start=2024-06-07&end=2024-06-07"
    raw = pq.read_table(io.BytesIO(_get(client, url + "&format=parquet").get_data()))
    adj = pq.read_table(io.BytesIO(_get(client, url + "&format=parquet&adjusted=true")
                                   .get_data()))
    assert raw.num_rows == adj.num_rows > 0
    for a, b in zip(raw.column("close").to_pylist(), adj.column("close").to_pylist(), strict=False):
        assert b == a * 0.1


def test_types_and_metadata_are_what_a_researcher_expects(client, stocked):
    r = _get(client, f"/api/v1/historical/NVDA?timeframe=1m&start={START}&end={END}"
                     f"&limit=500&format=parquet&include_invalid=true")
    assert "attachment" in r.headers["Content-Disposition"]
    t = pq.read_table(io.BytesIO(r.get_data()))
    s = t.schema
    assert s.field("symbol").type == pa.dictionary(pa.int32(), pa.string())
    assert s.field("time").type == pa.timestamp("ms", tz="UTC")
    assert s.field("session").type == pa.date32()
    for c in PRICES:
        assert s.field(c).type == pa.float64()
    assert s.field("validated").type == pa.bool_()
    assert s.metadata[b"exchange_timezone"] == b"America/New_York"
    req = json.loads(s.metadata[b"appliance"])
    assert {k: req[k] for k in ("symbol", "timeframe", "adjusted", "source", "count")} == \
        {"symbol": "NVDA", "timeframe": "1m", "adjusted": False, "source": "test",
         "count": 500}
    assert req["next"] == _next_of(r) and "cursor=" in req["next"]
    # the extended session: the day's first bars are pre-market, from 04:00 New York
    first = t.column("time")[0].as_py().astimezone(NY)
    assert dt.time(4, 0) <= first.time() < dt.time(9, 30)
    daily = pq.read_table(io.BytesIO(_get(
        client, "/api/v1/historical/NVDA?start=2024-06-03&end=2024-06-14&format=parquet")
        .get_data()))
    assert daily.schema.field("gap_detected").type == pa.bool_()
    assert "split" in daily.column("gap_kind").to_pylist()


def test_pandas_polars_and_duckdb_read_the_answers(client, stocked, tmp_path):
    url = f"/api/v1/historical/NVDA?timeframe=5m&start={START}&end={END}&limit=50000"
    rows = _json_bars(client, url)
    pq_bytes = _get(client, url + "&format=parquet").get_data()
    arrow_bytes = _get(client, url + "&format=arrow").get_data()
    closes = [j["close"] for j in rows]
    df = pd.read_parquet(io.BytesIO(pq_bytes))
    assert df["close"].tolist() == closes
    assert str(df["time"].dt.tz) == "UTC"
    assert pl.read_parquet(io.BytesIO(pq_bytes))["close"].to_list() == closes
    assert pl.read_ipc_stream(io.BytesIO(arrow_bytes))["close"].to_list() == closes
    (tmp_path / "nvda.parquet").write_bytes(pq_bytes)
    got = duckdb.sql(f"SELECT close FROM read_parquet('{tmp_path / 'nvda.parquet'}') "
                     f"ORDER BY time").fetchall()
    assert [g[0] for g in got] == closes


def test_accept_header_and_unknown_format(client, stocked):
    url = f"/api/v1/historical/NVDA?timeframe=1h&start={START}&end={END}"
    assert _get(client, url, Accept=PARQUET).mimetype == PARQUET
    assert _get(client, url, Accept=ARROW).mimetype == ARROW
    assert _get(client, url, Accept="text/html,*/*;q=0.8").mimetype == "application/json"
    empty = _get(client, f"/api/v1/historical/MSFT?timeframe=1m&start={START}&end={END}"
                         f"&format=parquet")  # configured, no minute bars
    t = pq.read_table(io.BytesIO(empty.get_data()))
    assert t.num_rows == 0 and "close" in t.schema.names
    assert client.get("/api/v1/historical/ZZZZ?format=arrow").status_code == 404
    r = client.get(url + "&format=xlsx")
    assert r.status_code == 400
    msg = r.get_json()["error"]["message"]
    assert all(f in msg for f in ("json", "csv", "parquet", "arrow"))


def _codecs(data: bytes) -> set[str]:
    md = pq.ParquetFile(io.BytesIO(data)).metadata
    return {md.row_group(g).column(c).compression for g in range(md.num_row_groups)
            for c in range(md.num_columns)}


def test_parquet_answers_are_lz4_unless_the_request_names_a_compression(client, stocked):
    url = f"/api/v1/historical/NVDA?timeframe=1m&start={START}&end={END}&format=parquet"
    default = _get(client, url).get_data()
    assert _codecs(default) == {"LZ4"}
    small = _get(client, url + "&compression=zstd").get_data()
    assert _codecs(small) == {"ZSTD"} and len(small) < len(default)
    assert pq.read_table(io.BytesIO(small)).equals(pq.read_table(io.BytesIO(default)))
    bulk = f"/api/v1/bars?symbols=AAPL,NVDA&timeframe=1h&start={START}&end={END}"
    assert _codecs(_get(client, bulk + "&compression=zstd", **_auth(EXPORT_KEY))
                   .get_data()) == {"ZSTD"}
    assert _codecs(_get(client, bulk, **_auth(EXPORT_KEY)).get_data()) == {"LZ4"}
    for u, h in ((url, {}), (bulk, _auth(EXPORT_KEY)), (url.replace("parquet", "json"), {})):
        r = client.get(u + "&compression=brotli", headers=h)
        err = r.get_json()["error"]
        assert r.status_code == 400 and err["code"] == "bad_compression", u
        assert all(c in err["message"] for c in ("lz4", "zstd", "snappy", "none"))


# --------------------------------------------------------------------------- bulk

def _auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_bulk_needs_the_export_scope(client, stocked):
    url = f"/api/v1/bars?symbols=AAPL,NVDA&timeframe=1h&start={START}&end={END}"
    assert client.get(url).status_code == 401
    r = client.get(url, headers=_auth(READ_KEY))
    assert r.status_code == 403, r.get_json()
    assert r.get_json()["error"]["message"].startswith("the API key 'reader' has no export scope")
    assert client.get(url, headers=_auth(EXPORT_KEY)).status_code == 200


@pytest.mark.parametrize("fmt", ["parquet", "arrow", "csv"])
def test_bulk_is_sorted_by_symbol_then_time_and_equals_json(client, stocked, fmt,
                                                            monkeypatch):
    from appliance.web import columnar
    monkeypatch.setattr(columnar, "ROW_GROUP", 5000)  # several row groups from a small store
    url = (f"/api/v1/bars?symbols=NVDA,AAPL&timeframe=1m&start={START}&end={END}"
           f"&format={fmt}")
    r = client.get(url, headers=_auth(EXPORT_KEY), buffered=False)
    assert r.status_code == 200 and r.is_streamed
    pieces = [p for p in r.response if p]
    assert len(pieces) > 1  # sent as read, not at the end
    data = b"".join(pieces)
    if fmt == "parquet":
        t = pq.read_table(io.BytesIO(data))
        assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups > 1
    elif fmt == "arrow":
        t = ipc.open_stream(data).read_all()
    else:
        df = pl.read_csv(io.BytesIO(data), try_parse_dates=True)
        assert df["symbol"].to_list() == sorted(df["symbol"].to_list())
        t = df.to_arrow()
    syms = t.column("symbol").to_pylist()
    assert syms == sorted(syms) and set(syms) == {"AAPL", "NVDA"}
    for sym in ("AAPL", "NVDA"):
        rows = _json_bars(client, f"/api/v1/historical/{sym}?timeframe=1m&start={START}"
                                  f"&end={END}")
        mine = t.filter(pa.compute.equal(t.column("symbol").cast(pa.string()), sym))
        if fmt == "csv":  # CSV: text in, compare the instants and the prices
            got = mine.to_pylist()
            assert len(got) == len(rows)
            for j, a in zip(rows, got, strict=False):
                assert a["time"] == dt.datetime.fromisoformat(j["time"])
                assert [a[c] for c in PRICES if j[c] is not None] == \
                    [j[c] for c in PRICES if j[c] is not None]
        else:
            _same(rows, mine, "1m")


def test_a_key_with_export_rows_per_second_is_paced(client, stocked):
    url = f"/api/v1/bars?symbols=AAPL,NVDA&timeframe=1m&start={START}&end={END}&format=arrow"
    t = time.monotonic()
    r = client.get(url, headers=_auth(SLOW_KEY))
    table = ipc.open_stream(r.get_data()).read_all()
    elapsed = time.monotonic() - t
    batches = ipc.open_stream(r.get_data())
    sizes = [b.num_rows for b in batches]
    assert sum(sizes) == table.num_rows > SLOW_RATE
    # every batch but the last waits for the bars sent before it to be due
    assert elapsed >= (table.num_rows - sizes[-1]) / SLOW_RATE


def _max_rows(rt, n: int) -> None:
    """server.export.max_rows set to ``n`` in the file and reloaded."""
    from appliance.jobs.reload import reload_config
    data = yaml.safe_load(rt.config.path.read_text())
    data["server"]["export"] = {"max_rows": n}
    rt.config.path.write_text(yaml.safe_dump(data))
    assert reload_config(rt, source="cli")["ok"]


def test_bulk_over_max_rows_is_413_saying_how_to_page(client, stocked):
    r = client.get(f"/api/v1/bars?universe=stored&timeframe=1m&start=2024-01-01&end={END}",
                   headers=_auth(EXPORT_KEY))
    assert r.status_code == 200
    assert {"AAPL", "NVDA"} == set(pq.read_table(io.BytesIO(r.get_data()))
                                   .column("symbol").to_pylist())
    _max_rows(stocked, 1000)
    r = client.get(f"/api/v1/bars?symbols=NVDA&timeframe=1m&start={START}&end={END}",
                   headers=_auth(EXPORT_KEY))
    assert r.status_code == 413
    err = r.get_json()["error"]
    assert err["max_rows"] == 1000 and err["rows"] > 1000
    assert "server.export.max_rows (1000)" in err["message"] and "shorter" in err["message"]
    # the answer is the API's Error as /api/v1/openapi.json describes it
    import jsonschema
    jsonschema.validate(r.get_json(), client.get("/api/v1/openapi.json").get_json()
                        ["components"]["schemas"]["Error"])
    # the first part of the request that fits, and how many bars it holds
    fits = err["fits"]
    end, held = fits["end"], fits["rows"]
    assert fits["start"] == START and 0 < held <= 1000, err
    assert (f"ask for fewer symbols or a shorter start..end (start {START} to end {end} holds "
            f"{held} of them, then from the day after)") in err["message"], err
    r = client.get(f"/api/v1/bars?symbols=NVDA&timeframe=1m&start={START}&end={end}",
                   headers=_auth(EXPORT_KEY))
    assert r.status_code == 200, r.get_json()
    assert pq.read_table(io.BytesIO(r.get_data())).num_rows == held
    nxt = (dt.date.fromisoformat(end) + dt.timedelta(days=1)).isoformat()
    r = client.get(f"/api/v1/bars?symbols=NVDA&timeframe=1m&start={nxt}&end={END}",
                   headers=_auth(EXPORT_KEY))
    rest = (r.get_json()["error"]["rows"] if r.status_code == 413  # cut again, as said
            else pq.read_table(io.BytesIO(r.get_data())).num_rows)
    assert held + rest == err["rows"]
    # a day alone over the limit: fewer symbols is the only way
    _max_rows(stocked, 10)
    r = client.get(f"/api/v1/bars?symbols=NVDA&timeframe=1m&start={START}&end={END}",
                   headers=_auth(EXPORT_KEY))
    assert r.status_code == 413 and r.get_json()["error"]["fits"] is None
    assert ("a single day of it is over the limit: ask for fewer symbols"
            in r.get_json()["error"]["message"])
    r = client.get(f"/api/v1/bars?symbols=NVDA,AAPL&timeframe=1d&start={START}&end={END}",
                   headers=_auth(EXPORT_KEY))
    assert r.status_code == 413 and r.get_json()["error"]["rows"] > 10
    assert 8 <= r.get_json()["error"]["fits"]["rows"] <= 10, r.get_json()


def test_bad_bulk_requests_say_what_is_wrong(client, stocked):
    h = _auth(EXPORT_KEY)
    for q, code in [("timeframe=1m", "bad_symbols"), ("symbols=AAPL&universe=stored",
                                                      "bad_symbols"),
                    ("symbols=aapl", "bad_symbol"), ("symbols=AAPL&format=json", "bad_format"),
                    ("universe=everything", "bad_universe"),
                    ("symbols=AAPL&start=2024-02-01&end=2024-01-01", "bad_range")]:
        r = client.get(f"/api/v1/bars?{q}", headers=h)
        assert r.status_code == 400 and r.get_json()["error"]["code"] == code, q
    # the default start a year before an end in year 1 is the first day there is
    assert client.get("/api/v1/bars?symbols=AAPL&end=0001-02-01", headers=h).status_code == 200


def _busy(runtime) -> list:
    with runtime.conn() as conn:
        return conn.execute("""SELECT query FROM pg_stat_activity
                               WHERE state = 'active' AND pid <> pg_backend_pid()
                                 AND datname = current_database()
                                 AND query LIKE '%%minute_bars%%'""").fetchall()


def _all_connections_free(pool, timeout: float) -> bool:
    """Whether every connection of the pool can be taken at once."""
    import psycopg_pool
    held = []
    try:
        for _ in range(pool.max_size):
            held.append(pool.getconn(timeout=timeout))
        return True
    except psycopg_pool.PoolTimeout:
        return False
    finally:
        for c in held:
            pool.putconn(c)


def test_a_client_that_goes_away_frees_its_connection_and_query(client, stocked):
    pool = stocked.pool
    r = client.get(f"/api/v1/bars?symbols=AAPL,NVDA&timeframe=1m&start={START}&end={END}"
                   f"&format=arrow", headers=_auth(EXPORT_KEY), buffered=False)
    it = iter(r.response)
    assert next(it)  # the schema is sent: the answer holds a connection
    assert not _all_connections_free(pool, 0.5)
    r.close()  # the client goes away
    assert _all_connections_free(pool, 10)
    wait_until(lambda: not _busy(stocked), 10, "the abandoned query to end", 0.05)


# --------------------------------------------------------------------------- console

@pytest.mark.parametrize("query", ["", "?timeframe=15m&adjusted=1"])
def test_the_symbol_page_downloads_csv_and_parquet_of_its_range(client, stocked, query):
    import html
    import re
    page = _get(client, f"/symbols/NVDA{query}").get_data(as_text=True)
    links = {m.group(1): html.unescape(m.group(2)) for m in re.finditer(
        r'id="download-(csv|parquet)"[^>]*?href="([^"]+)"', page, re.S)}
    assert set(links) == {"csv", "parquet"}
    for fmt, url in links.items():
        assert f"format={fmt}" in url and "start=" in url and "end=" in url
    tf = "15m" if query else "1d"
    assert f"timeframe={tf}" in links["csv"]
    assert ("adjusted=true" if query else "adjusted=false") in links["csv"]
    assert "include_invalid=true" in links["csv"]  # the range shown: invalid bars flagged
    assert links["csv"].startswith("/symbols/NVDA/download?")
    want = _json_bars(client, links["csv"].replace("/symbols/NVDA/download",
                                                   "/api/v1/historical/NVDA")
                      .replace("format=csv", "format=json"))
    assert want
    r = _get(client, links["parquet"])
    assert r.headers["Content-Disposition"].startswith(f'attachment; filename="NVDA_{tf}_')
    t = pq.read_table(io.BytesIO(r.get_data()))
    assert set(t.column("symbol").to_pylist()) == {"NVDA"}
    _same(want, t, tf)
    csv = _get(client, links["csv"]).get_data(as_text=True).splitlines()
    assert len(csv) == len(want) + 1


def test_a_download_holds_the_whole_range_not_the_apis_first_page(client, stocked,
                                                                   monkeypatch):
    from appliance.web import bars
    monkeypatch.setattr(bars, "PAGE_MAX", 1000)  # the API's page: 1,000 bars
    q = f"timeframe=1m&start={START}&end={END}&adjusted=true"
    first = _get(client, f"/api/v1/historical/NVDA?{q}&format=parquet")
    assert pq.read_table(io.BytesIO(first.get_data())).num_rows == 1000 and _next_of(first)
    want = _json_bars(client, f"/api/v1/historical/NVDA?{q}")
    assert len(want) > 2000  # several pages
    for fmt in ("parquet", "csv"):
        r = _get(client, f"/symbols/NVDA/download?{q}&format={fmt}")
        assert "Link" not in r.headers
        if fmt == "parquet":
            _same(want, pq.read_table(io.BytesIO(r.get_data())), "1m")
        else:
            assert len(r.get_data(as_text=True).splitlines()) == len(want) + 1
    assert client.get(f"/symbols/ZZZZ/download?{q}&format=csv").status_code == 404
    r = client.get(f"/symbols/NVDA/download?{q}&format=xlsx")
    assert r.status_code == 400 and "xlsx" in r.get_json()["error"]["message"]
    # a range over server.export.max_rows: 413 saying the limit, nothing streamed
    _max_rows(stocked, 1000)
    r = client.get(f"/symbols/NVDA/download?{q}&format=parquet")
    assert r.status_code == 413
    msg = r.get_json()["error"]["message"]
    assert "server.export.max_rows (1000)" in msg and "zoom in or a shorter start..end" in msg
    assert "fewer symbols" not in msg
