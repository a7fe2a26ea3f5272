"""REST API v1 on real PostgreSQL and Redis: fields, errors, auth, streaming,
health under hung services, metrics.

Every response these tests receive is validated against the OpenAPI document
the app serves (``SpecClient``), so the document and the code cannot drift.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import jsonschema
import numpy as np
import pytest
from werkzeug.serving import make_server

from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from appliance.providers.demo import DemoProvider
from appliance.web import api as api_mod
from appliance.web.openapi import spec as openapi_spec
from tests.support import wait_until

SPEC = openapi_spec()
FIELDS = ["time", "open", "high", "low", "close", "volume", "vwap", "validated",
          "quality_score", "gap_detected", "gap_kind", "source"]


# --------------------------------------------------------------------------- spec validation

def _template_for(path: str) -> str:
    for tmpl in SPEC["paths"]:
        rx = "^" + re.sub(r"\\\{[^}]+\\\}", r"[^/]+", re.escape(tmpl)) + "$"
        if tmpl == "/api/v1/historical/{symbol}":
            rx = "^/api/v1/historical/.+$"
        if re.match(rx, path):
            return tmpl
    raise AssertionError(f"{path} is not described in the OpenAPI document")


def response_schema(path: str, method: str, status: int, content_type: str) -> dict:
    op = SPEC["paths"][_template_for(path)].get(method.lower())
    assert op is not None, f"{method} {path} is not described"
    resp = op["responses"].get(str(status))
    assert resp is not None, f"{method} {path}: status {status} is not described"
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    media = content_type.split(";")[0].strip()
    assert media in resp["content"], f"{method} {path} {status}: {media} not described"
    return resp["content"][media]["schema"]


def validate_response(path: str, method: str, status: int, content_type: str, body: bytes):
    """Check one response against the document; return the parsed body."""
    schema = response_schema(path, method, status, content_type)
    if content_type.startswith("application/json"):
        data = json.loads(body)
        root = {**schema, "components": SPEC["components"]}
        jsonschema.Draft202012Validator(
            root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).validate(data)
        return data
    text = body.decode()
    jsonschema.validate(text, schema)
    return text


class SpecClient:
    """The Flask test client, checking every response against the document."""

    def __init__(self, client):
        self.c = client

    def open(self, method: str, url: str, **kw):
        r = self.c.open(url, method=method, **kw)
        path = url.split("?")[0]
        if r.status_code != 405 and not (r.status_code == 404 and "{" not in path
                                         and _undescribed(path)):
            validate_response(path, method, r.status_code, r.content_type, r.get_data())
        assert r.content_type.split(";")[0] in ("application/json", "text/csv", "text/plain")
        body = r.get_data(as_text=True)
        assert "Traceback" not in body and 'File "' not in body
        if r.status_code >= 400 and not (r.status_code == 503
                                         and path in ("/health", "/api/v1/status")):
            err = r.get_json()
            assert set(err) == {"error"} and {"code", "message"} <= set(err["error"]), body
        return r

    def get(self, url, **kw):
        return self.open("GET", url, **kw)

    def post(self, url, **kw):
        return self.open("POST", url, **kw)


def _undescribed(path: str) -> bool:
    try:
        _template_for(path)
        return False
    except AssertionError:
        return True


# --------------------------------------------------------------------------- fixtures

def _backfill(rt):
    res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill, params={})
    assert res["status"] == "ok", res
    return res


@pytest.fixture
def api(client):
    return SpecClient(client)


@pytest.fixture
def loaded(runtime, api):
    _backfill(runtime)
    return api


def _app_for(config_path):
    from appliance.web import create_app
    app = create_app(config_path)
    app.config["TESTING"] = True
    return app


@contextmanager
def served(app):
    """The app on a real loopback HTTP server (threads, like gunicorn's gthread)."""
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        t.join(5)


@contextmanager
def silent_tcp_server():
    """Accepts connections and never says a word: a hung PostgreSQL or Redis."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    conns, stop = [], threading.Event()

    def loop():
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = s.accept()
                conns.append(c)
            except OSError:
                continue

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield s.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        for c in conns:
            c.close()
        s.close()


# --------------------------------------------------------------------------- health and status

def test_health_answers_with_the_seed_fields(loaded):
    r = loaded.get("/health")
    body = r.get_json()
    assert r.status_code == 200
    assert body["database"] == "ok" and body["redis"] == "ok"
    assert body["status"] == "degraded"  # no scheduler in this test
    assert re.match(r"^\d{4}-\d{2}-\d{2}$", body["latest_data"])
    assert 0 < body["validation_rate_pct"] <= 100
    assert body["config_last_reload_successful"] is True


def test_status_database_block_tells_the_stored_truth(loaded, runtime):
    r = loaded.get("/api/v1/status")
    assert r.status_code == 200
    body = r.get_json()
    db = body["database"]
    with runtime.conn() as conn:
        total, valid, latest = conn.execute(
            """SELECT count(*), count(*) FILTER (WHERE validated),
                      (max(ts) AT TIME ZONE 'America/New_York')::date FROM market_data""").fetchone()
    assert db["status"] == "ok"
    assert db["total_records"] == total and db["validated_records"] == valid
    assert db["symbols_available"] == 2
    assert db["latest_data"] == latest.isoformat()
    assert db["validation_rate_pct"] == round(100 * valid / total, 2)
    assert body["data_quality"]["records_with_gaps_flagged"] == db["gaps_flagged"]
    assert body["data_quality"]["scheduler_status"] == "stopped"
    assert body["data_quality"]["last_backfill"]["status"] == "ok"
    assert body["api_version"] == "1"
    assert set(body["scheduler"]["jobs"]) >= {"backfill", "backup", "restore_test"}
    assert body["config"]["sha256"] == runtime.config.sha256


def test_health_answers_quickly_with_redis_error_when_redis_hangs(config_factory):
    with silent_tcp_server() as port:
        app = _app_for(config_factory(redis={"url": f"redis://127.0.0.1:{port}/0"}))
        c = SpecClient(app.test_client())
        t0 = time.monotonic()
        r = c.get("/health")
        elapsed = time.monotonic() - t0
        app.config["RUNTIME"].close()
    body = r.get_json()
    assert body["redis"] == "error"
    assert body["database"] == "ok"
    assert body["scheduler_running"] is False
    assert r.status_code == 200  # degraded, not down: the data is still served
    assert elapsed < 3, f"/health took {elapsed:.1f}s with a hung Redis"


def test_health_is_unhealthy_503_quickly_and_status_says_error_when_postgres_hangs(
        config_factory):
    with silent_tcp_server() as port:
        app = _app_for(config_factory(
            database={"url": f"postgresql://postgres@127.0.0.1:{port}/hung",
                      "connect_timeout_seconds": 2}))
        c = SpecClient(app.test_client())
        t0 = time.monotonic()
        r = c.get("/health")
        elapsed = time.monotonic() - t0
        s = c.get("/api/v1/status")
        m = app.test_client().get("/metrics")
        app.config["RUNTIME"].close()
    body = r.get_json()
    assert r.status_code == 503
    assert body["status"] == "unhealthy" and body["database"] == "error"
    assert body["latest_data"] is None and body["validation_rate_pct"] is None
    assert elapsed < 3, f"/health took {elapsed:.1f}s with a hung PostgreSQL"
    assert s.status_code == 503
    db = s.get_json()["database"]
    assert db["status"] == "error"
    assert "total_records" not in db and "symbols_available" not in db  # never fake zeros
    assert m.status_code == 200
    assert 'appliance_up{component="database"} 0.0' in m.get_data(as_text=True)


# --------------------------------------------------------------------------- symbols

def test_symbols_lists_a_configured_symbol_without_data(config_factory):
    app = _app_for(config_factory(symbols=["AAPL", "MSFT", "NEWSTOCK"]))
    try:
        c = SpecClient(app.test_client())
        _backfill_symbols(app, ["AAPL"])
        r = c.get("/api/v1/symbols")
        assert r.status_code == 200
        assert "NEWSTOCK" in r.get_data(as_text=True)
        rows = {s["symbol"]: s for s in r.get_json()["symbols"]}
        assert set(rows) == {"AAPL", "MSFT", "NEWSTOCK"}
        assert rows["NEWSTOCK"]["records"] == 0 and rows["NEWSTOCK"]["first_date"] is None
        assert rows["NEWSTOCK"]["configured"] and rows["NEWSTOCK"]["active"]
        assert rows["AAPL"]["records"] > 0 and rows["AAPL"]["first_date"] == "2024-01-02"
        assert 0 < rows["AAPL"]["quality_score"] <= 1
        # a configured symbol without data is known: empty data, not 404
        h = c.get("/api/v1/historical/NEWSTOCK")
        assert h.status_code == 200 and h.get_json()["count"] == 0
    finally:
        app.config["RUNTIME"].close()


def _backfill_symbols(app, symbols):
    rt = app.config["RUNTIME"]
    res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                       params={"symbols": symbols})
    assert res["status"] == "ok", res


def test_symbols_filter_on_active(loaded):
    assert loaded.get("/api/v1/symbols?active=false").get_json()["count"] == 0
    assert loaded.get("/api/v1/symbols?active=true").get_json()["count"] == 2


# --------------------------------------------------------------------------- historical

def _stored(runtime, symbol, start, end, include_invalid=False):
    with runtime.conn() as conn:
        return conn.execute(
            """SELECT (ts AT TIME ZONE 'America/New_York')::date, open, high, low, close, volume,
                      vwap, validated FROM market_data WHERE symbol = %s
               AND (ts AT TIME ZONE 'America/New_York')::date BETWEEN %s AND %s
               AND (validated OR %s) ORDER BY ts""",
            (symbol, start, end, include_invalid)).fetchall()


def test_historical_returns_the_seed_fields_with_end_inclusive(loaded, runtime):
    r = loaded.get("/api/v1/historical/AAPL?start=2025-10-01&end=2025-10-31")
    assert r.status_code == 200
    body = r.get_json()
    assert list(body)[:6] == ["symbol", "timeframe", "start_date", "end_date", "adjusted",
                              "count"]
    assert body["symbol"] == "AAPL" and body["timeframe"] == "1d"
    assert body["start_date"] == "2025-10-01" and body["end_date"] == "2025-10-31"
    assert body["adjusted"] is False
    data = body["data"]
    assert body["count"] == len(data) == len(_stored(runtime, "AAPL", dt.date(2025, 10, 1),
                                                     dt.date(2025, 10, 31)))
    assert list(data[0]) == FIELDS
    assert data[0]["time"] == "2025-10-01"
    assert data[-1]["time"] == "2025-10-31"  # a Friday session: end is inclusive
    assert [d["time"] for d in data] == sorted(d["time"] for d in data)


def test_historical_prices_round_trip_exactly_what_the_provider_produced(loaded):
    start, end = dt.date(2024, 1, 2), dt.date(2025, 12, 31)
    bars = DemoProvider(seed=42).daily_bars("MSFT", start, end)
    by_day = {str(d): i for i, d in enumerate(bars.session.astype("datetime64[D]"))}
    body = loaded.get(f"/api/v1/historical/MSFT?start={start}&end={end}"
                      "&include_invalid=true").get_json()
    assert body["count"] == len(bars) > 400
    for row in body["data"]:
        i = by_day[row["time"]]
        for k in ("open", "high", "low", "close", "volume"):
            assert row[k] == float(getattr(bars, k)[i]), (row["time"], k)
        v = float(bars.vwap[i])
        assert row["vwap"] == (None if np.isnan(v) else v)


def test_historical_excludes_invalid_candles_unless_asked(loaded, runtime):
    with runtime.conn() as conn:
        bad = conn.execute("""SELECT symbol, (ts AT TIME ZONE 'America/New_York')::date
                              FROM market_data WHERE NOT validated ORDER BY ts LIMIT 1""").fetchone()
    assert bad is not None, "the demo provider always carries some invalid candles"
    sym, day = bad
    q = f"/api/v1/historical/{sym}?start={day}&end={day}"
    assert loaded.get(q).get_json()["count"] == 0
    body = loaded.get(q + "&include_invalid=true").get_json()
    assert body["count"] == 1 and body["data"][0]["validated"] is False
    # flagged candles are stored and countable
    status = loaded.get("/api/v1/status").get_json()["database"]
    assert status["total_records"] > status["validated_records"]


def test_historical_adjusted_applies_stored_splits(config_factory):
    app = _app_for(config_factory(symbols=["NVDA"]))
    try:
        _backfill_symbols(app, ["NVDA"])
        c = SpecClient(app.test_client())
        q = "/api/v1/historical/NVDA?start=2024-06-03&end=2024-06-14&include_invalid=true"
        raw = c.get(q).get_json()["data"]
        adj = c.get(q + "&adjusted=true").get_json()
        assert adj["adjusted"] is True
        k = 1.0 / 10.0  # the demo's 10-for-1 split on 2024-06-10, stored from the provider
        for r, a in zip(raw, adj["data"], strict=False):
            if r["time"] < "2024-06-10":
                for f in ("open", "high", "low", "close", "vwap"):
                    assert a[f] == r[f] * k, (r["time"], f)
                assert a["volume"] == r["volume"] / k
            else:
                assert {f: a[f] for f in FIELDS} == {f: r[f] for f in FIELDS}
        gaps = c.get("/api/v1/gaps?symbol=NVDA&kind=split").get_json()["gaps"]
        assert [(g["session"], g["split_ratio"]) for g in gaps] == [("2024-06-10", "10:1")]
    finally:
        app.config["RUNTIME"].close()


def test_historical_defaults_to_the_last_year(loaded, runtime):
    body = loaded.get("/api/v1/historical/AAPL").get_json()
    end = dt.date.fromisoformat(body["end_date"])
    assert body["start_date"] == (end - dt.timedelta(days=365)).isoformat()
    assert body["count"] == len(_stored(runtime, "AAPL", end - dt.timedelta(days=365), end))


def test_historical_limit_returns_the_earliest_candles(loaded):
    body = loaded.get("/api/v1/historical/AAPL?start=2025-10-01&end=2025-10-31&limit=3").get_json()
    assert [d["time"] for d in body["data"]] == ["2025-10-01", "2025-10-02", "2025-10-03"]


def test_historical_streams_large_ranges_and_counts_them(loaded, runtime, monkeypatch):
    monkeypatch.setattr(api_mod, "FIRST_CHUNK", 100)
    monkeypatch.setattr(api_mod, "STREAM_CHUNK", 64)
    r = loaded.get("/api/v1/historical/AAPL?start=2024-01-01&end=2030-01-01")
    body = r.get_json()
    n = len(_stored(runtime, "AAPL", dt.date(2024, 1, 1), dt.date(2030, 1, 1)))
    assert n > 500
    assert body["count"] == len(body["data"]) == n
    raw = r.get_data(as_text=True)
    assert raw.index('"data"') < raw.index('"count"')  # streamed: the count comes last
    csv = loaded.get("/api/v1/historical/AAPL?start=2024-01-01&end=2030-01-01&format=csv")
    assert len(csv.get_data(as_text=True).strip().splitlines()) == n + 1
    # the streamed requests give their connections back once closed: every
    # connection of the pool is free again
    r.close()
    csv.close()

    def all_back() -> bool:
        st = runtime.pool.get_stats()
        return st.get("pool_available", 0) == st.get("pool_size", -1) >= 1
    wait_until(all_back, 10, "the streamed requests' connections back in the pool")


def test_historical_csv_reads_with_pandas_over_http_with_the_same_values(loaded, app):
    import pandas as pd
    with served(app) as base:
        q = "/api/v1/historical/AAPL?start=2025-01-01&end=2025-12-31&include_invalid=true"
        df = pd.read_csv(base + q + "&format=csv")
        with urllib.request.urlopen(base + q) as resp:
            js = json.loads(resp.read())
    assert list(df.columns) == FIELDS
    assert len(df) == js["count"] > 200
    for i, row in enumerate(js["data"]):
        assert df["time"][i] == row["time"]
        for k in ("open", "high", "low", "close", "volume"):
            assert df[k][i] == row[k]
        assert bool(df["validated"][i]) == row["validated"]
        assert bool(df["gap_detected"][i]) == row["gap_detected"]
    assert df["validated"].dtype == bool


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("query,code", [
    ("?start=2025-13-01", "bad_date"),
    ("?start=yesterday", "bad_date"),
    ("?end=2025-02-30", "bad_date"),
    ("?start=2025-10-31&end=2025-10-01", "bad_range"),
    ("?format=xml", "bad_format"),
    ("?adjusted=maybe", "bad_boolean"),
    ("?limit=0", "out_of_range"),
    ("?limit=ten", "bad_integer"),
    ("?colour=blue", "unknown_field"),
])
def test_historical_rejects_bad_input_with_a_400(loaded, query, code):
    r = loaded.get("/api/v1/historical/AAPL" + query)
    assert r.status_code == 400
    assert r.get_json()["error"]["code"] == code


def test_unknown_symbol_is_404(loaded):
    r = loaded.get("/api/v1/historical/ZZZZ")
    assert r.status_code == 404
    assert r.get_json()["error"]["code"] == "unknown_symbol"


@pytest.mark.parametrize("symbol", ["..%2F..%2Fetc%2Fpasswd", "%27%3B%20DROP%20TABLE%20market_data%3B--",
                                    "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "aapl",
                                    "A" * 40, "%00"])
def test_hostile_symbols_are_rejected_before_any_query(loaded, runtime, symbol):
    r = loaded.get(f"/api/v1/historical/{symbol}")
    assert r.status_code == 400
    assert r.get_json()["error"]["code"] == "bad_symbol"
    assert "<script>" not in r.get_data(as_text=True)  # never echoed as markup
    with runtime.conn() as conn:
        assert conn.execute("SELECT count(*) FROM market_data").fetchone()[0] > 0


def test_errors_are_json_for_unknown_paths_and_methods(loaded):
    r = loaded.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = loaded.open("DELETE", "/api/v1/symbols")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "method_not_allowed"
    assert "GET" in r.headers["Allow"]


def test_a_10_mb_body_is_refused_with_a_json_413(loaded, admin_headers):
    big = b"x" * (10 * 1024 * 1024)
    for path in ("/api/v1/backfill", "/api/v1/config/reload"):
        r = loaded.post(path, data=big, headers={**admin_headers,
                                                "Content-Type": "application/json"})
        assert r.status_code == 413
        assert r.get_json()["error"]["code"] == "payload_too_large"
    r = loaded.post("/api/v1/backfill", data=big)  # refused before authentication
    assert r.status_code == 413


def test_a_10_mb_body_over_real_http_gets_a_json_413(loaded, app, admin_headers):
    with served(app) as base:
        req = urllib.request.Request(base + "/api/v1/backfill", data=b"{" + b" " * 10_000_000,
                                     headers={**admin_headers,
                                              "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 413
        assert json.loads(e.value.read())["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("path,query,code", [
    ("/api/v1/gaps", "?kind=hole", "bad_kind"),
    ("/api/v1/gaps", "?since=2025-01-02&until=2025-01-01", "bad_range"),
    ("/api/v1/gaps", "?symbol=%3Cscript%3E", "bad_symbol"),
    ("/api/v1/jobs", "?job=rm", "bad_job"),
    ("/api/v1/jobs", "?limit=-1", "out_of_range"),
    ("/api/v1/alerts", "?status=closed", "bad_status"),
    ("/api/v1/status", "?verbose=1", "unknown_field"),
    ("/api/v1/backups", "?limit=1e3", "bad_integer"),
])
def test_read_endpoints_reject_bad_parameters(loaded, path, query, code):
    r = loaded.get(path + query)
    assert r.status_code == 400
    assert r.get_json()["error"]["code"] == code


# --------------------------------------------------------------------------- admin

ADMIN_CALLS = [("POST", "/api/v1/backfill"), ("POST", "/api/v1/config/reload"),
               ("POST", "/api/v1/backups"), ("POST", "/api/v1/backups/1/restore-test"),
               ("POST", "/api/v1/jobs/spot_check/run")]


@pytest.mark.parametrize("method,path", ADMIN_CALLS)
def test_admin_endpoints_refuse_a_missing_or_wrong_token(api, method, path):
    r = api.open(method, path)
    assert r.status_code == 401
    r = api.open(method, path, headers={"Authorization": "Bearer wrong-token"})
    assert r.status_code == 401
    r = api.open(method, path, headers={"Authorization": "Basic dGVzdC1hZG1pbi10b2tlbg=="})
    assert r.status_code == 401


def test_admin_endpoints_are_disabled_without_a_configured_token(config_factory):
    app = _app_for(config_factory(server={"admin_token": ""}))
    try:
        c = SpecClient(app.test_client())
        for method, path in ADMIN_CALLS:
            r = c.open(method, path, headers={"Authorization": "Bearer anything"})
            assert r.status_code == 403
            msg = r.get_json()["error"]["message"]
            assert "server.admin_token" in msg and "appliance.yaml" in msg
    finally:
        app.config["RUNTIME"].close()


def test_backfill_is_queued_and_its_progress_can_be_polled(api, runtime, admin_headers):
    r = api.post("/api/v1/backfill", json={"symbols": ["AAPL"], "start": "2025-01-02",
                                           "end": "2025-01-31"}, headers=admin_headers)
    assert r.status_code == 202
    body = r.get_json()
    assert body["status"] == "queued" and body["url"] == f"/api/v1/jobs/{body['job_id']}"
    job = api.get(body["url"], headers=admin_headers).get_json()
    assert job["job"] == "backfill" and job["status"] == "queued"
    assert job["params"] == {"symbols": ["AAPL"], "start": "2025-01-02", "end": "2025-01-31"}
    # the worker's side: run the queued job by id, then poll again
    from rq import Queue

    from appliance.jobs.entry import run_job  # noqa: F401 - the queued callable exists
    q = Queue("appliance", connection=runtime.redis)
    assert len(q) == 1
    listed = api.get("/api/v1/jobs?job=backfill").get_json()
    assert listed["jobs"][0]["id"] == body["job_id"]


@pytest.mark.parametrize("payload,status,code", [
    ({"symbols": ["NOPE"]}, 422, "not_configured"),
    ({"symbols": ["bad symbol"]}, 400, "bad_symbol"),
    ({"symbols": "AAPL"}, 400, "bad_symbols"),
    ({"symbols": []}, 400, "bad_symbols"),
    ({"start": "2025-02-01", "end": "2025-01-01"}, 400, "bad_range"),
    ({"start": 20250101}, 400, "bad_date"),
    ({"start": None}, 400, "bad_date"),
    ({"symbols": None}, 400, "bad_symbols"),
    ({"since": "2025-01-01"}, 400, "unknown_field"),
    ([1, 2], 400, "bad_json"),
])
def test_backfill_rejects_bad_bodies(api, admin_headers, payload, status, code):
    r = api.post("/api/v1/backfill", json=payload, headers=admin_headers)
    assert r.status_code == status
    assert r.get_json()["error"]["code"] == code


def test_backfill_rejects_a_body_that_is_not_json(api, admin_headers):
    r = api.post("/api/v1/backfill", data="symbols=AAPL", headers=admin_headers)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_json"


def test_config_reload_applies_a_valid_file_and_refuses_an_invalid_one(api, config_path,
                                                                       admin_headers):
    text = config_path.read_text()
    config_path.write_text(text.replace("- MSFT", "- MSFT\n- NEWSTOCK"))
    r = api.post("/api/v1/config/reload", headers=admin_headers)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["ok"] is True and "NEWSTOCK" in body["diff"]["symbols_added"]
    assert body["backfill_job_id"] is not None
    assert "NEWSTOCK" in api.get("/api/v1/symbols").get_data(as_text=True)
    config_path.write_text(text.replace("calendar: XNYS", "calendar: 12"))
    r = api.post("/api/v1/config/reload", headers=admin_headers)
    assert r.status_code == 422
    err = r.get_json()["error"]
    assert err["code"] == "config_invalid" and err["errors"]
    cfg = api.get("/api/v1/config").get_json()
    assert cfg["sha256"] == body["sha256"]  # the running config stayed
    assert cfg["last_reload"]["ok"] is False


def test_config_shows_the_running_config_with_secrets_masked(api):
    r = api.get("/api/v1/config")
    text = r.get_data(as_text=True)
    assert r.status_code == 200
    assert "test-admin-token-0123456789" not in text and "test-secret" not in text
    assert r.get_json()["config"]["server"]["admin_token"] == "********"


def test_restore_test_needs_an_existing_good_backup(api, runtime, admin_headers):
    r = api.post("/api/v1/backups/999/restore-test", headers=admin_headers)
    assert r.status_code == 404
    with runtime.conn() as conn:
        ok_id = _insert_backup(conn, "ok.dump", "ok")
        bad_id = _insert_backup(conn, "bad.dump", "failed")
    r = api.post(f"/api/v1/backups/{bad_id}/restore-test", headers=admin_headers)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "backup_unusable"
    r = api.post(f"/api/v1/backups/{ok_id}/restore-test", headers=admin_headers)
    assert r.status_code == 202
    job = api.get(r.get_json()["url"], headers=admin_headers).get_json()
    assert job["job"] == "restore_test" and job["params"] == {"backup": str(ok_id)}
    r = api.post("/api/v1/backups", headers=admin_headers)
    assert r.status_code == 202
    listed = api.get("/api/v1/backups").get_json()
    assert {b["filename"] for b in listed["backups"]} >= {"ok.dump"}


def _insert_backup(conn, name, status, restore=None):
    return conn.execute(
        """INSERT INTO backups (filename, path, size_bytes, sha256, status, restore_test_status,
                                restore_test_at, restore_test_seconds)
           VALUES (%s, %s, 12345, 'abc', %s, %s, CASE WHEN %s::text IS NULL THEN NULL
                   ELSE now() END, CASE WHEN %s::text IS NULL THEN NULL ELSE 1.5 END)
           RETURNING id""", (name, "/b/" + name, status, restore, restore, restore)).fetchone()[0]


def test_read_token_protects_reads_but_not_health(config_factory):
    app = _app_for(config_factory(server={"read_token": "reader-token-0123456789abcdef"}))
    try:
        c = SpecClient(app.test_client())
        assert c.get("/api/v1/symbols").status_code == 401
        assert c.get("/api/v1/symbols", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/api/v1/symbols",
                     headers={"Authorization": "Bearer reader-token-0123456789abcdef"}).status_code == 200
        assert c.get("/api/v1/symbols",
                     headers={"Authorization": "Bearer test-admin-token-0123456789"}).status_code == 200
        assert c.get("/health").status_code == 200
        # the URL every POST answers with is a read endpoint, as the README says
        assert c.get("/api/v1/jobs/1").status_code == 401
        assert c.get("/api/v1/jobs/1",
                     headers={"Authorization": "Bearer reader-token-0123456789abcdef"}).status_code == 404
    finally:
        app.config["RUNTIME"].close()


def test_every_scheduled_job_can_be_queued_now_and_followed_with_a_read(api, runtime):
    for name in runtime.config["schedules"]:
        r = api.post(f"/api/v1/jobs/{name}/run",
                     headers={"Authorization": "Bearer test-admin-token-0123456789"})
        assert r.status_code == 202, (name, r.get_json())
        run = api.get(r.get_json()["url"]).get_json()
        assert run["job"] == name and run["status"] in ("queued", "running", "ok", "failed")
    r = api.post("/api/v1/jobs/nope/run", headers={"Authorization": "Bearer test-admin-token-0123456789"})
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "unknown_job"


# --------------------------------------------------------------------------- gaps, alerts, jobs

def test_gaps_lists_flagged_candles_and_missing_sessions(loaded, runtime):
    with runtime.conn() as conn:
        conn.execute("""UPDATE market_data SET gap_detected = true, gap_kind = 'jump', gap_pct = 25
                        WHERE symbol = 'AAPL' AND ts = (SELECT min(ts) FROM market_data
                                                        WHERE symbol = 'AAPL')""")
        conn.execute("INSERT INTO missing_sessions (symbol, session) VALUES ('MSFT', '2025-03-03')")
    body = loaded.get("/api/v1/gaps").get_json()
    kinds = {(g["symbol"], g["kind"]) for g in body["gaps"]}
    assert kinds == {("AAPL", "jump"), ("MSFT", "missing")}
    jump = [g for g in body["gaps"] if g["kind"] == "jump"][0]
    assert jump["jump_pct"] == 25 and jump["split_ratio"] is None
    only = loaded.get("/api/v1/gaps?kind=missing&since=2025-03-01&until=2025-03-31").get_json()
    assert [(g["symbol"], g["session"]) for g in only["gaps"]] == [("MSFT", "2025-03-03")]
    assert loaded.get("/api/v1/gaps?symbol=ZZZZ").status_code == 404


def test_alerts_lists_open_and_resolved(loaded, runtime):
    with runtime.conn() as conn:
        conn.execute("""INSERT INTO alerts (key, severity, status, message, opened_at, details)
                        VALUES ('backup_age', 'warning', 'open', 'no backup for 9 days', now(),
                                '{"days": 9}'),
                               ('disk', 'critical', 'resolved', 'disk low', now(), '{}')""")
        conn.execute("UPDATE alerts SET resolved_at = now() WHERE key = 'disk'")
    open_ = loaded.get("/api/v1/alerts").get_json()
    assert [a["key"] for a in open_["alerts"]] == ["backup_age"]
    assert open_["alerts"][0]["details"] == {"days": 9}
    assert loaded.get("/api/v1/alerts?status=all").get_json()["count"] == 2
    st = loaded.get("/api/v1/status").get_json()
    assert [a["key"] for a in st["alerts"]] == ["backup_age"]
    # a firing rule waiting for its `for` duration: listed as pending, and by all
    with runtime.conn() as conn:
        conn.execute("""INSERT INTO alerts (key, severity, status, message, details)
                        VALUES ('worker_down', 'critical', 'pending', 'no worker', '{}')""")
    pending = loaded.get("/api/v1/alerts?status=pending").get_json()
    assert [(a["key"], a["status"]) for a in pending["alerts"]] == [("worker_down", "pending")]
    assert loaded.get("/api/v1/alerts?status=all").get_json()["count"] == 3
    assert [a["key"] for a in loaded.get("/api/v1/alerts").get_json()["alerts"]] == ["backup_age"]
    bad = loaded.get("/api/v1/alerts?status=firing")
    assert bad.status_code == 400
    assert "open, pending, resolved or all" in bad.get_json()["error"]["message"]


def test_unknown_job_run_is_404(api, admin_headers):
    r = api.get("/api/v1/jobs/424242", headers=admin_headers)
    assert r.status_code == 404
    r = api.get("/api/v1/jobs/99999999999999999999999", headers=admin_headers)
    assert r.status_code == 404


# --------------------------------------------------------------------------- metrics, openapi

def test_metrics_is_prometheus_text_with_every_family(loaded, runtime, admin_headers):
    from prometheus_client.parser import text_string_to_metric_families
    with runtime.conn() as conn:
        _insert_backup(conn, "m.dump", "ok", restore="passed")
        conn.execute("""INSERT INTO vendor_requests (provider, kind, label, count)
                        VALUES ('polygon', 'request', '200', 7), ('polygon', 'retry', '429', 2),
                               ('polygon', 'error', '500', 1)""")
        conn.execute("""INSERT INTO config_reloads (source, ok) VALUES ('cli', true)""")
    loaded.get("/api/v1/historical/AAPL")
    r = loaded.get("/metrics")
    assert r.status_code == 200 and r.content_type.startswith("text/plain")
    assert r.headers["Content-Type"].count("charset") == 1, r.headers["Content-Type"]
    fams = {f.name: f for f in text_string_to_metric_families(r.get_data(as_text=True))}
    want = ["appliance_records", "appliance_validated_records", "appliance_symbols",
            "appliance_validation_rate_pct", "appliance_latest_data_age_sessions",
            "appliance_gaps_flagged", "appliance_missing_sessions", "appliance_vendor_requests",
            "appliance_job_runs", "appliance_job_run_duration_seconds",
            "appliance_backup_age_seconds", "appliance_backup_size_bytes",
            "appliance_restore_test_passed", "appliance_config_last_reload_successful",
            "appliance_http_request_duration_seconds", "appliance_up",
            "appliance_job_last_run_duration_seconds", "appliance_restore_test_timestamp_seconds"]
    assert not [w for w in want if w not in fams], sorted(fams)

    def value(name, **labels):
        for s in fams[name].samples:
            if all(s.labels.get(k) == v for k, v in labels.items()) and \
                    not s.name.endswith(("_created",)):
                return s.value
        raise AssertionError(f"{name}{labels} not found")

    status = loaded.get("/api/v1/status").get_json()["database"]
    assert value("appliance_records") == status["total_records"]
    assert value("appliance_symbols") == 2
    assert value("appliance_vendor_requests", provider="polygon", kind="retry", status="429") == 2
    assert value("appliance_job_runs", job="backfill", status="ok") == 1
    assert value("appliance_backup_size_bytes") == 12345
    assert value("appliance_restore_test_passed") == 1
    assert value("appliance_config_last_reload_successful") == 1
    hist = [s for s in fams["appliance_http_request_duration_seconds"].samples
            if s.name.endswith("_count") and s.labels["endpoint"] == "api.historical"]
    assert hist and hist[0].value >= 1


def test_openapi_document_describes_every_route_and_is_served(api, app):
    r = api.get("/api/v1/openapi.json")
    doc = r.get_json()
    assert doc["openapi"].startswith("3.1")
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(("/api/", "/health", "/metrics")):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule).replace("{run_id}", "{id}") \
                .replace("{backup_id}", "{id}")
            for m in rule.methods - {"HEAD", "OPTIONS"}:
                routes.add((path, m.lower()))
    described = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert routes == described
    jsonschema.Draft202012Validator.check_schema(
        {**doc["components"]["schemas"]["Status"], "components": doc["components"]})
