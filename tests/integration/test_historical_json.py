"""The daily answer's JSON text, put together by concatenation in SQL
(``store.reads.historical_json_sql``), is byte for byte what
``json_build_object(...)::text`` gives, for every awkward value a candle can
hold: NaN and infinities (null), NULLs, the extremes of float8, a float4
score, text that JSON must escape, and under a server whose DateStyle and
float settings differ from the defaults."""
from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from appliance.store import pool as db
from appliance.store import reads

TZ = "America/New_York"
F = reads._finite
REFERENCE = """SELECT json_build_object('time', time, 'open', {o}, 'high', {h}, 'low', {lo},
                      'close', {c}, 'volume', {v}, 'vwap', {w}, 'validated', validated,
                      'quality_score', {q}, 'gap_detected', gap_detected,
                      'gap_kind', gap_kind, 'source', source)::text
               FROM ({inner}) q"""

AWKWARD = [  # open, high, low, close, volume, vwap, validated, quality, gap, gap_kind, source
    (42.5, 43.17, 42.3, 42.44, 12488454, 42.64, True, 1.0, False, None, "demo"),
    (0.1 + 0.2, 1e-300, 5e-324, 1.7976931348623157e308, 0.0, None, True, 1 / 3, True, "split",
     "polygon"),
    (float("nan"), float("inf"), float("-inf"), -0.0, None, float("nan"), False, 0.3, False,
     'q"uote\\back\nline\ttab\u0001ctl', "é ünïcödé ✓"),
    (123456789.123456, 1e21, 1e-7, 100.0, 1e16, 99.99, False, 0.7, True, "unexplained", ""),
]


@pytest.fixture
def conn(database_url):
    with psycopg.connect(database_url, autocommit=True) as c:
        db.ensure_partitions(c, 2024, 2024)
        day = dt.date(2024, 1, 2)
        for i, row in enumerate(AWKWARD):
            c.execute(
                """INSERT INTO market_data (symbol, timeframe, ts, open, high, low, close, volume,
                       vwap, validated, quality_score, gap_detected, gap_kind, source)
                   VALUES ('ODD', '1d', (%s::date)::timestamp AT TIME ZONE %s,
                           %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                (day + dt.timedelta(days=i), TZ, *row))
        yield c


def _both(conn, adjust, include_invalid):
    params = {"symbol": "ODD", "tf": "1d", "start": dt.date(2024, 1, 1),
              "end": dt.date(2024, 12, 31), "limit": None, "tz": TZ}
    inner = reads._historical_select(adjust, include_invalid)
    ref = REFERENCE.format(o=F("open"), h=F("high"), lo=F("low"), c=F("close"), v=F("volume"),
                           w=F("vwap"), q=F("quality_score"), inner=inner)
    got = [r[0] for r in conn.execute(reads.historical_json_sql(adjust, include_invalid),
                                      params).fetchall()]
    want = [r[0] for r in conn.execute(ref, params).fetchall()]
    return got, want


@pytest.mark.parametrize("adjust", ["none", "splits", "total"])
@pytest.mark.parametrize("include_invalid", [True, False])
def test_the_concatenated_text_equals_json_build_object_byte_for_byte(conn, adjust,
                                                                       include_invalid):
    got, want = _both(conn, adjust, include_invalid)
    assert len(got) == (4 if include_invalid else 2)
    assert got == want
    if include_invalid:
        assert '"open" : null, "high" : null, "low" : null' in got[2]  # NaN, +-Infinity
        assert '"volume" : null' in got[2] and '"vwap" : null' in got[2]
        assert '"gap_kind" : "q\\"uote\\\\back\\nline\\ttab\\u0001ctl"' in got[2]


def test_equal_under_other_date_and_float_settings(conn):
    conn.execute("SET DateStyle = 'SQL, DMY'")
    conn.execute("SET extra_float_digits = 0")
    got, want = _both(conn, "none", True)
    assert got == want
    assert got[0].startswith('{"time" : "2024-01-02", ')
