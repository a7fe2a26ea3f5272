"""The OpenAPI 3.1 description of the REST API (served at /api/v1/openapi.json).

It describes every endpoint and every response body exactly: objects the
appliance controls are closed (``additionalProperties: false``); only
free-form payloads (job params/progress/results, alert details, the config
itself, a reload diff) are open. The test suite validates every response it
receives against this document, and schemathesis generates requests from it.
"""
from __future__ import annotations

import copy
from functools import lru_cache

from appliance import __version__ as APP_VERSION
from appliance.config.loader import SYMBOL_RE
from appliance.core import quality, timeframes
from appliance.jobs.registry import JOB_NAMES
from appliance.web import openapi_columnar, openapi_dividends

SYMBOL_PATTERN = SYMBOL_RE.pattern
DATE_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


# --------------------------------------------------------------------------- helpers

def _n(schema: dict) -> dict:
    """``schema`` or null."""
    s = dict(schema)
    if "$ref" in s:
        return {"oneOf": [s, {"type": "null"}]}
    t = s.get("type")
    if isinstance(t, str):
        s["type"] = [t, "null"]
    elif isinstance(t, list) and "null" not in t:
        s["type"] = t + ["null"]
    if "enum" in s and None not in s["enum"]:
        s["enum"] = s["enum"] + [None]
    return s


def _obj(props: dict, required: list[str] | None = None, *, closed: bool = True,
         description: str | None = None) -> dict:
    o = {"type": "object", "properties": props,
         "required": list(props) if required is None else required,
         "additionalProperties": not closed}
    if description:
        o["description"] = description
    return o


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
DATE = {"type": "string", "format": "date"}
DATETIME = {"type": "string", "format": "date-time"}
FREE = {"type": "object", "additionalProperties": True}


_RESTART = {"type": ["object", "null"], "description":
            "Restart-only keys a reload changed, whose old value stays in force until the "
            "appliance restarts (null: none).",
            "properties": {"keys": {"type": "array", "items": STR},
                           "since": {"type": ["string", "null"], "format": "date-time"}},
            "required": ["keys", "since"], "additionalProperties": False}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict:
    return {"$ref": f"#/components/responses/{description}"}


ERROR_RESPONSES = {
    "400": ("BadRequest", "Bad input: a malformed or out-of-range parameter, an unknown query "
                          "parameter or body field, start after end, an invalid symbol."),
    "401": ("Unauthorized", "Missing or wrong bearer token."),
    "403": ("AdminDisabled", "Admin endpoints are disabled: no server.admin_token is configured."),
    "404": ("NotFound", "No such symbol, job run, backup or path."),
    "405": ("MethodNotAllowed", "The path exists but not with this method."),
    "409": ("Conflict", "The request conflicts with the current state."),
    "429": ("TooManyRequests", "Too many failed logins or wrong tokens from this address "
                               "(locked out for server.auth_lockout_seconds), or the API key's "
                               "requests_per_minute is used up; see Retry-After."),
    "413": ("PayloadTooLarge", "The request body is larger than server.max_request_bytes."),
    "422": ("Unprocessable", "Well-formed but not acceptable (invalid config, unconfigured "
                             "symbols)."),
    "503": ("Unavailable", "PostgreSQL or Redis is unreachable (or a query timed out)."),
    "504": ("NotConfirmed", "A running process of the appliance did not answer in time."),
}


def _errors(*codes: str) -> dict:
    return {c: _err(ERROR_RESPONSES[c][0]) for c in codes}


# --------------------------------------------------------------------------- schemas

def _brief_schemas() -> dict:
    """The small objects status and the lists share."""
    run_brief = _obj({
        "id": INT, "status": STR, "trigger": _n(STR), "started_at": _n(DATETIME),
        "finished_at": _n(DATETIME), "duration_s": _n(NUM), "rows": _n(INT), "error": _n(STR)},
        description="A job run in brief.")
    backup_brief = _obj({
        "id": INT, "filename": STR, "created_at": DATETIME, "size_bytes": _n(INT),
        "sha256": _n(STR), "status": STR, "restore_test_status": _n(STR),
        "restore_test_at": _n(DATETIME)})
    restore_test = _obj({"backup_id": INT, "filename": STR, "status": _n(STR),
                         "at": _n(DATETIME), "seconds": _n(NUM)})
    config_reload = _obj({
        "id": INT, "ts": DATETIME, "source": STR, "actor": _n(STR), "sha256": _n(STR),
        "ok": BOOL, "error": _n(STR), "diff": FREE},
        required=["id", "ts", "source", "actor", "sha256", "ok", "error"])
    alert = _obj({
        "id": INT, "key": STR, "severity": {"type": "string", "enum": ["warning", "critical"]},
        "status": STR, "message": STR, "details": FREE, "opened_at": _n(DATETIME),
        "resolved_at": _n(DATETIME), "acknowledged_at": _n(DATETIME),
        "acknowledged_by": _n(STR)},
        required=["id", "key", "severity", "status", "message", "details", "opened_at",
                  "acknowledged_at", "acknowledged_by"])
    return {"RunBrief": run_brief, "BackupBrief": backup_brief, "RestoreTest": restore_test,
            "ConfigReload": config_reload, "Alert": alert}


def _replica_schema() -> dict:
    """/health's ``replica`` object."""
    return _obj({
        "configured": {**BOOL, "description": "database.read_url is set"},
        "state": {"type": "string", "enum": ["ok", "lagging", "down", "refused", "off"],
                  "description": "off: no replica configured; lagging: its replay lag is "
                                 "above database.max_replica_lag_seconds; down: it does "
                                 "not answer; refused: it is not a standby of this "
                                 "primary (not in recovery, another system identifier, "
                                 "or the migrations missing). Lagging, down or refused "
                                 "makes the status degraded."},
        "reason": {**STR, "description": "why the replica is down or refused"},
        "lag_seconds": _n({"type": "number", "minimum": 0}),
        "serving_reads": {**BOOL, "description": "API and console reads go to the replica "
                                                 "(else to the primary)"}},
        ["configured", "state", "lag_seconds", "serving_reads"],
        description="The streaming replica that serves reads (database.read_url).")


_FLAT_FILES = _n({"type": "object", "description": "The vendor's flat files ingested, per "
                   "dataset (1d, 1m): the newest day stored, when, how many; null when off.",
                   "additionalProperties": _obj({"newest_day": DATE, "ingested_at": DATETIME,
                                                 "files": INT, "bars": INT})})


def _status_schemas() -> dict:
    """Health, status and the pieces they are made of."""
    health = _obj({
        "status": {"type": "string", "enum": ["healthy", "degraded", "unhealthy"]},
        "severity": {"type": "string", "enum": ["ok", "warning", "critical"],
                     "description": "How urgent what is wrong is: critical for an unreachable "
                                    "database, a stopped scheduler, a critical validation rate "
                                    "or an open critical alert."},
        "timestamp": DATETIME,
        "scheduler_running": BOOL,
        "worker_alive": BOOL,
        "latest_data": _n(DATE),
        "latest_data_sessions_behind": _n(INT),
        "validation_rate_pct": _n({"type": "number", "minimum": 0, "maximum": 100}),
        "database": {"type": "string", "enum": ["ok", "error"]},
        "redis": {"type": "string", "enum": ["ok", "error"]},
        "config_last_reload_successful": BOOL, "config_sha256": STR, "restart_required": _RESTART,
        "provider": STR,
        "processes": _n({"type": "object", "description":
                         "Under `appliance up`: each supervised process (serve, worker, "
                         "scheduler) with its state; null when not supervised by `up`.",
                         "additionalProperties": _obj({
                             "state": {"type": "string", "enum": ["running", "restarting"]},
                             "pid": _n(INT), "restarts": INT, "last_exit_code": _n(INT),
                             "last_error": {"type": "array", "items": STR}})}),
        "replica": _replica_schema(),
        "flat_files": _FLAT_FILES,
        "reasons": {"type": "array", "items": STR}})
    database = _obj({
        "status": {"type": "string", "enum": ["ok", "error"]},
        "error": STR,
        "symbols_available": INT, "total_records": INT, "validated_records": INT,
        "validation_rate_pct": {"type": "number", "minimum": 0, "maximum": 100},
        "latest_data": _n(DATE), "gaps_flagged": INT, "gaps_flagged_pct": NUM,
        "missing_sessions": INT, "size_bytes": INT, "stats_updated_at": _n(DATETIME),
        "latest_data_sessions_behind": _n(INT)},
        required=["status"],
        description="With status ok every counter is present; with status error only "
                    "status and error are (never zeros that look healthy).")
    job_schedule = _obj({
        "schedule": STR, "next_run": _n(DATETIME), "last_run": _n(_ref("RunBrief")),
        "last_success": _n(_ref("RunBrief")), "last_failure": _n(_ref("RunBrief"))})
    status = _obj({
        "api_version": STR,
        "status": {"type": "string", "enum": ["healthy", "degraded", "unhealthy"]},
        "severity": {"type": "string", "enum": ["ok", "warning", "critical"]},
        "timestamp": DATETIME,
        "reasons": {"type": "array", "items": STR},
        "provider": STR,
        "database": _ref("DatabaseStatus"),
        "data_quality": _obj({
            "records_with_gaps_flagged": _n(INT),
            "validation_rate_pct": _n(NUM),
            "scheduler_status": {"type": "string", "enum": ["running", "stopped"]},
            "last_backfill": _n(_ref("RunBrief"))}),
        "scheduler": _obj({
            "running": BOOL, "heartbeat_age_s": _n(NUM), "worker_alive": BOOL,
            "jobs": {"type": "object", "additionalProperties": _ref("JobSchedule")}}),
        "backups": _obj({
            "latest": _n(_ref("BackupBrief")), "age_hours": _n(NUM),
            "last_restore_test": _n(_ref("RestoreTest")), "drive_error": _n(STR)}, required=[],
            description="drive_error: the backup drive is not mounted (null: it is)."),
        "alerts": {"type": "array", "items": _ref("Alert")},
        "flat_files": _FLAT_FILES,
        "config": _obj({
            "sha256": STR, "path": STR, "version": INT,
            "last_reload": _n(_ref("ConfigReload")),
            "last_reload_successful": BOOL, "restart_required": _RESTART})})
    return {
        "Health": health, **_brief_schemas(),
        "DatabaseStatus": database, "JobSchedule": job_schedule, "Status": status,
    }


def _bar_schemas() -> dict:
    """Intraday and weekly bars, and a symbol's stored resolutions."""
    resolution = _obj({
        "timeframe": {"type": "string", "enum": ["1m", "1d"]},
        "first": {**STR, "description": "Session date (1d) or bar start (1m, ISO 8601 "
                                        "with the New York offset)."},
        "last": STR, "bars": INT, "completeness": _n(NUM),
        "inconsistent_sessions": {**INT, "description": "1m only: sessions whose daily "
                                  "high/low/volume disagree with their regular-hours "
                                  "minutes."}},
        required=["timeframe", "first", "last", "bars", "completeness"])
    bar = _obj({
        "time": {**STR, "description": "Bar start, ISO 8601 New York time with its offset."},
        "session": DATE, "open": _n(NUM), "high": _n(NUM), "low": _n(NUM), "close": _n(NUM),
        "volume": _n(NUM), "vwap": _n(NUM), "trades": _n(INT), "validated": BOOL})
    week = _obj({
        "time": {**DATE, "description": "The Sunday the week starts on."},
        "open": _n(NUM), "high": _n(NUM), "low": _n(NUM), "close": _n(NUM),
        "volume": _n(NUM), "vwap": _n(NUM), "trades": _n(INT),
        "sessions": {**INT, "description": "Daily bars in the week."}})
    return {"Bar": bar, "WeekBar": week, "Resolution": resolution}


def _market_schemas() -> dict:
    """Symbols and bars."""
    symbol = _obj({
        "symbol": {"type": "string", "pattern": SYMBOL_PATTERN},
        "active": BOOL, "configured": BOOL, "since": _n(DATE),
        "first_date": _n(DATE), "last_date": _n(DATE),
        "records": INT, "validated_records": INT, "gaps": INT, "missing_sessions": INT,
        "completeness": _n(NUM), "quality_score": _n(NUM), "source": _n(STR),
        "last_update": _n(DATETIME),
        "timeframes": {"type": "array", "items": {"type": "string", "enum": ["1m", "1d"]},
                       "description": "Stored resolutions configured for it (timeframes)."},
        "resolutions": {"type": "array", "items": _ref("Resolution"),
                        "description": "Stored resolutions with their first and last bar; "
                                       "5m..4h derive from 1m and 1w from 1d."}})
    candle = _obj({
        "time": {**DATE, "description": "The session date (daily bars)."},
        "open": _n(NUM), "high": _n(NUM), "low": _n(NUM), "close": _n(NUM),
        "volume": _n(NUM), "vwap": _n(NUM), "validated": BOOL, "quality_score": _n(NUM),
        "gap_detected": BOOL,
        "gap_kind": _n({"type": "string", "enum": ["split", "dividend", "jump"]}),
        "source": STR})
    historical = _obj({
        "symbol": {"type": "string", "pattern": SYMBOL_PATTERN},
        "timeframe": {"type": "string", "enum": list(timeframes.ALL)},
        "start_date": DATE, "end_date": DATE, "adjusted": BOOL,
        "adjust": {"type": "string", "enum": ["none", "splits", "total"]},  # when named
        "tickers": openapi_dividends.TICKERS,
        "count": {"type": "integer", "minimum": 0},
        "data": {"type": "array", "items": {"oneOf": [_ref("Candle"), _ref("Bar"),
                                                      _ref("WeekBar")]},
                 "description": "Candle for 1d, Bar for 1m..4h, WeekBar for 1w."},
        "next": {**_n(STR), "description": "Not for 1d. The next page (the same request "
                                           "with cursor), null on the last page."}},
        required=["symbol", "timeframe", "start_date", "end_date", "adjusted", "count",
                  "data"])
    return {"Symbol": symbol, "Candle": candle, **_bar_schemas(), "Historical": historical}


def _schemas() -> dict:
    gap = _obj({
        "symbol": STR, "session": DATE,
        "kind": {"type": "string", "enum": list(quality.GAP_KINDS)},
        "timeframe": {"type": "string", "enum": ["1d", "1m"],
                      "description": "1m: a session without any minute bar."},
        "jump_pct": _n(NUM), "open": _n(NUM), "close": _n(NUM),
        "split_from": _n(NUM), "split_to": _n(NUM),
        "split_ratio": _n({"type": "string", "description": "to:from, e.g. 4:1"})})
    job_run = _obj({
        "id": INT, "job": STR, "slot": STR, "trigger": STR,
        "status": {"type": "string",
                   "enum": ["queued", "running", "ok", "partial", "failed"]},
        "params": FREE, "progress": FREE, "result": FREE, "error": _n(STR),
        "attempts": INT, "created_at": DATETIME, "started_at": _n(DATETIME),
        "finished_at": _n(DATETIME), "duration_s": _n(NUM),
        "url": {"type": "string", "description": "Where to poll this run."}})
    queued = _obj({"job_id": INT, "status": {"type": "string", "enum": ["queued"]},
                   "url": {"type": "string", "description": "Poll this URL for progress."}})
    backup = _obj({
        "id": INT, "filename": STR, "path": STR, "created_at": DATETIME,
        "size_bytes": _n(INT), "sha256": _n(STR), "status": STR,
        "restore_test_status": _n(STR), "restore_test_at": _n(DATETIME),
        "restore_test_seconds": _n(NUM)})
    error = _obj({
        "error": _obj({
            "code": {"type": "string", "description": "Stable, machine-readable."},
            "message": {"type": "string", "description": "What went wrong and what to do."},
            "errors": {"type": "array", "items": STR, "description": "Every problem found "
                       "(config reload only)."}, **openapi_columnar.TOO_MANY_ROWS},
            required=["code", "message"])})
    return {
        "Error": error, **_status_schemas(),
        **_market_schemas(),
        "SymbolList": _obj({"count": INT, "symbols": {"type": "array", "items": _ref("Symbol")}}),
        "Gap": gap, **openapi_dividends.SCHEMAS,
        "GapList": _obj({"count": INT, "gaps": {"type": "array", "items": _ref("Gap")}}),
        "JobRun": job_run,
        "JobList": _obj({"count": INT, "jobs": {"type": "array", "items": _ref("JobRun")}}),
        "Queued": queued, "Backup": backup,
        "BackupList": _obj({"count": INT,
                            "backups": {"type": "array", "items": _ref("Backup")}}),
        "AlertList": _obj({"count": INT, "alerts": {"type": "array", "items": _ref("Alert")}}),
        "RunningConfig": _obj({
            "path": STR, "sha256": STR, "version": INT,
            "last_reload": _n(_ref("ConfigReload")),
            "config": {**FREE, "description": "The running appliance.yaml with defaults "
                                              "applied; secrets are masked."}}),
        "ReloadResult": _obj({
            "ok": {"type": "boolean", "const": True}, "sha256": STR, "version": INT,
            "diff": {**FREE, "description": "symbols_added, symbols_removed, changed, ..."},
            "backfill_job_id": _n(INT),
            "restart_required": {"type": "array", "items": STR},
            "restart_required_since": _n(NUM)}),
        "BackfillRequest": _obj({
            "symbols": {"type": "array", "minItems": 1, "maxItems": 20000,
                        "items": {"type": "string", "pattern": SYMBOL_PATTERN},
                        "description": "Configured symbols; omit for all of them."},
            "start": {"type": "string", "format": "date", "pattern": DATE_PATTERN},
            "end": {"type": "string", "format": "date", "pattern": DATE_PATTERN}},
            required=[]),
        "Empty": {"type": "object", "maxProperties": 0, "additionalProperties": False,
                  "description": "No fields; the body may also be left out."},
    }


# --------------------------------------------------------------------------- parameters

def _q(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _date_param(name: str, description: str, example: str | None = None) -> dict:
    p = _q(name, {"type": "string", "format": "date", "pattern": DATE_PATTERN}, description)
    if example:
        p["example"] = example
    return p


def _limit(default: int, maximum: int) -> dict:
    return _q("limit", {"type": "integer", "minimum": 1, "maximum": maximum,
                        "default": default}, "At most this many rows.")


ADMIN = [{"bearerAuth": []}]
METRICS_NOTE = ("Open unless server.metrics_token or server.read_token is set, "
                "server.login_for_read is true, or the server can be reached from the network "
                "without server.anonymous_reads; then it needs 'Authorization: Bearer "
                "<metrics_token or a read credential>'.")
READ_NOTE = ("Open on loopback unless server.read_token is set or server.login_for_read is "
             "true, and beyond loopback (or behind a proxy) unless server.anonymous_reads is "
             "true; otherwise it needs 'Authorization: Bearer <read_token, admin_token or an "
             "API key with the read scope>'.")


def _read(summary: str, ok: dict, params: list | None = None, errors=("400", "401", "503"),
          description: str = "") -> dict:
    op = {"summary": summary, "description": (description + " " + READ_NOTE).strip(),
          "parameters": params or [], "responses": {"200": ok, **_errors(*errors, "429")},
          "security": [{}, {"bearerAuth": []}]}
    return op


def _admin(summary: str, responses: dict, *, body: dict | None = None, params: list | None = None,
           errors=("400", "401", "403", "413", "503"), description: str = "") -> dict:
    op = {"summary": summary,
          "description": (description + " Admin only: 'Authorization: Bearer "
                          "<server.admin_token>'.").strip(),
          "parameters": params or [], "security": ADMIN,
          "responses": {**responses, **_errors(*errors, "429")}}
    if body is not None:
        op["requestBody"] = {"required": False,
                             "content": {"application/json": {"schema": body}}}
    return op


def _paths() -> dict:
    return {**_data_paths(), **_ops_paths(),
            **openapi_columnar.paths(SYMBOL_PATTERN, DATE_PATTERN),
            **openapi_dividends.paths(_read, SYMBOL_PATTERN, DATE_PATTERN)}


def _data_paths() -> dict:
    """Health, metrics, status and the market data."""
    symbol_path = {"name": "symbol", "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": SYMBOL_PATTERN, "maxLength": 15},
                   "description": "Ticker, e.g. AAPL or BRK.B.", "example": "AAPL"}
    return {
        "/health": {"get": {
            "summary": "Liveness and health for load balancers and monitoring",
            "description": "Never needs a token. Answers within about a second even when "
                           "PostgreSQL or Redis hang. 200 when healthy or degraded, 503 when "
                           "unhealthy (database unreachable).",
            "security": [{}],
            "responses": {"200": _json(_ref("Health"), "Healthy or degraded."),
                          "503": _json(_ref("Health"), "Unhealthy: the database is "
                                                       "unreachable.")}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics",
            "description": METRICS_NOTE,
            "security": [{}, {"bearerAuth": []}],
            "responses": {"200": {"description": "Prometheus text exposition format.",
                                  "content": {"text/plain": {"schema": STR}}},
                          **_errors("401", "429")}}},
        "/api/v1/status": {"get": {
            **_read("Everything about the appliance in one answer", _json(
                _ref("Status"), "Healthy or degraded."), errors=("400", "401")),
            "responses": {
                "200": _json(_ref("Status"), "Healthy or degraded."),
                "503": _json(_ref("Status"), "Unhealthy: database.status is error."),
                **_errors("400", "401", "429")}}},
        "/api/v1/symbols": {"get": _read(
            "Every configured and every stored symbol",
            _json(_ref("SymbolList"), "Symbols, sorted."),
            [_q("active", {"type": "boolean"}, "Only active (true) or inactive (false) ones.")])},
        "/api/v1/historical/{symbol}": {"get": _read(
            "Bars of one symbol, daily (default) or another timeframe",
            {"description": "Candles in time order (JSON or CSV with a header row).",
             "content": {"application/json": {"schema": _ref("Historical")},
                         "text/csv": {"schema": {
                             "type": "string",
                             "description": "Header: time,open,high,low,close,volume,vwap,"
                                            "validated,quality_score,gap_detected,gap_kind,"
                                            "source"}},
                         **openapi_columnar.HISTORICAL_CONTENT}},
            [symbol_path,
             _date_param("start", "First session (inclusive); default one year before end.",
                         "2025-10-01"),
             _date_param("end", "Last session (inclusive); default today (New York); "
                                "start after end is a 400.", "2025-10-31"),
             *openapi_columnar.ADJUST_PARAMS,
             *openapi_columnar.FORMAT_PARAMS,
             _q("limit", {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                "At most this many candles (the earliest)."),
             _q("include_invalid", {"type": "boolean", "default": False},
                "Also candles that failed validation (they are always stored)."),
             _q("timeframe", {"type": "string", "enum": list(timeframes.ALL), "default": "1d"},
                "1m is stored as sent; 5m, 15m, 30m, 1h and 4h are rolled up from it; 1w "
                "from 1d (weeks start on Sunday). Intraday CSV header: "
                "time,session,open,high,low,close,volume,vwap,trades,validated; weekly: "
                "time,open,high,low,close,volume,vwap,trades,sessions."),
             _q("cursor", STR, "Not for 1d: where the page starts; take it from the "
                "previous answer's next (JSON) or Link header (CSV).")],
            errors=("400", "401", "404", "503"),
            description="Large daily ranges are streamed; count then follows data. Other "
                        "timeframes answer at most limit (at most 50000) bars per page "
                        "with a next link.")},
        "/api/v1/gaps": {"get": _read(
            "Flagged candles (split, dividend, jump) and missing sessions, newest first",
            _json(_ref("GapList"), "Gaps."),
            [_q("symbol", {"type": "string", "pattern": SYMBOL_PATTERN}, "Only this symbol."),
             _q("kind", {"type": "string", "enum": ["split", "dividend", "jump", "missing"]},
                "Only this kind."),
             _date_param("since", "Sessions on or after this date."),
             _date_param("until", "Sessions on or before this date."),
             _limit(500, 100_000)],
            errors=("400", "401", "404", "503"))},
    }


def _ops_paths() -> dict:
    """Jobs, config, backups, alerts and the document itself."""
    id_path = lambda n, d: {"name": n, "in": "path", "required": True,  # noqa: E731
                            "schema": {"type": "integer", "minimum": 0}, "description": d,
                            "example": 1}
    queued = _json(_ref("Queued"), "Queued; poll the url (GET /api/v1/jobs/{id}).")
    return {
        "/api/v1/jobs": {"get": _read(
            "Recent job runs, newest first", _json(_ref("JobList"), "Job runs."),
            [_q("job", {"type": "string", "enum": list(JOB_NAMES)}, "Only this job."),
             _limit(50, 1000)])},
        "/api/v1/jobs/{id}": {"get": _read(
            "One job run with its progress",
            _json(_ref("JobRun"), "The run."),
            [id_path("id", "Job run id (job_id of a 202 answer).")],
            errors=("400", "401", "404", "503"))},
        "/api/v1/jobs/{name}/run": {"post": _admin(
            "Run a job now",
            {"202": queued}, body=_ref("Empty"),
            params=[{"name": "name", "in": "path", "required": True,
                     "schema": {"type": "string", "enum": list(JOB_NAMES)},
                     "description": "Any scheduled job; backfill runs for every configured "
                                    "symbol, restore_test tests the latest backup."}],
            errors=("400", "401", "403", "404", "413", "503"),
            description="The same run the scheduler would start, queued for the worker.")},
        "/api/v1/backfill": {"post": _admin(
            "Queue a backfill",
            {"202": queued}, body=_ref("BackfillRequest"),
            errors=("400", "401", "403", "413", "422", "503"),
            description="Only configured symbols; start and end default to what the backfill "
                        "job would do on its own.")},
        "/api/v1/config": {"get": _read(
            "The running configuration (secrets masked)",
            _json(_ref("RunningConfig"), "Running config."))},
        "/api/v1/config/reload": {"post": _admin(
            "Reload appliance.yaml",
            {"200": _json(_ref("ReloadResult"), "Reloaded; the diff says what changed.")},
            body=_ref("Empty"),
            errors=("400", "401", "403", "413", "422", "503", "504"),
            description="Every running process validates the file in its own environment "
                        "first. 422 when the file is invalid there (every error with file and "
                        "line): the running config stays. 504 when a process did not answer "
                        "or confirm in time. A change of a restart-only key is accepted and "
                        "listed in restart_required: its old value stays in force until the "
                        "appliance restarts.")},
        "/api/v1/backups": {
            "get": _read("Backups, newest first", _json(_ref("BackupList"), "Backups."),
                         [_limit(100, 10000)]),
            "post": _admin("Queue a backup", {"202": queued}, body=_ref("Empty"))},
        "/api/v1/backups/{id}/restore-test": {"post": _admin(
            "Queue a restore test of one backup",
            {"202": queued}, body=_ref("Empty"),
            params=[id_path("id", "Backup id.")],
            errors=("400", "401", "403", "404", "409", "413", "503"))},
        "/api/v1/alerts": {"get": _read(
            "Alerts", _json(_ref("AlertList"), "Alerts."),
            [_q("status", {"type": "string", "enum": ["open", "pending", "resolved", "all"],
                           "default": "open"}, "Which alerts (pending: not yet for its `for`)."),
             _limit(200, 10000)])},
        "/api/v1/openapi.json": {"get": {
            "summary": "This document", "description": READ_NOTE,
            "security": [{}, {"bearerAuth": []}],
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document."),
                          **_errors("401", "429")}}},
    }


@lru_cache(maxsize=1)


def _spec() -> dict:
    responses = {name: {"description": desc,
                        "content": {"application/json": {"schema": _ref("Error")}}}
                 for name, desc in ERROR_RESPONSES.values()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Market Data Appliance API", "version": APP_VERSION,
                 "description": "Daily OHLCV candles, checked and gap-flagged, with the "
                                "appliance's health, jobs, backups and alerts. Every error is "
                                "{\"error\": {\"code\", \"message\"}}."},
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": responses,
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "server.admin_token (admin endpoints), server.read_token "
                               "(read endpoints, when set), or a per-client key of "
                               "server.api_keys (its scopes)."}},
        },
    }


def stored_fields(name: str, computed: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The properties of schema ``name`` in the document's order, less the
    ``computed`` ones: what the API copies from a row, so the JSON and its
    schema cannot drift apart."""
    props = tuple(_schemas()[name]["properties"])
    missing = set(computed) - set(props)
    if missing:
        raise KeyError(f"{name} has no properties {sorted(missing)}")
    return tuple(p for p in props if p not in computed)


def spec() -> dict:
    """The OpenAPI document (a fresh copy; callers may modify it)."""
    return copy.deepcopy(_spec())
