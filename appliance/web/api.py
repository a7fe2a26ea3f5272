"""REST API v1, /health, and the JSON error contract."""
from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import math

import psycopg
from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context
from flask.json.provider import DefaultJSONProvider
from psycopg_pool import PoolTimeout
from werkzeug.exceptions import HTTPException

from .. import health as health_mod
from .. import store
from ..config import SYMBOL_RE
from .auth import require_admin, require_read
from .errors import BadRequest, api_error

log = logging.getLogger("appliance.api")

bp = Blueprint("api", __name__)

MAX_LIMIT = 1_000_000
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class JSONProvider(DefaultJSONProvider):
    """ISO 8601 dates, no NaN (null instead), stable key order as written."""

    sort_keys = False

    @staticmethod
    def default(o):
        if isinstance(o, dt.datetime):
            return o.isoformat().replace("+00:00", "Z")
        if isinstance(o, dt.date):
            return o.isoformat()
        if isinstance(o, decimal.Decimal):
            return float(o)
        return DefaultJSONProvider.default(o)

    def dumps(self, obj, **kw):
        kw.setdefault("default", self.default)
        kw.setdefault("ensure_ascii", False)
        return json.dumps(_clean(obj), **kw)


def _clean(o):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def rt():
    return current_app.config["RUNTIME"]


# --------------------------------------------------------------------------- parameters

def _params(allowed: set[str]) -> dict:
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(unknown)}; allowed: "
                         f"{', '.join(sorted(allowed))}", "unknown_field")
    return request.args


def _date(args, name: str, default: dt.date | None) -> dt.date | None:
    v = args.get(name)
    if v is None or v == "":
        return default
    try:
        d = dt.date.fromisoformat(v)
    except ValueError:
        raise BadRequest(f"{name}={v!r} is not a date (YYYY-MM-DD)", "bad_date") from None
    if d.year < 1800 or d.year > 2200:
        raise BadRequest(f"{name}={v!r} is out of range", "bad_date")
    return d


def _bool(args, name: str, default: bool) -> bool:
    v = args.get(name)
    if v is None or v == "":
        return default
    if v.lower() in _TRUE:
        return True
    if v.lower() in _FALSE:
        return False
    raise BadRequest(f"{name}={v!r} must be true or false", "bad_boolean")


def _int(args, name: str, default: int | None, lo: int, hi: int) -> int | None:
    v = args.get(name)
    if v is None or v == "":
        return default
    try:
        n = int(v)
    except ValueError:
        raise BadRequest(f"{name}={v!r} is not an integer", "bad_integer") from None
    if not lo <= n <= hi:
        raise BadRequest(f"{name}={n} must be between {lo} and {hi}", "out_of_range")
    return n


def _symbol(symbol: str) -> str:
    if not SYMBOL_RE.match(symbol or ""):
        raise BadRequest(f"{symbol[:40]!r} is not a valid symbol (upper-case letters, digits, "
                         f"'.' or '-', at most 15 characters)", "bad_symbol")
    return symbol


def _known_symbol(conn, symbol: str) -> bool:
    return conn.execute("""SELECT 1 FROM symbols WHERE symbol = %s
                           UNION ALL SELECT 1 FROM symbol_stats WHERE symbol = %s LIMIT 1""",
                        (symbol, symbol)).fetchone() is not None


def _json_body(allowed: set[str]) -> dict:
    if not request.data:
        return {}
    try:
        body = json.loads(request.data)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON", "bad_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", "bad_json")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}; allowed: "
                         f"{', '.join(sorted(allowed))}", "unknown_field")
    return body


# --------------------------------------------------------------------------- health / status

@bp.get("/health")
def health():
    h = health_mod.compute(rt())
    body = health_mod.health_body(h)
    return jsonify(body), (503 if h["status"] == "unhealthy" else 200)


@bp.get("/api/v1/status")
@require_read
def status():
    _params(set())
    h = health_mod.compute(rt())
    body = health_mod.status_body(rt(), h)
    return jsonify(body), (503 if h["status"] == "unhealthy" else 200)


# --------------------------------------------------------------------------- data

@bp.get("/api/v1/symbols")
@require_read
def symbols():
    args = _params({"active"})
    active = _bool(args, "active", None) if args.get("active") else None
    with rt().conn() as conn:
        rows = store.symbol_rows(conn)
    out = []
    for r in rows:
        if active is not None and r["active"] != active:
            continue
        out.append({"symbol": r["symbol"], "active": r["active"], "configured": r["configured"],
                    "first_date": r["first_session"], "last_date": r["last_session"],
                    "records": r["records"], "validated_records": r["validated"],
                    "gaps": r["gaps"], "missing_sessions": r["missing_sessions"],
                    "completeness": r["completeness"], "quality_score": r["quality_score"],
                    "source": r["source"], "last_update": r["last_update"]})
    return jsonify({"count": len(out), "symbols": out})


@bp.get("/api/v1/historical/<path:symbol>")
@require_read
def historical(symbol: str):
    args = _params({"start", "end", "adjusted", "format", "limit", "include_invalid"})
    symbol = _symbol(symbol)
    today = dt.date.today()
    end = _date(args, "end", today)
    start = _date(args, "start", end - dt.timedelta(days=365))
    if start > end:
        raise BadRequest(f"start ({start}) is after end ({end})", "bad_range")
    adjusted = _bool(args, "adjusted", False)
    include_invalid = _bool(args, "include_invalid", False)
    limit = _int(args, "limit", None, 1, MAX_LIMIT)
    fmt = args.get("format", "json")
    if fmt not in ("json", "csv"):
        raise BadRequest(f"format={fmt!r} must be json or csv", "bad_format")
    with rt().conn() as conn:
        if not _known_symbol(conn, symbol):
            return api_error(404, "unknown_symbol",
                             f"symbol {symbol} is not configured and has no stored data")
    params = {"symbol": symbol, "tf": store.TIMEFRAME, "start": start, "end": end,
              "limit": limit}
    pool = rt().pool
    if fmt == "csv":
        sql_text = store.historical_csv_sql(adjusted, include_invalid)

        def gen_csv():
            with pool.connection() as conn:
                with conn.cursor() as cur:
                    copy_sql = f"COPY ({cur.mogrify(sql_text, params)}) TO STDOUT WITH (FORMAT csv, HEADER true)"
                    with cur.copy(copy_sql) as cp:
                        for chunk in cp:
                            yield bytes(chunk)

        return Response(stream_with_context(gen_csv()), mimetype="text/csv",
                        headers={"Content-Disposition":
                                 f"inline; filename={symbol}_{start}_{end}.csv"})

    sql_text = store.historical_json_sql(adjusted, include_invalid)
    head = json.dumps({"symbol": symbol, "timeframe": store.TIMEFRAME,
                       "start_date": start.isoformat(), "end_date": end.isoformat(),
                       "adjusted": adjusted})[:-1]

    def gen_json():
        n = 0
        yield head + ', "data": ['
        with pool.connection() as conn:
            with conn.cursor(name="hist") as cur:
                cur.itersize = 5000
                cur.execute(sql_text, params)
                while True:
                    rows = cur.fetchmany(5000)
                    if not rows:
                        break
                    part = ",".join(r[0] for r in rows)
                    yield ("," + part) if n else part
                    n += len(rows)
        yield f'], "count": {n}}}'

    return Response(stream_with_context(gen_json()), mimetype="application/json")


@bp.get("/api/v1/gaps")
@require_read
def gaps():
    args = _params({"symbol", "kind", "since", "until", "limit"})
    sym = _symbol(args["symbol"]) if args.get("symbol") else None
    kind = args.get("kind") or None
    if kind not in (None, "split", "jump", "missing"):
        raise BadRequest(f"kind={kind!r} must be split, jump or missing", "bad_kind")
    since = _date(args, "since", None)
    until = _date(args, "until", None)
    limit = _int(args, "limit", 500, 1, 100_000)
    with rt().conn() as conn:
        rows = store.gaps(conn, symbol=sym, kind=kind, since=since, until=until, limit=limit)
    for r in rows:
        r["split_ratio"] = (f"{_num(r['split_to'])}:{_num(r['split_from'])}"
                            if r.get("split_from") else None)
    return jsonify({"count": len(rows), "gaps": rows})


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# --------------------------------------------------------------------------- jobs

def _run_json(r: dict) -> dict:
    return {k: r.get(k) for k in ("id", "job", "slot", "trigger", "status", "params", "progress",
                                  "result", "error", "attempts", "created_at", "started_at",
                                  "finished_at")}


@bp.get("/api/v1/jobs")
@require_read
def jobs():
    from ..jobs import runs
    args = _params({"job", "limit"})
    job = args.get("job") or None
    limit = _int(args, "limit", 50, 1, 1000)
    with rt().conn() as conn:
        rows = runs.recent(conn, job=job, limit=limit)
    return jsonify({"count": len(rows), "jobs": [_run_json(r) for r in rows]})


@bp.get("/api/v1/jobs/<int:run_id>")
@require_read
def job(run_id: int):
    from ..jobs import runs
    _params(set())
    with rt().conn() as conn:
        r = runs.get(conn, run_id)
    if r is None:
        return api_error(404, "unknown_job", f"no job run {run_id}")
    return jsonify(_run_json(r))


@bp.post("/api/v1/backfill")
@require_admin
def post_backfill():
    from ..queue import enqueue
    body = _json_body({"symbols", "start", "end"})
    syms = body.get("symbols")
    if syms is not None:
        if not isinstance(syms, list) or not all(isinstance(s, str) for s in syms):
            raise BadRequest("symbols must be a list of strings", "bad_symbols")
        for s in syms:
            _symbol(s)
        if len(syms) > 20000:
            raise BadRequest("too many symbols", "bad_symbols")
    dates = {}
    for k in ("start", "end"):
        v = body.get(k)
        if v is not None:
            if not isinstance(v, str):
                raise BadRequest(f"{k} must be a date string (YYYY-MM-DD)", "bad_date")
            dates[k] = _date({k: v}, k, None)
    if dates.get("start") and dates.get("end") and dates["start"] > dates["end"]:
        raise BadRequest("start is after end", "bad_range")
    run_id = enqueue(rt(), "backfill", {"symbols": syms or None,
                                        "start": body.get("start"), "end": body.get("end")})
    return jsonify({"job_id": run_id, "status": "queued",
                    "url": f"/api/v1/jobs/{run_id}"}), 202


# --------------------------------------------------------------------------- config

@bp.get("/api/v1/config")
@require_read
def config():
    _params(set())
    cfg = rt().config
    with rt().conn() as conn:
        last = store.last_config_reload(conn)
    return jsonify({"path": str(cfg.path), "sha256": cfg.sha256, "version": rt().config_version(),
                    "last_reload": last, "config": cfg.masked()})


@bp.post("/api/v1/config/reload")
@require_admin
def config_reload():
    from .. import reload as reload_mod
    _json_body(set())
    res = reload_mod.reload_config(rt(), source="api", actor="api")
    if not res["ok"]:
        return api_error(res["status"], "config_invalid" if res["status"] == 422
                         else "restart_required", "\n".join(res["errors"]),
                         errors=res["errors"])
    return jsonify({"ok": True, "sha256": res["sha256"], "version": res["version"],
                    "diff": res["diff"], "backfill_job_id": res["backfill_run_id"]})


# --------------------------------------------------------------------------- backups

@bp.get("/api/v1/backups")
@require_read
def backups():
    from .. import backups as bk
    args = _params({"limit"})
    limit = _int(args, "limit", 100, 1, 10000)
    with rt().conn() as conn:
        rows = bk.list_backups(conn, limit=limit)
    return jsonify({"count": len(rows), "backups": rows})


@bp.post("/api/v1/backups")
@require_admin
def post_backup():
    from ..queue import enqueue
    _json_body(set())
    run_id = enqueue(rt(), "backup", {})
    return jsonify({"job_id": run_id, "status": "queued", "url": f"/api/v1/jobs/{run_id}"}), 202


@bp.post("/api/v1/backups/<int:backup_id>/restore-test")
@require_admin
def post_restore_test(backup_id: int):
    from ..queue import enqueue
    _json_body(set())
    with rt().conn() as conn:
        row = conn.execute("SELECT status FROM backups WHERE id = %s", (backup_id,)).fetchone()
    if row is None:
        return api_error(404, "unknown_backup", f"no backup {backup_id}")
    if row[0] != "ok":
        return api_error(409, "backup_unusable", f"backup {backup_id} is {row[0]}")
    run_id = enqueue(rt(), "restore_test", {"backup": str(backup_id)})
    return jsonify({"job_id": run_id, "status": "queued", "url": f"/api/v1/jobs/{run_id}"}), 202


# --------------------------------------------------------------------------- alerts

@bp.get("/api/v1/alerts")
@require_read
def alerts():
    args = _params({"status", "limit"})
    st = args.get("status") or "open"
    if st not in ("open", "resolved", "all"):
        raise BadRequest(f"status={st!r} must be open, resolved or all", "bad_status")
    limit = _int(args, "limit", 200, 1, 10000)
    with rt().conn() as conn:
        rows = store.alerts_list(conn, status=st, limit=limit)
    return jsonify({"count": len(rows), "alerts": rows})


# --------------------------------------------------------------------------- openapi

@bp.get("/api/v1/openapi.json")
def openapi():
    from .openapi import spec
    return jsonify(spec())


# --------------------------------------------------------------------------- errors

def _is_api_path() -> bool:
    p = request.path
    return p.startswith("/api/") or p in ("/health", "/metrics")


def register(app) -> None:
    app.json = JSONProvider(app)
    app.register_blueprint(bp)

    @app.errorhandler(BadRequest)
    def _bad(e: BadRequest):
        return api_error(e.status, e.code, e.message)

    @app.errorhandler(psycopg.OperationalError)
    @app.errorhandler(PoolTimeout)
    def _db_down(e):
        log.warning("database unavailable: %s", e)
        return api_error(503, "database_unavailable",
                         "the database is unreachable right now; try again shortly")

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        if _is_api_path() or request.accept_mimetypes.best == "application/json":
            code = (e.name or "error").lower().replace(" ", "_")
            return api_error(e.code or 500, code, e.description or e.name)
        return e

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        if isinstance(e, (psycopg.errors.QueryCanceled,)):
            return api_error(503, "timeout", "the query took too long; narrow the range")
        return api_error(500, "internal_error", "internal error; see the server log")
