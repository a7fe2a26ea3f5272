"""``GET /metrics`` in Prometheus text format.

Gauges about the store, jobs, backups and config are read from PostgreSQL at
scrape time (from the running aggregates, so a scrape is cheap); the HTTP
latency histogram is kept per gunicorn worker in prometheus-client's
multiprocess directory when ``PROMETHEUS_MULTIPROC_DIR`` is set.
"""
from __future__ import annotations

import datetime as dt
import os
import time

from flask import Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from appliance import store
from appliance.alerts import health as health_mod
from appliance.runtime.replica import READS
from appliance.web.auth import auth_counts, key_stats

HTTP_LATENCY = Histogram("appliance_http_request_duration_seconds",
                         "HTTP request latency by method, endpoint (the route's view, "
                         "'unmatched' when no route matched) and status class",
                         ["method", "endpoint", "status"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

# Label values come from closed sets only: any client can send any method,
# path or status-provoking request, and each new label value is a new series
# kept (and written to the multiprocess folder) until restart.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def http_labels(method: str, endpoint: str | None, status: int) -> tuple[str, str, str]:
    """(method or 'other', the view's endpoint or 'unmatched', '2xx'..'5xx')."""
    klass = status // 100
    return (method if method in METHODS else "other",
            endpoint or "unmatched",
            f"{klass}xx" if 1 <= klass <= 5 else "other")


class StoreCollector:
    def __init__(self, rt):
        self.rt = rt

    def collect(self):
        rt = self.rt
        h = health_mod.compute(rt)
        snap = h.db
        up = GaugeMetricFamily("appliance_up", "1 when the component answers", labels=["component"])
        up.add_metric(["database"], 1 if h.database == "ok" else 0)
        up.add_metric(["redis"], 1 if h.redis == "ok" else 0)
        up.add_metric(["scheduler"], 1 if h.scheduler_running else 0)
        up.add_metric(["worker"], 1 if h.worker_alive else 0)
        yield up
        hs = GaugeMetricFamily("appliance_health_status", "0 healthy, 1 degraded, 2 unhealthy")
        hs.add_metric([], health_mod.status_number(h.status))
        yield hs
        cfg_ok = GaugeMetricFamily("appliance_config_last_reload_successful",
                                   "1 when the last config reload succeeded")
        cfg_ok.add_metric([], 1 if h.config_last_reload_successful else 0)
        yield cfg_ok
        yield from _replica(h.replica)
        if snap["status"] != "ok":
            return
        for name, key, doc in (
                ("appliance_records", "total_records", "candles stored"),
                ("appliance_validated_records", "validated_records", "candles that passed validation"),
                ("appliance_symbols", "symbols_available", "symbols with stored data"),
                ("appliance_validation_rate_pct", "validation_rate_pct", "validated / total, %"),
                ("appliance_gaps_flagged", "gaps_flagged", "candles flagged split or jump"),
                ("appliance_missing_sessions", "missing_sessions", "expected sessions with no candle"),
                ("appliance_database_size_bytes", "size_bytes", "size of the database")):
            m = GaugeMetricFamily(name, doc)
            m.add_metric([], float(snap[key] or 0))
            yield m
        behind = h.latest_data_sessions_behind
        m = GaugeMetricFamily("appliance_latest_data_age_sessions",
                              "trading sessions between the latest stored and the latest completed")
        m.add_metric([], float(behind) if behind is not None else float("nan"))
        yield m
        try:
            with rt.pool.connection(timeout=1) as conn:
                rows = {"vendor": store.vendor_counts(conn), "jobs": store.job_run_stats(conn),
                        "backup": store.latest_backup(conn),
                        "restore_test": store.last_restore_test(conn),
                        "alerts": store.open_alerts(conn)}
        except Exception:  # noqa: BLE001
            return
        yield from _vendor_and_jobs(rows["vendor"], rows["jobs"], snap)
        yield from _backups_and_alerts(rows["backup"], rows["restore_test"], rows["alerts"])


def _replica(r: dict):
    """The read replica: up, its replay lag (absent when off or unknown)."""
    up = GaugeMetricFamily("appliance_replica_up",
                           "1 when the read replica answers (ok or lagging), 0 when it is down "
                           "or refused (not a standby of this primary); "
                           "absent when none is configured")
    lag = GaugeMetricFamily("appliance_replica_lag_seconds",
                            "replay lag of the read replica (0 when it has replayed everything "
                            "it received)")
    if r.get("configured"):
        up.add_metric([], 0 if r.get("state") in ("down", "refused") else 1)
        if r.get("lag_seconds") is not None:
            lag.add_metric([], float(r["lag_seconds"]))
    yield up
    yield lag


def _vendor_and_jobs(vendor, job_stats, snap: dict):
    """Vendor request counters, job runs and durations, last success per job."""
    req = CounterMetricFamily("appliance_vendor_requests",
                              "vendor HTTP requests by kind (request, retry, error) and "
                              "HTTP status or failure", labels=["provider", "kind", "status"])
    for prov, kind, label, n in vendor:
        req.add_metric([prov, kind, label], n)
    yield req
    runs = CounterMetricFamily("appliance_job_runs", "job runs by status",
                               labels=["job", "status"])
    dur = CounterMetricFamily("appliance_job_run_duration_seconds",
                              "total seconds spent in job runs", labels=["job", "status"])
    for job, st, n, secs in job_stats:
        runs.add_metric([job, st], n)
        dur.add_metric([job, st], float(secs))
    yield runs
    yield dur
    last_dur = GaugeMetricFamily("appliance_job_last_run_duration_seconds",
                                 "duration of the latest finished run of each job",
                                 labels=["job", "status"])
    last_ok = GaugeMetricFamily("appliance_job_last_success_timestamp_seconds",
                                "when the latest successful run of each job finished",
                                labels=["job"])
    for job, lr in (snap.get("last_runs") or {}).items():
        r = lr.get("last")
        if r and r.get("started_at") and r.get("finished_at"):
            last_dur.add_metric([job, r["status"]],
                                (r["finished_at"] - r["started_at"]).total_seconds())
        ok = lr.get("last_success")
        if ok and ok.get("finished_at"):
            last_ok.add_metric([job], ok["finished_at"].timestamp())
    yield last_dur
    yield last_ok


def _backups_and_alerts(lb, lrt, alerts):
    """The latest good backup, the latest restore test, the open alerts."""
    age = GaugeMetricFamily("appliance_backup_age_seconds", "age of the latest good backup")
    size = GaugeMetricFamily("appliance_backup_size_bytes", "size of the latest good backup")
    if lb:
        age.add_metric([], (dt.datetime.now(dt.UTC) - lb["created_at"]).total_seconds())
        size.add_metric([], float(lb["size_bytes"] or 0))
    yield age
    yield size
    rtst = GaugeMetricFamily("appliance_restore_test_passed",
                             "1 when the latest restore test passed, 0 when it failed")
    rtts = GaugeMetricFamily("appliance_restore_test_timestamp_seconds",
                             "when the latest restore test ran")
    if lrt:
        rtst.add_metric([], 1 if lrt["status"] == "passed" else 0)
        if lrt.get("at"):
            rtts.add_metric([], lrt["at"].timestamp())
    yield rtst
    yield rtts
    al = GaugeMetricFamily("appliance_alerts_open", "open alerts", labels=["severity", "key"])
    for a in alerts:
        al.add_metric([a["severity"], a["key"]], 1)
    yield al


def register(app) -> None:

    @app.before_request
    def _start():
        g._t0 = time.perf_counter()  # noqa: SLF001

    @app.after_request
    def _observe(resp):
        t0 = getattr(g, "_t0", None)
        if t0 is not None and request.endpoint != "static":
            HTTP_LATENCY.labels(*http_labels(request.method, request.endpoint, resp.status_code)
                                ).observe(time.perf_counter() - t0)
        return resp

    @app.get("/metrics")
    def metrics():
        registry = CollectorRegistry()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.MultiProcessCollector(registry)
        else:
            registry.register(_LocalHistograms())
        registry.register(StoreCollector(current_app.config["RUNTIME"]))
        registry.register(AuthCollector(current_app.config["RUNTIME"]))
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)  # as is


class AuthCollector:
    """Authentication failures and lockouts, and each API key's use (labelled by
    the key's name, never the key), from the counters in Redis."""

    def __init__(self, rt):
        self.rt = rt

    def collect(self):
        counts = auth_counts(self.rt)
        fail = CounterMetricFamily("appliance_auth_failures",
                                   "failed console logins and wrong Bearer tokens",
                                   labels=["kind"])
        for kind in ("login", "api"):
            fail.add_metric([kind], counts.get(f"failures:{kind}", 0))
        yield fail
        lock = CounterMetricFamily("appliance_auth_lockouts",
                                   "client addresses locked out after too many failures")
        lock.add_metric([], counts.get("lockouts", 0))
        yield lock
        refused = CounterMetricFamily("appliance_auth_locked_refusals",
                                      "attempts refused because the address was locked out",
                                      labels=["kind"])
        for kind in ("login", "api"):
            refused.add_metric([kind], counts.get(f"locked_refusals:{kind}", 0))
        yield refused
        stats = key_stats(self.rt)
        req = CounterMetricFamily("appliance_api_key_requests", "requests made with each API key",
                                  labels=["key"])
        rl = CounterMetricFamily("appliance_api_key_rate_limited",
                                 "requests refused by each API key's requests_per_minute",
                                 labels=["key"])
        last = GaugeMetricFamily("appliance_api_key_last_used_timestamp_seconds",
                                 "when each API key was last used", labels=["key"])
        for name, st in stats.items():
            req.add_metric([name], st["requests"])
            rl.add_metric([name], st["rate_limited"])
            if st["last_used"]:
                last.add_metric([name], st["last_used"])
        yield req
        yield rl
        yield last


class _LocalHistograms:
    def collect(self):
        yield from HTTP_LATENCY.collect()
        yield from READS.collect()
