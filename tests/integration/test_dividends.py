"""Dividends end to end on real PostgreSQL and Redis, from the loopback
Polygon fake: fetched with the backfill, stored with every vendor field,
revisions recorded, the special dividend classified ``dividend``, and
``adjust=total`` equal to a hand computation in every format and timeframe."""
from __future__ import annotations

import datetime as dt
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from tests.fakes.polygon_fake import PolygonFake, dividend_record, make_truth
from tests.minute_store import store_minutes

START, END = dt.date(2024, 1, 2), dt.date(2024, 12, 31)
SYMS = ["KO", "ZZ", "BAD"]
SPLIT = dt.date(2024, 7, 1)  # KO 2-for-1
SPECIAL = dt.date(2024, 9, 16)  # KO's special dividend, 30% of its price
DROP = dt.date(2024, 9, 16)  # ZZ: the same drop with no dividend


def _shift_down(b, day: dt.date, cash: float) -> None:
    """Raw prices from ``day`` on lowered by ``cash`` (the ex-dividend drop)."""
    k = b.session >= np.datetime64(day, "D")
    for col in (b.open, b.high, b.low, b.close, b.vwap):
        col[k] = np.round(col[k] - cash, 4)


def _close_before(b, day: dt.date) -> float:
    i = int(np.searchsorted(b.session, np.datetime64(day, "D"))) - 1
    return float(b.close[i])


@pytest.fixture(scope="module")
def world():
    """The vendor's bars and dividends. KO: quarterly CD dividends (one ex-date
    on a Saturday: it takes effect on Monday), a 2-for-1 split and a special
    SC dividend of 30% of its price; ZZ: the same 30% drop, no dividend; BAD:
    every bad dividend record plus one good one."""
    truth = make_truth(SYMS, START, END, seed=28, split_symbol="KO", split_date=SPLIT,
                       split_to=2.0)
    ko, zz = truth.bars["KO"], truth.bars["ZZ"]
    special = round(0.3 * _close_before(ko, SPECIAL), 2)
    _shift_down(ko, SPECIAL, special)
    _shift_down(zz, DROP, round(0.3 * _close_before(zz, DROP), 2))
    recs = [dividend_record("KO", "2024-03-14", 0.485),
            dividend_record("KO", "2024-06-15", 0.485),  # a Saturday
            dividend_record("KO", "2024-09-13", 0.2425),  # after the split
            dividend_record("KO", SPECIAL, special, "SC", frequency=0),
            dividend_record("KO", "2024-11-29", 0.2425)]
    recs.append(dict(recs[0]))  # an exact repeat: merged
    bad = [dividend_record("BAD", "2024-02-15", None),  # no cash amount
           dividend_record("BAD", "2024-03-15", 0),  # zero cash
           dividend_record("BAD", "2024-05-15", 0.5),  # two different amounts
           dividend_record("BAD", "2024-05-15", 0.55),
           dividend_record("BAD", "2023-06-15", 0.4),  # before the first bar
           dividend_record("BAD", "2024-08-15", 0.3)]  # the good one
    return truth, recs + bad, special


@pytest.fixture(scope="module")
def stored(world, tmp_path_factory, pg_server_url, template_db, redis_server_url):
    """One backfill of SYMS from the fake (dividends paged two at a time), and
    KO's minutes of two weeks around the special dividend; shared by the
    module's tests (which only read, or restore what they change)."""
    import uuid

    import psycopg
    import redis

    from appliance.runtime.runtime import Runtime
    from tests.conftest import _as_url, _replace_db, write_config
    truth, recs, special = world
    name = "appl_t_div_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_server_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = _as_url(_replace_db(pg_server_url, name))
    base = redis_server_url
    if base.startswith("unix://"):
        rurl = base.split("?")[0] + "?db=15"
    else:
        rurl = (base.rstrip("/").rsplit("/", 1)[0] + "/15" if base.count("/") > 2
                else base + "/15")
    redis.Redis.from_url(rurl).flushdb()
    try:
        with PolygonFake(truth.bars, truth.splits, dividends=recs,
                         dividends_page_size=2) as fake:
            path = write_config(
                tmp_path_factory.mktemp("cfg") / "appliance.yaml", url, rurl,
                provider={"name": "polygon",
                          "polygon": {"api_key": "test-key", "base_url": fake.base_url,
                                      "requests_per_minute": 6000, "timeout_seconds": 2,
                                      "max_retries": 3, "retry_backoff_seconds": 0.01}},
                symbols=SYMS, history={"start": START.isoformat(), "lookback_sessions": 5})
            rt = Runtime.from_path(path)
            rt.open()
            try:
                res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                                   params={"end": END.isoformat()})
                assert res["status"] == "ok", res
                store_minutes(rt, "KO", "2024-09-09", "2024-09-20", seed=3)
                yield rt, fake
            finally:
                rt.close()
    finally:
        redis.Redis.from_url(rurl).flushdb()
        with psycopg.connect(pg_server_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def client(stored):
    from appliance.web import create_app
    return create_app(runtime=stored[0]).test_client()


H = {"Authorization": "Bearer test-admin-token-0123456789"}


def _hand_factors(truth, symbol: str, divs: list[tuple[dt.date, float]]) -> np.ndarray:
    """Per bar: the product of the split ratios after it and of
    ``1 - D / close_before_ex`` of every dividend going ex after it."""
    b = truth.bars[symbol]
    f = np.ones(len(b))
    for s in truth.splits:
        if s.symbol == symbol:
            f[b.session < np.datetime64(s.execution_date, "D")] *= s.split_from / s.split_to
    for ex, cash in divs:
        f[b.session < np.datetime64(ex, "D")] *= 1.0 - cash / _close_before(b, ex)
    return f


def _daily(client, symbol, mode_args, **extra) -> dict:
    q = "&".join([f"start={START}", f"end={END}", mode_args,
                  *(f"{k}={v}" for k, v in extra.items())])
    r = client.get(f"/api/v1/historical/{symbol}?{q}", headers=H)
    assert r.status_code == 200, r.get_data(as_text=True)
    return r


def _ko_divs(special):
    return [(dt.date(2024, 3, 14), 0.485), (dt.date(2024, 6, 15), 0.485),
            (dt.date(2024, 9, 13), 0.2425), (SPECIAL, special), (dt.date(2024, 11, 29), 0.2425)]


def test_every_vendor_field_is_stored_and_repeats_merged(stored, world):
    rt, _ = stored
    recs = world[1]
    with rt.conn() as conn:
        rows = conn.execute("""SELECT ex_dividend_date, dividend_type, cash_amount, vendor,
                                      frequency, pay_date, record_date, declaration_date,
                                      currency, vendor_id, problem
                               FROM dividends WHERE symbol = 'KO'
                               ORDER BY ex_dividend_date""").fetchall()
    assert len(rows) == 5  # the exact repeat is kept once
    by_ex = {r["ex_dividend_date"]: r for r in recs if r["ticker"] == "KO"}
    for ex, kind, cash, vendor, freq, pay, rec, decl, cur, vid, problem in rows:
        sent = by_ex[ex.isoformat()]
        assert vendor == sent  # every field, as sent
        assert (kind, cash, freq, cur, vid) == (sent["dividend_type"], sent["cash_amount"],
                                                sent["frequency"], sent["currency"], sent["id"])
        assert (pay.isoformat(), rec.isoformat(), decl.isoformat()) == \
            (sent["pay_date"], sent["record_date"], sent["declaration_date"])
        assert problem is None
    assert [r[1] for r in rows].count("SC") == 1


def test_total_closes_equal_the_hand_computation(client, world):
    truth, _, special = world
    want = truth.bars["KO"].close * _hand_factors(truth, "KO", _ko_divs(special))
    got = np.array([d["close"] for d in _daily(client, "KO", "adjust=total").get_json()["data"]])
    assert len(got) == len(want)
    assert np.allclose(got, want, rtol=1e-9, atol=0)
    # volume is adjusted for splits only
    vol = np.array([d["volume"] for d in _daily(client, "KO", "adjust=total").get_json()["data"]])
    split_only = _hand_factors(truth, "KO", [])
    assert np.allclose(vol, truth.bars["KO"].volume / split_only, rtol=1e-12)


def test_an_ex_date_on_a_saturday_applies_from_the_next_session(client, world):
    truth, _, special = world
    rows = {d["time"]: d for d in _daily(client, "KO", "adjust=total").get_json()["data"]}
    raw = {d["time"]: d for d in _daily(client, "KO", "adjust=none").get_json()["data"]}
    # Friday 2024-06-14 carries the 06-15 dividend's factor, Monday 06-17 does not
    f_fri = rows["2024-06-14"]["close"] / raw["2024-06-14"]["close"]
    f_mon = rows["2024-06-17"]["close"] / raw["2024-06-17"]["close"]
    assert f_fri / f_mon == pytest.approx(1 - 0.485 / raw["2024-06-14"]["close"], rel=1e-12)


def test_adjusted_true_is_adjust_splits_and_the_sql_function_agrees(client, stored, world):
    a = _daily(client, "KO", "adjusted=true").get_json()
    b = _daily(client, "KO", "adjust=splits").get_json()
    assert a["data"] == b["data"] and a["adjusted"] is True and b["adjust"] == "splits"
    assert "adjust" not in a  # an older request's answer keeps its fields
    none = _daily(client, "KO", "adjust=none").get_json()
    assert none["data"] == _daily(client, "KO", "adjusted=false").get_json()["data"]
    truth, _, special = world
    with stored[0].conn() as conn:
        f = conn.execute("SELECT adjustment_factor('KO', '2024-01-10', 'total', "
                         "'America/New_York')").fetchone()[0]
    assert f == pytest.approx(_hand_factors(truth, "KO", _ko_divs(special))[5], rel=1e-12)


def test_adjust_and_adjusted_that_disagree_or_a_bad_mode_are_refused(client):
    r = client.get("/api/v1/historical/KO?adjust=total&adjusted=false", headers=H)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_adjust"
    r = client.get("/api/v1/historical/KO?adjust=dividends", headers=H)
    assert r.status_code == 400 and "none, splits, total" in r.get_json()["error"]["message"]
    r = client.get("/api/v1/bars?symbols=KO&adjust=bogus", headers=H)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_adjust"


def test_the_special_dividend_is_classified_dividend_and_the_same_drop_alone_a_jump(stored):
    rt, _ = stored
    with rt.conn() as conn:
        ko = conn.execute("""SELECT gap_detected, gap_kind FROM market_data WHERE symbol = 'KO'
                             AND ts = '2024-09-16 00:00 America/New_York'""").fetchone()
        zz = conn.execute("""SELECT gap_detected, gap_kind FROM market_data WHERE symbol = 'ZZ'
                             AND ts = '2024-09-16 00:00 America/New_York'""").fetchone()
        jumps = conn.execute("""SELECT count(*) FROM market_data WHERE symbol = 'KO'
                                AND gap_kind = 'jump'""").fetchone()[0]
    assert ko == (True, "dividend")
    assert zz == (True, "jump")
    assert jumps == 0


def test_every_format_and_timeframe_answers_adjust_total(client, world):
    truth, _, special = world
    f = _hand_factors(truth, "KO", _ko_divs(special))
    want = dict(zip(truth.bars["KO"].session.astype(str).tolist(),
                    (truth.bars["KO"].close * f).tolist(), strict=True))
    # CSV
    text = _daily(client, "KO", "adjust=total", format="csv").get_data(as_text=True)
    lines = text.strip().split("\n")[1:]
    assert np.allclose([float(x.split(",")[4]) for x in lines],
                       [want[x.split(",")[0]] for x in lines], rtol=1e-9)
    # Parquet and Arrow
    for fmt in ("parquet", "arrow"):
        body = _daily(client, "KO", "adjust=total", format=fmt).get_data()
        t = (pq.read_table(io.BytesIO(body)) if fmt == "parquet"
             else pa.ipc.open_stream(body).read_all())
        closes = t.column("close").to_pylist()
        days = [str(x)[:10] for x in t.column("time").to_pylist()]
        assert np.allclose(closes, [want[d] for d in days], rtol=1e-9), fmt
        meta = json.loads(t.schema.metadata[b"appliance"])
        assert meta["adjust"] == "total"
    # weekly: the last close of each week
    wk = _daily(client, "KO", "adjust=total", timeframe="1w").get_json()["data"]
    by_week: dict = {}
    for d, c in want.items():
        day = dt.date.fromisoformat(d)
        by_week[(day - dt.timedelta(days=(day.weekday() + 1) % 7)).isoformat()] = c
    assert np.allclose([w["close"] for w in wk], [by_week[w["time"]] for w in wk], rtol=1e-9)
    # minute bars and a rollup: the minute closes times the factor of their session
    for tf in ("1m", "5m", "1h"):
        raw = _daily(client, "KO", "adjust=none", timeframe=tf).get_json()["data"]
        tot = _daily(client, "KO", "adjust=total", timeframe=tf).get_json()["data"]
        assert raw and len(raw) == len(tot)
        ratio = np.array([t["close"] / r["close"] for r, t in zip(raw, tot, strict=True)])
        want_f = np.array([f[int(np.searchsorted(truth.bars["KO"].session,
                                                 np.datetime64(r["session"], "D")))]
                           for r in raw])
        assert np.allclose(ratio, want_f, rtol=1e-9), tf
    # the bulk endpoint
    r = client.get(f"/api/v1/bars?symbols=KO,ZZ&start={START}&end={END}&adjust=total"
                   f"&format=parquet", headers=H)
    assert r.status_code == 200, r.get_data(as_text=True)[:300]
    t = pq.read_table(io.BytesIO(r.get_data())).to_pandas()
    ko = t[t["symbol"] == "KO"]
    assert np.allclose(ko["close"].to_numpy(),
                       [want[str(x)[:10]] for x in ko["time"]], rtol=1e-9)


def test_bad_dividends_raise_events_and_never_enter_the_series(stored, client, world):
    rt, _ = stored
    truth = world[0]
    with rt.conn() as conn:
        problems = dict(conn.execute("""SELECT ex_dividend_date::text, problem FROM dividends
                                        WHERE symbol = 'BAD' AND problem IS NOT NULL""").fetchall())
        events = [r[0] for r in conn.execute("""SELECT message FROM events
                                                WHERE kind = 'dividend'""").fetchall()]
    assert problems["2024-02-15"] == "no cash amount"
    assert problems["2024-03-15"] == "cash amount 0.0 is not positive"
    assert "2 different cash amounts" in problems["2024-05-15"]
    assert any("BAD: dividend CD ex 2024-02-15 not applied: no cash amount" in m for m in events)
    assert any("2024-03-15 not applied: cash amount 0.0" in m for m in events)
    assert any("2024-05-15 not applied: the vendor sent 2 different" in m for m in events)
    assert any("BAD: 1 dividend(s) with ex-dates 2023-06-15..2023-06-15 not applied: before "
               "the first stored bar" in m for m in events)
    # only the good dividend moves the series
    want = truth.bars["BAD"].close * _hand_factors(truth, "BAD", [(dt.date(2024, 8, 15), 0.3)])
    got = [d["close"] for d in _daily(client, "BAD", "adjust=total").get_json()["data"]]
    assert np.allclose(got, want, rtol=1e-9)


def test_a_revised_dividend_is_recorded_and_the_series_follows(stored, client, world):
    rt, fake = stored
    truth, recs, special = world
    revised = [dict(r, cash_amount=0.5) if (r["ticker"], r["ex_dividend_date"]) ==
               ("KO", "2024-11-29") else r for r in recs]
    fake.set_dividends(revised)
    try:
        res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                           params={"symbols": ["KO"], "start": "2024-11-25",
                                   "end": END.isoformat()})
        assert res["status"] == "ok", res
        with rt.conn() as conn:
            rev = conn.execute("""SELECT old->>'cash_amount', new->>'cash_amount'
                                  FROM dividend_revisions WHERE symbol = 'KO'""").fetchall()
            ev = conn.execute("""SELECT count(*) FROM events WHERE kind = 'dividend'
                                 AND message LIKE 'KO: 1 dividend(s) revised%%'""").fetchone()[0]
        assert rev == [("0.2425", "0.5")] and ev == 1
        divs = _ko_divs(special)[:-1] + [(dt.date(2024, 11, 29), 0.5)]
        want = truth.bars["KO"].close * _hand_factors(truth, "KO", divs)
        got = [d["close"] for d in _daily(client, "KO", "adjust=total").get_json()["data"]]
        assert np.allclose(got, want, rtol=1e-9)
    finally:
        fake.set_dividends(recs)
        runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                     params={"symbols": ["KO"], "start": "2024-11-25", "end": END.isoformat()})


def test_the_dividends_endpoint_lists_each_with_its_factor_as_documented(client, world):
    from tests.integration.test_api import validate_response
    truth, _, special = world
    r = client.get("/api/v1/dividends/KO", headers=H)
    assert r.status_code == 200
    body = validate_response("/api/v1/dividends/KO", "GET", 200, r.content_type, r.get_data())
    assert body["count"] == 5
    sc = [d for d in body["dividends"] if d["dividend_type"] == "SC"][0]
    assert sc["applied"] and sc["cash_amount"] == special
    assert sc["factor"] == pytest.approx(1 - special / _close_before(truth.bars["KO"], SPECIAL),
                                         rel=1e-12)
    bad = client.get("/api/v1/dividends/BAD?start=2023-01-01&end=2024-03-31", headers=H)
    rows = {d["ex_dividend_date"]: d for d in bad.get_json()["dividends"]}
    assert rows["2023-06-15"]["problem"] == "no valid daily bar before the ex-date"
    assert rows["2024-02-15"] == {**rows["2024-02-15"], "applied": False, "factor": None,
                                  "problem": "no cash amount", "cash_amount": None}
    assert client.get("/api/v1/dividends/NOPE", headers=H).status_code == 404
    r = client.get("/api/v1/gaps?symbol=KO&kind=dividend", headers=H)
    assert [g["session"] for g in r.get_json()["gaps"]] == [SPECIAL.isoformat()]


def test_a_routine_run_learns_new_dividends_from_one_market_wide_request(stored, client,
                                                                         world):
    rt, fake = stored
    truth, recs, special = world
    new = dividend_record("KO", "2024-12-20", 0.25)
    fake.set_dividends(recs + [new, dividend_record("OTHER", "2024-12-20", 9.0)])
    before = len(fake.log)
    try:
        res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                           params={"end": END.isoformat()})
        assert res["status"] == "ok", res
        asked = [(p, q) for p, q, _, _ in fake.log[before:] if p == "/v3/reference/dividends"]
        assert len(asked) == 1 and "ticker" not in asked[0][1]
        assert asked[0][1]["ex_dividend_date.lte"] == END.isoformat()
        divs = _ko_divs(special) + [(dt.date(2024, 12, 20), 0.25)]
        want = truth.bars["KO"].close * _hand_factors(truth, "KO", divs)
        got = [d["close"] for d in _daily(client, "KO", "adjust=total").get_json()["data"]]
        assert np.allclose(got, want, rtol=1e-9)
        with rt.conn() as conn:  # a ticker the appliance does not keep is not stored
            assert conn.execute("SELECT count(*) FROM dividends WHERE symbol = 'OTHER'"
                                ).fetchone()[0] == 0
    finally:
        fake.set_dividends(recs)
        with rt.conn() as conn:
            conn.execute("DELETE FROM dividends WHERE symbol = 'KO' AND ex_dividend_date = "
                         "'2024-12-20'")


def test_the_symbol_page_lists_dividends_and_switches_to_total_return(client, world):
    truth, _, special = world
    html = client.get("/symbols/KO?adjust=total", headers=H).get_data(as_text=True)
    assert 'id="dividends-table"' in html and "special" in html and "0.4850" in html
    assert 'data-adjusted="total" aria-pressed="true"' in html
    assert 'data-adjusted="total"' in html.split('id="chart"')[1].split(">")[0]
    assert 'href="/symbols/KO?timeframe=1h&amp;adjust=total"' in html  # the mode is kept
    bad = client.get("/symbols/BAD", headers=H).get_data(as_text=True)
    assert "not applied: no cash amount" in bad
    d = client.get("/console/api/chart/KO?adjust=total", headers=H).get_json()
    assert d["adjust"] == "total" and d["adjusted"] is True
    f = _hand_factors(truth, "KO", _ko_divs(special))
    want = dict(zip(truth.bars["KO"].session.astype(str).tolist(),
                    (truth.bars["KO"].close * f).tolist(), strict=True))
    closes = {c["time"]: c["close"] for c in d["candles"] if "close" in c}
    assert all(abs(closes[t] / want[t] - 1) < 1e-9 for t in closes)
    ex = [m for m in d["markers"] if m["role"] == "exdiv"]
    # the Saturday ex-date is marked on the Monday after it
    assert {m["time"] for m in ex} >= {"2024-03-14", "2024-06-17", SPECIAL.isoformat()}
    assert [m["role"] for m in d["markers"] if m["time"] == SPECIAL.isoformat()].count(
        "dividend") == 1
    r = client.get("/console/api/chart/KO?adjust=dividends", headers=H)
    assert r.status_code == 400


def test_total_closes_agree_with_yahoos_adjclose_within_float32(client, world):
    """The cross-check: Yahoo's ``adjclose`` (the fake computes it from the
    same raw bars, splits and dividends, at float32 as Yahoo sends it)."""
    from tests.fakes.yahoo_fake import YahooFake
    from tests.unit.test_yahoo import yahoo
    truth, recs, special = world
    divs = [("KO", ex, cash) for ex, cash in _ko_divs(special)]
    with YahooFake({"KO": truth.bars["KO"]}, truth.splits, dividends=divs) as fake:
        sess, adjclose = yahoo(fake).adjusted_close("KO", START, END)
    ours = {d["time"]: d["close"] for d in _daily(client, "KO", "adjust=total").get_json()["data"]}
    got = np.array([ours[str(s)] for s in sess.astype("datetime64[D]")])
    assert len(got) == len(truth.bars["KO"])
    assert np.allclose(got, adjclose, rtol=2e-7, atol=0)  # float32: 24-bit mantissa


def test_the_demo_dividends_go_with_the_demo_bars(runtime):
    """A real vendor replacing the demo's history replaces its dividends too:
    the demo's never enter a real total-return series."""
    from appliance import store
    from appliance.store import demo as dstore
    res = runs.execute(runtime, "backfill", runs.manual_slot(), run_backfill,
                       params={"symbols": ["AAPL"], "end": "2024-12-31"})
    assert res["status"] == "ok", res
    with runtime.conn() as conn:
        demo = store.dividends.dividends_for(conn, "AAPL", tz="America/New_York")
        assert demo and {d["source"] for d in demo} == {"demo"}
        assert all(d["factor"] is not None for d in demo if d["ex_dividend_date"].year == 2024)
        dstore.drop_daily(conn, "AAPL")
        assert store.dividends.dividends_for(conn, "AAPL", tz="America/New_York") == []
