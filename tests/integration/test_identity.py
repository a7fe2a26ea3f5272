"""Identity from the loopback Polygon fake, on real PostgreSQL and Redis: a
renamed company's history under its new ticker (FB -> META), a ticker reused
by a second company never mixed with the first, a delisted ticker kept but no
longer fetched, and the universe as of three dates."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from appliance import store
from appliance.core.candles import Bars
from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from tests.fakes.polygon_fake import PolygonFake, dividend_record, make_truth

START, END = dt.date(2022, 1, 3), dt.date(2022, 12, 30)
RENAME = dt.date(2022, 6, 9)
A_DELISTED, B_LISTED = dt.date(2022, 5, 2), dt.date(2022, 9, 1)
OLD_DELISTED = dt.date(2022, 8, 1)
H = {"Authorization": "Bearer test-admin-token-0123456789"}


def _cut(b: Bars, lo: dt.date, hi: dt.date, symbol: str) -> Bars:
    k = (b.session >= np.datetime64(lo, "D")) & (b.session <= np.datetime64(hi, "D"))
    out = b.take(np.nonzero(k)[0])
    out.symbol = symbol
    return out


@pytest.fixture
def world():
    t = make_truth(["META", "ZZA", "ZZB", "OLD"], START, END, seed=5,
                   split_symbol="OLD", split_date=dt.date(2022, 3, 1), split_to=1.0)
    day = dt.timedelta(days=1)
    bars = {"FB": _cut(t.bars["META"], START, RENAME - day, "FB"),
            "META": _cut(t.bars["META"], RENAME, END, "META"),
            # ZZ: company A until its delisting, then company B from its listing
            "ZZ": _cut(t.bars["ZZA"], START, A_DELISTED - day, "ZZ").concat(
                _cut(t.bars["ZZB"], B_LISTED, END, "ZZ")),
            "OLD": _cut(t.bars["OLD"], START, OLD_DELISTED - day, "OLD")}
    identities = {
        "META": {"name": "Meta Platforms, Inc.", "composite_figi": "BBG000MM2P62",
                 "cik": "0001326801", "events": [(dt.date(2012, 5, 18), "FB"), (RENAME, "META")]},
        "ZZ": {"name": "Zed B", "composite_figi": "BBG0ZZB00000", "events": [(B_LISTED, "ZZ")]},
        "OLD": {"name": "Old Co", "composite_figi": "BBG0OLD00000",
                "events": [(dt.date(2010, 1, 4), "OLD")]}}
    inactive = [{"ticker": "ZZ", "name": "Zed A", "composite_figi": "BBG0ZZA00000",
                 "delisted_utc": "2022-05-02T04:00:00Z"},
                {"ticker": "OLD", "name": "Old Co", "composite_figi": "BBG0OLD00000",
                 "delisted_utc": "2022-08-01T04:00:00Z"}]
    return t, bars, identities, inactive


@pytest.fixture
def served(world, config_factory):
    from appliance.runtime.runtime import Runtime
    from appliance.web import create_app
    t, bars, identities, inactive = world
    divs = [dividend_record("FB", "2022-03-15", 0.5),  # the renamed company's, as FB
            dividend_record("ZZ", "2022-03-15", 0.7),  # company A's: not ZZ's security's
            dividend_record("ZZ", "2022-10-14", 0.3)]
    with PolygonFake(bars, [], identities=identities, inactive=inactive,
                     dividends=divs) as fake:
        path = config_factory(
            provider={"name": "polygon",
                      "polygon": {"api_key": "test-key", "base_url": fake.base_url,
                                  "requests_per_minute": 6000, "timeout_seconds": 2,
                                  "max_retries": 3, "retry_backoff_seconds": 0.01}},
            symbols=["META", "ZZ", "OLD"],
            history={"start": START.isoformat(), "lookback_sessions": 5})
        rt = Runtime.from_path(path)
        rt.open()
        try:
            res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                               params={"end": END.isoformat()})
            assert res["status"] == "ok", res
            yield rt, fake, create_app(runtime=rt).test_client()
        finally:
            rt.close()


def _data(client, symbol: str, **q):
    args = "&".join([f"start={START}", f"end={END}", *(f"{k}={v}" for k, v in q.items())])
    r = client.get(f"/api/v1/historical/{symbol}?{args}", headers=H)
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()


def test_meta_spans_both_tickers_and_names_the_one_in_force(served, world):
    rt, fake, client = served
    t = world[0]
    d = _data(client, "META")
    assert [x["close"] for x in d["data"]] == t.bars["META"].close.tolist()
    assert d["tickers"] == [{"ticker": "FB", "from": "2012-05-18", "to": RENAME.isoformat()},
                            {"ticker": "META", "from": RENAME.isoformat(), "to": None}]
    asked = {p for p, *_ in fake.log if p.startswith("/v2/aggs/ticker/")}
    assert f"/v2/aggs/ticker/FB/range/1/day/{START}/2022-06-08" in asked
    assert f"/v2/aggs/ticker/META/range/1/day/{RENAME}/{END}" in asked
    with rt.conn() as conn:
        sec = store.securities.security(conn, "META")
    assert sec["composite_figi"] == "BBG000MM2P62" and sec["delisted_on"] is None
    from tests.integration.test_api import validate_response
    r = client.get(f"/api/v1/historical/META?start={START}&end={END}", headers=H)
    validate_response("/api/v1/historical/META", "GET", 200, r.content_type, r.get_data())
    wk = client.get(f"/api/v1/historical/META?start={START}&end={END}&timeframe=1w",
                    headers=H).get_json()
    assert wk["tickers"] == d["tickers"]
    # a range long enough to be streamed names them too
    long = client.get(f"/api/v1/historical/META?start=2015-01-01&end={END}",
                      headers=H).get_json()
    assert long["tickers"] == d["tickers"] and long["count"] == len(d["data"])
    # another symbol's answer has no tickers field
    assert "tickers" not in _data(client, "OLD")


def test_a_reused_ticker_never_mixes_two_companies(served, world):
    rt, fake, client = served
    t = world[0]
    d = _data(client, "ZZ")
    assert d["data"][0]["time"] == B_LISTED.isoformat()
    assert [x["close"] for x in d["data"]] == _cut(t.bars["ZZB"], B_LISTED, END, "ZZ").close.tolist()
    with rt.conn() as conn:
        sec = store.securities.security(conn, "ZZ")
    # company A's delisting (another FIGI) is not this security's
    assert sec["composite_figi"] == "BBG0ZZB00000" and sec["delisted_on"] is None


def test_a_delisted_ticker_keeps_its_history_and_is_no_longer_fetched(served, world):
    rt, fake, client = served
    t = world[0]
    d = _data(client, "OLD")
    assert [x["close"] for x in d["data"]] == t.bars["OLD"].close[
        t.bars["OLD"].session < np.datetime64(OLD_DELISTED, "D")].tolist()
    with rt.conn() as conn:
        assert store.securities.delisted(conn) == {"OLD": OLD_DELISTED}
        st = store.symbol_row(conn, "OLD")
        missing = conn.execute("SELECT count(*) FROM missing_sessions WHERE symbol = 'OLD'"
                               ).fetchone()[0]
        summary = store.summary(conn)
    assert st["last_session"] == dt.date(2022, 7, 29) and st["completeness"] == 1.0
    assert missing == 0
    assert summary["latest_data"] == END.isoformat()
    before = len(fake.log)
    res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                       params={"end": END.isoformat()})
    assert res["status"] == "ok", res
    assert not [p for p, *_ in fake.log[before:] if "/ticker/OLD/" in p]


def test_a_delisted_symbol_alone_is_never_stale(served):
    rt, _, _ = served
    with rt.conn() as conn:
        conn.execute("DELETE FROM symbol_stats WHERE symbol <> 'OLD'")
        assert store.summary(conn)["latest_data"] is None  # nothing to be behind
        conn.rollback()


def test_the_universe_as_of_three_dates(served):
    _, _, client = served

    from tests.integration.test_api import validate_response

    def members(day):
        r = client.get(f"/api/v1/universe?as_of={day}", headers=H)
        assert r.status_code == 200
        validate_response("/api/v1/universe", "GET", 200, r.content_type, r.get_data())
        return {(m["symbol"], m["ticker"]) for m in r.get_json()["securities"]}
    assert members("2022-03-01") == {("META", "FB"), ("OLD", "OLD")}
    assert members("2022-07-01") == {("META", "META"), ("OLD", "OLD")}
    assert members("2022-10-03") == {("META", "META"), ("ZZ", "ZZ")}
    r = client.get("/api/v1/universe?as_of=2022-13-01", headers=H)
    assert r.status_code == 400
    # the old ticker's own bars, stored before the rename (FB was configured
    # then): the company is META's, which held the ticker FB on those dates;
    # it was listed twice, as ("FB", "FB") too
    rt = served[0]
    res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                       params={"symbols": ["FB"]})
    assert res["status"] in ("ok", "partial"), res
    with rt.conn() as conn:
        assert conn.execute("SELECT count(*) FROM market_data WHERE symbol = 'FB'").fetchone()[0]
    assert members("2022-03-01") == {("META", "FB"), ("OLD", "OLD")}


def test_after_the_latest_stored_session_the_universe_is_that_sessions(runtime, client):
    """A weekend, or a trading day before its bars are fetched (the default
    as_of is today): the symbols known only by their stored bars are the ones
    that traded on the latest stored session, not none; a symbol whose bars
    stopped earlier is not listed."""
    with runtime.conn() as conn:
        for sym, last in (("AAA", "2024-03-08"), ("BBB", "2024-02-01")):
            conn.execute("""INSERT INTO symbol_stats (symbol, first_session, last_session,
                            records, validated, quality_score, completeness)
                            VALUES (%s, '2024-01-02', %s, 40, 40, 1.0, 1.0)""", (sym, last))

    def members(day):
        r = client.get(f"/api/v1/universe?as_of={day}", headers=H)
        assert r.status_code == 200, r.get_data(as_text=True)
        return [m["symbol"] for m in r.get_json()["securities"]]
    assert members("2024-01-31") == ["AAA", "BBB"]
    assert members("2024-02-15") == ["AAA"]
    assert members("2024-03-08") == ["AAA"]            # Friday, the latest stored session
    assert members("2024-03-09") == ["AAA"]            # Saturday
    assert members("2024-03-11") == ["AAA"]            # Monday, its bars not fetched yet
    assert members("2023-12-29") == []                 # before any bar


def test_conflicting_ticker_events_and_a_shared_figi_are_said_and_change_nothing(served):
    rt, _, _ = served
    with rt.conn() as conn:
        bad = {"composite_figi": "BBG0X", "events": [(dt.date(2020, 1, 2), "X1"),
                                                     (dt.date(2020, 1, 2), "X2")]}
        assert "two tickers take effect on 2020-01-02" in \
            store.securities.save_identity(conn, "X2", bad, "polygon")
        shared = {"composite_figi": "BBG000MM2P62", "events": [(dt.date(2020, 1, 2), "FBX")]}
        assert "already the security of META" in \
            store.securities.save_identity(conn, "FBX", shared, "polygon")
        assert store.securities.security(conn, "FBX") is None
        assert len(store.securities.security(conn, "META")["tickers"]) == 2


def test_the_symbol_page_shows_the_ticker_history_and_the_delisting(served):
    _, _, client = served
    html = client.get("/symbols/META", headers=H).get_data(as_text=True)
    assert "BBG000MM2P62" in html
    assert "<code>FB</code> from 2012-05-18 to 2022-06-09 · <code>META</code> from 2022-06-09" \
        in html
    old = client.get("/symbols/OLD", headers=H).get_data(as_text=True)
    assert "delisted 2022-08-01" in old


def test_the_bulk_endpoint_takes_the_universe_as_of_a_date(served):
    import io

    import pyarrow.parquet as pq
    _, _, client = served
    r = client.get(f"/api/v1/bars?universe=stored&as_of=2022-03-01&start={START}&end={END}",
                   headers=H)
    assert r.status_code == 200, r.get_data(as_text=True)[:300]
    t = pq.read_table(io.BytesIO(r.get_data()))
    assert sorted(set(t.column("symbol").to_pylist())) == ["META", "OLD"]


def test_a_reused_tickers_minutes_start_with_its_own_company(config_factory):
    """Minute bars too: the vendor answers ticker ZZ's minutes of both
    companies; only those from the second company's listing are stored."""
    from appliance.runtime.runtime import Runtime
    from tests.fakes.minute_truth import make_minute_truth
    lo, listed, hi = dt.date(2024, 3, 4), dt.date(2024, 3, 11), dt.date(2024, 3, 15)
    mt = make_minute_truth(["ZZ"], lo, hi, seed=4, session="regular", missing=0)
    daily = make_truth(["ZZ"], lo, hi, seed=4, split_date=hi, split_to=1.0)
    ident = {"ZZ": {"name": "Zed B", "composite_figi": "BBG0ZZB00000",
                    "events": [(listed, "ZZ")]}}
    with PolygonFake(daily.bars, [], minutes=mt.minutes, identities=ident) as fake:
        rt = Runtime.from_path(config_factory(
            provider={"name": "polygon",
                      "polygon": {"api_key": "test-key", "base_url": fake.base_url,
                                  "requests_per_minute": 6000, "timeout_seconds": 2,
                                  "max_retries": 3, "retry_backoff_seconds": 0.01,
                                  "grouped_daily": False}},
            symbols=[{"symbol": "ZZ", "timeframes": ["1m", "1d"]}], session="regular",
            history={"start": {"1d": lo.isoformat(), "1m": lo.isoformat()},
                     "lookback_sessions": 0}))
        rt.open()
        try:
            res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                               params={"end": hi.isoformat()})
            assert res["status"] == "ok", res
            with rt.conn() as conn:
                first_1m = conn.execute("SELECT min(session) FROM minute_bars WHERE symbol = 'ZZ'"
                                        ).fetchone()[0]
                first_1d = store.symbol_row(conn, "ZZ")["first_session"]
        finally:
            rt.close()
    assert first_1m == listed and first_1d == listed


def test_corporate_actions_follow_the_security_not_the_ticker(served):
    rt, _, _ = served
    with rt.conn() as conn:
        meta = [(d["ex_dividend_date"].isoformat(), d["cash_amount"])
                for d in store.dividends.dividends_for(conn, "META", tz="America/New_York")]
        zz = [(d["ex_dividend_date"].isoformat(), d["cash_amount"])
              for d in store.dividends.dividends_for(conn, "ZZ", tz="America/New_York")]
    assert meta == [("2022-03-15", 0.5)]  # asked under FB, stored under META
    assert zz == [("2022-10-14", 0.3)]  # company A's dividend never enters
