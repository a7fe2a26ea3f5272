"""The loopback Polygon fake's minute data: the truth it is built from and the
minute/hour/week aggregates it serves. Reference aggregates here are computed
independently (zoneinfo, plain Python), not with the fake's own helpers."""
import collections
import datetime as dt
import json
import pathlib
import urllib.error
import urllib.request
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from tests.fakes.minute_truth import make_minute_truth
from tests.fakes.polygon_fake import PolygonFake
from tests.fakes.vendor_minutes import VendorMinutes

ET = ZoneInfo("America/New_York")
KEY = "test-key"
VENDOR = pathlib.Path("/work/shared/vendor/polygon")
SPLIT_DAY = dt.date(2024, 6, 10)
START, END = dt.date(2024, 5, 1), dt.date(2024, 12, 31)


@pytest.fixture(scope="module")
def truth():
    return make_minute_truth(["AAPL", "THIN"], START, END, seed=4, split_symbols=["AAPL"],
                             split_date=SPLIT_DAY)


@pytest.fixture(scope="module")
def fake(truth):
    with PolygonFake(truth.bars, truth.splits, minutes=truth.minutes, api_key=KEY) as f:
        yield f


def get(fake, path_or_url, **query):
    url = path_or_url if path_or_url.startswith("http") else fake.base_url + path_or_url
    query.setdefault("apiKey", KEY)
    sep = "&" if "?" in url else "?"
    url += sep + "&".join(f"{k}={v}" for k, v in query.items())
    with urllib.request.urlopen(url) as r:
        return r.read()


def fetch_all(fake, path, **query) -> tuple[list[dict], list[dict]]:
    """(every result across the pages, every page's body)."""
    pages = [json.loads(get(fake, path, **query))]
    while "next_url" in pages[-1]:
        pages.append(json.loads(get(fake, pages[-1]["next_url"])))
    return [r for p in pages for r in p.get("results", [])], pages


def et(t_ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(t_ms / 1000, ET)


def ms(day: dt.date, hh: int, mm: int = 0) -> int:
    return int(dt.datetime(day.year, day.month, day.day, hh, mm, tzinfo=ET).timestamp() * 1000)


def minutes_of(fake, sym, day, adjusted="false") -> list[dict]:
    rows, _ = fetch_all(fake, f"/v2/aggs/ticker/{sym}/range/1/minute/{day}/{day}",
                        adjusted=adjusted, limit=50000)
    return rows


def aggregate(rows: list[dict], key) -> list[dict]:
    """The vendor's rule, by hand: rows grouped by ``key(et datetime)``."""
    groups = collections.OrderedDict()
    for r in rows:
        groups.setdefault(key(et(r["t"])), []).append(r)
    out = []
    for start, g in groups.items():
        v = sum(r["v"] for r in g)
        out.append({"v": v, "vw": round(sum(r["vw"] * r["v"] for r in g) / v, 4),
                    "o": g[0]["o"], "c": g[-1]["c"], "h": max(r["h"] for r in g),
                    "l": min(r["l"] for r in g), "t": int(start.timestamp() * 1000),
                    "n": sum(r["n"] for r in g)})
    return out


def session_days(truth, n=None):
    return [d.astype(dt.date) for d in truth.sessions[:n]]


# -- the truth -----------------------------------------------------------------

def test_truth_has_thin_extended_hours_and_missing_regular_minutes(truth):
    mb = truth.minutes["AAPL"]
    hours = np.array([et(t).hour * 60 + et(t).minute for t in mb.t[:20000].tolist()])
    pre = int(((hours >= 240) & (hours < 570)).sum())
    after = int(((hours >= 960) & (hours < 1200)).sum())
    regular = int(((hours >= 570) & (hours < 960)).sum())
    assert pre > 0 and after > 0
    # thinner: fewer bars per minute of clock time than regular hours
    assert pre / 330 < regular / 390 / 2 and after / 240 < regular / 390 / 2
    full = 390 * len(truth.sessions) - 180 * len(truth.early_closes)
    assert 0 < full - truth.regular_counts["AAPL"] < full * 0.05
    assert mb.v[mb.regular].mean() > 10 * mb.v[~mb.regular].mean()
    assert hours.min() >= 240 and hours.max() < 1200


def test_values_are_whole_volumes_and_four_decimal_prices_within_the_bar(truth):
    for mb in truth.minutes.values():
        for col in (mb.o, mb.h, mb.l, mb.c, mb.vw):
            assert np.array_equal(np.round(col, 4), col)
        assert np.array_equal(np.floor(mb.v), mb.v) and (mb.v >= 1).all()
        assert (mb.n >= 1).all() and (mb.n <= mb.v).all()
        assert (mb.l <= np.minimum(mb.o, mb.c)).all() and (mb.h >= np.maximum(mb.o, mb.c)).all()
        assert ((mb.vw >= mb.l) & (mb.vw <= mb.h)).all()
        assert (np.diff(mb.t) > 0).all() and (mb.t % 60_000 == 0).all()


def test_the_truth_is_deterministic_by_seed_and_can_regenerate_its_minutes():
    a = make_minute_truth(["X", "Y"], "2024-03-01", "2024-03-08", seed=9)
    b = make_minute_truth(["X", "Y"], "2024-03-01", "2024-03-08", seed=9, keep_minutes=False,
                          cache_symbols=1)
    c = make_minute_truth(["X", "Y"], "2024-03-01", "2024-03-08", seed=10)
    for s in ("X", "Y", "X"):
        assert a.minutes[s].rows() == b.minutes[s].rows()
        assert a.rows(s) == b.rows(s)
    assert a.minutes["X"].rows() != c.minutes["X"].rows()
    assert a.minute_counts == b.minute_counts
    with pytest.raises(KeyError):
        b.minutes["Z"]


def test_regular_session_truth_has_only_regular_minutes():
    t = make_minute_truth(["X"], "2024-11-25", "2024-11-29", session="regular", missing=0)
    mb = t.minutes["X"]
    assert mb.regular.all()
    # 09:30-16:00 four days, 09:30-13:00 on the day after Thanksgiving
    assert len(mb) == 3 * 390 + 210 == t.n_regular_minutes == t.n_minutes
    with pytest.raises(ValueError, match="session must be"):
        make_minute_truth(["X"], "2024-11-25", "2024-11-29", session="overnight")


def test_early_close_days_have_no_regular_minutes_after_13(truth, fake):
    early = [d.astype(dt.date) for d in truth.early_closes]
    assert early == [dt.date(2024, 7, 3), dt.date(2024, 11, 29), dt.date(2024, 12, 24)]
    mb = truth.minutes["AAPL"]
    day = mb.sessions()
    for d in early:
        on = day == np.datetime64(d)
        assert on.any()
        assert (mb.mod[on & mb.regular] < 13 * 60).all()
        served = minutes_of(fake, "AAPL", d)
        late = [r for r in served if et(r["t"]).time() >= dt.time(13)]
        assert all(et(r["t"]).time() < dt.time(17) for r in served)
        # what comes after the close is after-hours: thin, and not in the daily bar
        daily = json.loads(get(fake, f"/v2/aggs/ticker/AAPL/range/1/day/{d}/{d}",
                               adjusted="false"))["results"][0]
        reg = [r for r in served if dt.time(9, 30) <= et(r["t"]).time() < dt.time(13)]
        assert daily["c"] == reg[-1]["c"] and daily["h"] == max(r["h"] for r in reg)
        assert sum(r["v"] for r in late) < sum(r["v"] for r in reg) / 10
    # a normal day does have regular minutes after 13:00 and after-hours past 17:00
    normal = minutes_of(fake, "AAPL", dt.date(2024, 7, 2))
    assert any(dt.time(13) <= et(r["t"]).time() < dt.time(16) for r in normal)
    assert any(et(r["t"]).time() >= dt.time(17) for r in normal)


# -- serving -------------------------------------------------------------------------

def test_minute_answers_have_the_daily_fixtures_keys_in_order_and_compact_json(fake):
    fixture = json.loads((VENDOR / "v2_aggs_ticker_AAPL_range_1_day_2005-04-01_2005-04-04.json")
                         .read_text())
    raw = get(fake, "/v2/aggs/ticker/AAPL/range/1/minute/2024-07-01/2024-07-01", limit=100)
    body = json.loads(raw)
    assert list(body) == [*fixture, "next_url"]
    assert all(list(r) == list(fixture["results"][0]) for r in body["results"])
    assert raw == json.dumps(body, separators=(",", ":")).encode()
    assert body["resultsCount"] == body["queryCount"] == body["count"] == 100
    assert body["next_url"].startswith(f"{fake.base_url}/v2/aggs/ticker/AAPL/range/1/minute/")
    for span in ("5/minute", "1/hour", "4/hour", "1/week", "1/day"):
        b = json.loads(get(fake, f"/v2/aggs/ticker/AAPL/range/{span}/2024-07-01/2024-07-12"))
        assert list(b) == list(fixture), span
        assert all(list(r) == list(fixture["results"][0]) for r in b["results"]), span
    empty = json.loads(get(fake, "/v2/aggs/ticker/AAPL/range/1/minute/2024-07-06/2024-07-07"))
    assert "results" not in empty and empty["count"] == 0


def test_pages_of_50000_base_minutes_return_every_minute_exactly_once(truth, fake):
    mb = truth.minutes["AAPL"]
    assert len(mb) > 60_000
    rows, pages = fetch_all(fake, f"/v2/aggs/ticker/AAPL/range/1/minute/{START}/{END}",
                            adjusted="false", limit=50000)
    assert [p["resultsCount"] for p in pages[:-1]] == [50000] * (len(pages) - 1)
    assert len(pages) == -(-len(mb) // 50000) >= 2
    assert [r["t"] for r in rows] == mb.t.tolist()
    assert [(r["o"], r["h"], r["l"], r["c"], r["v"], r["vw"], r["n"]) for r in rows] == \
        list(zip(mb.o.tolist(), mb.h.tolist(), mb.l.tolist(), mb.c.tolist(),
                 [int(v) for v in mb.v.tolist()], mb.vw.tolist(), mb.n.tolist(), strict=False))
    nxt = pages[0]["next_url"]
    assert nxt.startswith(f"{fake.base_url}/v2/aggs/ticker/AAPL/range/1/minute/"
                          f"{rows[50000]['t']}/{END}?cursor=")
    # descending pages give the same minutes backwards
    back, _ = fetch_all(fake, f"/v2/aggs/ticker/AAPL/range/1/minute/{START}/{END}",
                        adjusted="false", limit=50000, sort="desc")
    assert back == rows[::-1]


def test_the_default_limit_is_5000_base_minutes(fake):
    body = json.loads(get(fake, f"/v2/aggs/ticker/AAPL/range/1/minute/{START}/{END}"))
    assert body["count"] == 5000 and "next_url" in body
    big = json.loads(get(fake, f"/v2/aggs/ticker/AAPL/range/1/minute/{START}/{END}",
                         limit=900000))
    assert big["count"] == 50000


def test_hour_pages_hold_whole_hours_of_at_most_limit_minutes(truth, fake):
    path = "/v2/aggs/ticker/THIN/range/1/hour/2024-07-01/2024-07-31"
    whole, _ = fetch_all(fake, path, adjusted="false", limit=50000)
    paged, pages = fetch_all(fake, path, adjusted="false", limit=1000)
    assert paged == whole and len(pages) > 3
    back, _ = fetch_all(fake, path, adjusted="false", limit=1000, sort="desc")
    assert back == whole[::-1]
    mb = truth.minutes["THIN"]
    for p in pages:
        first, last = p["results"][0]["t"], p["results"][-1]["t"]
        inside = ((mb.t >= first) & (mb.t < last + 3_600_000)).sum()
        assert inside <= 1000


def test_missing_minutes_have_no_bar(truth, fake):
    mb = truth.minutes["THIN"]
    day = SPLIT_DAY + dt.timedelta(days=1)
    served = {r["t"] for r in minutes_of(fake, "THIN", day)}
    regular = {ms(day, 9, 30) + 60_000 * i for i in range(390)}
    missing = sorted(regular - served)
    assert missing and len(missing) < 390 // 5
    assert not set(missing) & set(mb.t.tolist())
    for m in missing[:3]:
        body = json.loads(get(fake, f"/v2/aggs/ticker/THIN/range/1/minute/{m}/{m}"))
        assert "results" not in body and body["resultsCount"] == 0


@pytest.mark.parametrize("mult,span,size", [(5, "minute", 5), (15, "minute", 15),
                                            (30, "minute", 30), (1, "hour", 60),
                                            (4, "hour", 240)])
def test_multi_minute_bars_are_the_vendors_aggregates_of_the_minutes(fake, mult, span, size):
    days = [dt.date(2024, 7, 2), dt.date(2024, 7, 3), SPLIT_DAY]
    for sym in ("AAPL", "THIN"):
        for d in days:
            for adjusted in ("false", "true"):
                minutes = minutes_of(fake, sym, d, adjusted)
                expected = aggregate(minutes, lambda t: t.replace(
                    hour=(t.hour * 60 + t.minute) // size * size // 60,
                    minute=(t.hour * 60 + t.minute) // size * size % 60))
                got, _ = fetch_all(fake, f"/v2/aggs/ticker/{sym}/range/{mult}/{span}/{d}/{d}",
                                   adjusted=adjusted, limit=50000)
                assert [r["t"] for r in got] == [r["t"] for r in expected]
                for g, e in zip(got, expected, strict=False):
                    assert g["v"] == pytest.approx(e["v"], rel=1e-12)
                    assert g["vw"] == pytest.approx(e["vw"], abs=1.5e-4)
                    assert (g["o"], g["c"], g["h"], g["l"], g["n"]) == \
                        (e["o"], e["c"], e["h"], e["l"], e["n"])


def test_the_0900_hour_bar_holds_the_premarket_minutes(truth, fake):
    for d in session_days(truth, 40):
        minutes = minutes_of(fake, "AAPL", d)
        pre = [r for r in minutes if dt.time(9) <= et(r["t"]).time() < dt.time(9, 30)]
        reg = [r for r in minutes if dt.time(9, 30) <= et(r["t"]).time() < dt.time(10)]
        if pre and reg:
            break
    else:
        pytest.fail("no session with pre-market minutes after 09:00")
    hours = json.loads(get(fake, f"/v2/aggs/ticker/AAPL/range/1/hour/{d}/{d}",
                           adjusted="false"))["results"]
    nine = [h for h in hours if h["t"] == ms(d, 9)]
    assert len(nine) == 1 and not [h for h in hours if et(h["t"]).minute]
    h = nine[0]
    assert h["o"] == pre[0]["o"] and h["c"] == reg[-1]["c"]
    assert h["v"] == sum(r["v"] for r in pre + reg)
    four = json.loads(get(fake, f"/v2/aggs/ticker/AAPL/range/4/hour/{d}/{d}",
                          adjusted="false"))["results"]
    assert [et(r["t"]).hour for r in four] == [4, 8, 12, 16]


def test_adjusted_answers_divide_pre_split_prices_and_multiply_volumes(fake):
    before, after = SPLIT_DAY - dt.timedelta(days=3), SPLIT_DAY
    for span in ("1/minute", "5/minute", "1/hour", "1/day"):
        path = f"/v2/aggs/ticker/AAPL/range/{span}/{before}/{before}"
        raw = json.loads(get(fake, path, adjusted="false"))
        adj = json.loads(get(fake, path))
        assert adj["adjusted"] is True and raw["adjusted"] is False
        for r, a in zip(raw["results"], adj["results"], strict=False):
            assert a["o"] == r["o"] * 0.25 and a["l"] == r["l"] * 0.25 and a["vw"] == r["vw"] * 0.25
            assert a["v"] == r["v"] * 4 and a["n"] == r["n"] and a["t"] == r["t"]
        path = f"/v2/aggs/ticker/AAPL/range/{span}/{after}/{after}"
        assert get(fake, path, adjusted="false").split(b'"request_id"')[0] \
            .replace(b'"adjusted":false', b'"adjusted":true') == \
            get(fake, path).split(b'"request_id"')[0]
    # raw prices drop by about four across the split, adjusted ones do not
    raw = minutes_of(fake, "AAPL", before)[-1], minutes_of(fake, "AAPL", after)[0]
    adj = minutes_of(fake, "AAPL", before, "true")[-1], minutes_of(fake, "AAPL", after, "true")[0]
    assert 0.2 < raw[1]["o"] / raw[0]["c"] < 0.3 and 0.8 < adj[1]["o"] / adj[0]["c"] < 1.25
    # a week spanning the split is adjusted day by day
    week = json.loads(get(fake, "/v2/aggs/ticker/AAPL/range/1/week/2024-06-09/2024-06-15"))
    days = json.loads(get(fake, "/v2/aggs/ticker/AAPL/range/1/day/2024-06-09/2024-06-15"))
    assert week["results"][0]["h"] == max(r["h"] for r in days["results"])


def test_the_daily_bar_is_the_regular_hours_aggregate(truth, fake):
    for d in session_days(truth)[::9] + [d.astype(dt.date) for d in truth.early_closes]:
        for sym in ("AAPL", "THIN"):
            minutes = minutes_of(fake, sym, d)
            close = dt.time(13) if np.datetime64(d) in truth.early_closes else dt.time(16)
            is_reg = [dt.time(9, 30) <= et(r["t"]).time() < close for r in minutes]
            reg = [r for r, x in zip(minutes, is_reg, strict=False) if x]
            ext = [r for r, x in zip(minutes, is_reg, strict=False) if not x]
            assert ext
            daily = json.loads(get(fake, f"/v2/aggs/ticker/{sym}/range/1/day/{d}/{d}",
                                   adjusted="false"))["results"]
            assert len(daily) == 1 and daily[0]["t"] == ms(d, 0)
            b = daily[0]
            assert b["h"] == max(r["h"] for r in reg) and b["l"] == min(r["l"] for r in reg)
            assert b["o"] == reg[0]["o"] and b["c"] == reg[-1]["c"]
            assert b["v"] == pytest.approx(sum(r["v"] for r in reg), rel=0.01)
            assert b["v"] != sum(r["v"] for r in reg + ext)


def test_weekly_bars_start_on_sunday(fake):
    weeks = json.loads(get(fake, "/v2/aggs/ticker/THIN/range/1/week/2024-07-01/2024-07-31",
                           adjusted="false"))["results"]
    days = json.loads(get(fake, "/v2/aggs/ticker/THIN/range/1/day/2024-07-01/2024-07-31",
                          adjusted="false"))["results"]
    assert all(et(w["t"]).weekday() == 6 and et(w["t"]).time() == dt.time(0) for w in weeks)
    assert sum(w["v"] for w in weeks) == sum(d["v"] for d in days)
    paged, pages = fetch_all(fake, "/v2/aggs/ticker/THIN/range/1/week/2024-07-01/2024-07-31",
                             adjusted="false", limit=5)
    assert paged == weeks and len(pages) > 1


def test_auth_rate_limit_faults_and_counting_on_the_minute_path(truth):
    path = "/v2/aggs/ticker/AAPL/range/1/minute/2024-07-01/2024-07-01"
    with PolygonFake(truth.bars, truth.splits, minutes=truth.minutes, api_key=KEY,
                     faults=[None, "429", "empty_page"], plan_start=dt.date(2024, 6, 1)) as f:
        assert json.loads(get(f, path))["count"] > 0
        with pytest.raises(urllib.error.HTTPError) as e:
            get(f, path)
        assert e.value.code == 429 and "exceeded" in json.loads(e.value.read())["error"]
        empty = json.loads(get(f, path))  # repeats the current position
        first = int(truth.minutes["AAPL"].between(ms(dt.date(2024, 7, 1), 0), 2**62).t[0])
        assert "results" not in empty
        assert f"/range/1/minute/{first}/2024-07-01?cursor=" in empty["next_url"]
        with pytest.raises(urllib.error.HTTPError) as e:
            get(f, path, apiKey="wrong")
        assert e.value.code == 401 and json.loads(e.value.read())["error"] == "Unknown API Key"
        with pytest.raises(urllib.error.HTTPError) as e:
            get(f, "/v2/aggs/ticker/AAPL/range/1/minute/2024-05-01/2024-05-02")
        assert e.value.code == 403 and json.loads(e.value.read())["status"] == "NOT_AUTHORIZED"
        with pytest.raises(urllib.error.HTTPError) as e:
            get(f, "/v2/aggs/ticker/AAPL/range/0/minute/2024-07-01/2024-07-01")
        assert e.value.code == 400
        assert f.count("/v2/aggs/ticker/AAPL/range/1/minute") == 5


def test_minutes_can_be_set_per_symbol():
    t0 = ms(dt.date(2024, 7, 1), 9, 30)
    mb = VendorMinutes.from_rows("ZZ", [(t0 + 60_000, 10.5, 10.6, 10.4, 10.55, 300.0, 10.5, 3),
                                     (t0, 10.0, 10.5, 9.9, 10.5, 100.0, 10.2, 1)])
    assert mb.mod.tolist() == [570, 571] and mb.regular.all()
    with PolygonFake(api_key=None) as f:
        f.set_minutes("ZZ", mb)
        body = json.loads(get(f, "/v2/aggs/ticker/ZZ/range/5/minute/2024-07-01/2024-07-01"))
    assert body["results"] == [{"v": 400, "vw": 10.425, "o": 10.0, "c": 10.55, "h": 10.6,
                                "l": 9.9, "t": t0, "n": 4}]


def test_served_minutes_parse_to_the_truths_candles(truth, fake):
    from appliance.providers.polygon import minute_bars_from_results

    rows, _ = fetch_all(fake, "/v2/aggs/ticker/THIN/range/1/minute/2024-07-01/2024-07-31",
                        adjusted="false", limit=50000)
    got = minute_bars_from_results("THIN", rows)
    mb = truth.minutes["THIN"]
    want = mb.between(ms(dt.date(2024, 7, 1), 0), ms(dt.date(2024, 8, 1), 0) - 1).to_candles()
    assert len(got) == len(want) > 0
    for col in want.COLUMNS:
        assert np.array_equal(getattr(got, col), getattr(want, col)), col
    assert (want.minute == mb.between(ms(dt.date(2024, 7, 1), 0),
                                      ms(dt.date(2024, 8, 1), 0) - 1).mod).all()
