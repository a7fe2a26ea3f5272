"""REST API v1, /health, and the JSON error contract.

Every answer is JSON (CSV for ``historical?format=csv``, Prometheus text for
/metrics); every error is ``{"error": {"code", "message"}}`` with the right
status, never a stack trace. Inputs are checked before any query (symbols
against the config's symbol pattern, dates, integers, unknown fields) and all
SQL goes through ``store`` with bound parameters. ``openapi.py`` describes
exactly what is answered here; the tests check every response against it.
"""
from __future__ import annotations

import datetime as dt
import decimal
import itertools
import json
import logging
import math
import sys

from flask import Blueprint, Response, current_app, jsonify
from flask.json.provider import DefaultJSONProvider

from appliance import store
from appliance.alerts import health as health_mod
from appliance.core.errors import BackupError
from appliance.core.quality import GAP_KINDS
from appliance.jobs import reload as reload_mod
from appliance.jobs import runs
from appliance.jobs.queue import enqueue
from appliance.jobs.registry import JOB_NAMES, run_now_params
from appliance.ops import backups as backups_mod
from appliance.store import minutes as mstore
from appliance.web import bars, columnar, corpactions, errors
from appliance.web import openapi as openapi_doc
from appliance.web.auth import require_admin, require_read
from appliance.web.errors import BadRequest, api_error
from appliance.web.params import (
    adjust_arg,
    bool_arg,
    date_arg,
    int_arg,
    json_body,
    known_symbol,
    query_args,
    symbol_arg,
)
from appliance.web.stream import Stream

log = logging.getLogger("appliance.api")

bp = Blueprint("api", __name__)

MAX_LIMIT = 1_000_000
MAX_ID = 2**63 - 1
#: Rows fetched before the response starts: a typical request (a year of daily
#: bars) is answered whole, with ``count`` before ``data``; larger ones stream.
FIRST_CHUNK = 2000
STREAM_CHUNK = 2000


class JSONProvider(DefaultJSONProvider):
    """ISO 8601 dates, no NaN (null instead), keys in the order written."""

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
        # < > & only ever occur inside strings: escaped, an echoed input can
        # never be read as markup by a browser that sniffs the content
        return (json.dumps(_clean(obj), **kw).replace("<", "\\u003c").replace(">", "\\u003e")
                .replace("&", "\\u0026"))


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



def _today_ny() -> dt.date:
    return dt.datetime.now(bars.exchange_zone()).date()


# --------------------------------------------------------------------------- health / status

@bp.get("/health")
def health():
    """Never needs a token (load balancers, container health checks); extra
    query parameters (cache busters) are ignored. Probed at most once a second
    per web worker (``health.latest``): a flood costs no probes."""
    h = health_mod.latest(rt())
    body = health_mod.health_body(h)
    return jsonify(body), (503 if h.status == "unhealthy" else 200)


@bp.get("/api/v1/status")
@require_read
def status():
    query_args(set())
    h = health_mod.compute(rt())
    body = health_mod.status_body(rt(), h)
    return jsonify(body), (503 if h.status == "unhealthy" else 200)


# --------------------------------------------------------------------------- symbols

def source_label(r: dict, minutes: dict | None = None) -> str | None:
    """A symbol's source: ``demo`` while any of its daily or minute bars is
    the demo provider's (never a real vendor's name over synthetic bars)."""
    if (minutes or {}).get("source") == "demo":
        return "demo"
    return r.get("source") or (minutes or {}).get("source")


def _symbol_json(r: dict, minutes: dict | None = None) -> dict:
    return {"symbol": r["symbol"], "active": bool(r["active"]), "configured": bool(r["configured"]),
            "since": r.get("since"),
            "first_date": r["first_session"], "last_date": r["last_session"],
            "records": int(r["records"] or 0), "validated_records": int(r["validated"] or 0),
            "gaps": int(r["gaps"] or 0), "missing_sessions": int(r["missing_sessions"] or 0),
            "completeness": r["completeness"], "quality_score": r["quality_score"],
            "source": source_label(r, minutes), "last_update": r["last_update"],
            "timeframes": list(r.get("timeframes") or ()),
            "resolutions": bars.resolutions(r, minutes)}


@bp.get("/api/v1/symbols")
@require_read
def symbols():
    """Every configured symbol (with or without data) and every stored one."""
    args = query_args({"active"})
    active = bool_arg(args, "active", None)
    cfg = rt().config
    with rt().read_conn() as conn:
        rows = {r["symbol"]: r for r in store.symbol_rows(conn)}
        minutes = mstore.minute_stats(conn)
    # the running config is the truth about what is configured, even before
    # the symbols table has been synchronised with it
    for spec in cfg.symbols:
        r = rows.get(spec.symbol)
        if r is None:
            rows[spec.symbol] = {"symbol": spec.symbol, "active": spec.active, "configured": True,
                                 "since": spec.since, "first_session": None, "last_session": None,
                                 "records": 0, "validated": 0, "gaps": 0, "missing_sessions": 0,
                                 "completeness": None, "quality_score": None, "source": None,
                                 "last_update": None, "timeframes": spec.timeframes}
        else:
            r.update(active=spec.active, configured=True, since=spec.since,
                     timeframes=spec.timeframes)
    configured = {s.symbol for s in cfg.symbols}
    out = []
    for sym in sorted(rows):
        r = rows[sym]
        if sym not in configured:
            r.update(active=False, configured=False)
        if active is not None and bool(r["active"]) != active:
            continue
        out.append(_symbol_json(r, minutes.get(sym)))
    return jsonify({"count": len(out), "symbols": out})


# --------------------------------------------------------------------------- historical

def _historical_args(args) -> tuple:
    """(start, end, adjust, include_invalid, limit, format), checked."""
    end = date_arg(args, "end", _today_ny())
    start = date_arg(args, "start", max(dt.date.min, end - dt.timedelta(days=365))
                  if end.toordinal() > 365 else dt.date.min)
    if start > end:
        raise BadRequest(f"start ({start}) is after end ({end})", "bad_range")
    adjust = adjust_arg(args)
    include_invalid = bool_arg(args, "include_invalid", False)
    limit = int_arg(args, "limit", None, 1, MAX_LIMIT)
    fmt = columnar.negotiate(args)  # json, csv, parquet or arrow
    return start, end, adjust, include_invalid, limit, fmt


@bp.get("/api/v1/historical/<path:symbol>")
@require_read
def historical(symbol: str):
    args = query_args({"start", "end", "adjusted", "adjust", "format", "limit", "include_invalid",
                       "timeframe", "cursor", "compression"})
    symbol = symbol_arg(symbol)
    timeframe = bars.timeframe_arg(args)
    start, end, adjust, include_invalid, limit, fmt = _historical_args(args)
    compression = columnar.compression_arg(args)  # checked for every format, used by Parquet
    if fmt in ("parquet", "arrow") or timeframe != "1d":
        kw = {"compression": compression} if fmt in ("parquet", "arrow") else {}
        answer = columnar.historical if fmt in ("parquet", "arrow") else bars.respond
        return answer(rt().read_conn(), symbol=symbol, timeframe=timeframe,
                      start=start, end=end, adjust=adjust,
                      include_invalid=include_invalid, fmt=fmt, limit=limit,
                      cursor=args.get("cursor"), known=lambda c: known_symbol(c, symbol),
                      **kw) \
            or api_error(404, "unknown_symbol",
                         f"symbol {symbol} is not configured and has no stored data")
    return _daily(symbol, start, end, adjust, include_invalid, limit, fmt)


def _daily(symbol: str, start: dt.date, end: dt.date, adjust: str, include_invalid: bool,
           limit: int | None, fmt: str):
    """The daily bars as JSON or CSV: read in one go, or streamed."""
    params = {"symbol": symbol, "tf": store.TIMEFRAME, "start": start, "end": end,
              "limit": limit, "tz": bars.exchange_tz()}
    sql_text = (store.historical_csv_sql if fmt == "csv" else store.historical_json_sql)(
        adjust, include_invalid)

    # The first rows are read before answering: an unknown symbol must still be
    # a 404 and a database error a 503, not a broken 200. Daily bars are at
    # most one row per calendar day, so a range of up to FIRST_CHUNK days is
    # fetched in one go (a prepared statement, the cheapest path); longer
    # ranges are streamed in chunks while the connection is held.
    small = (end - start).days < FIRST_CHUNK or (limit is not None and limit < FIRST_CHUNK)
    cm = rt().read_conn()
    conn = cm.__enter__()
    released = False
    try:
        cur = conn.cursor()
        if small:
            rows, head_rows = None, cur.execute(sql_text, params).fetchall()
        else:
            rows = cur.stream(sql_text, params, size=STREAM_CHUNK)
            head_rows = list(itertools.islice(rows, FIRST_CHUNK))
        first = [r[0] for r in head_rows]
        done = len(first) < FIRST_CHUNK or small
        unknown = done and not first and not known_symbol(conn, symbol)
        # the JSON rows carry the ticker history beside each bar (computed once)
        if fmt == "csv":
            tickers = None
        elif head_rows:
            tickers = bars.tickers_from_json(head_rows[0][1])
        else:
            tickers = bars.ticker_history(conn, symbol)
        if done:  # everything is in hand: give the connection back before answering
            released = True
            cm.__exit__(None, None, None)
    except BaseException:
        if not released:
            cm.__exit__(*sys.exc_info())
        raise
    if unknown:
        return api_error(404, "unknown_symbol",
                         f"symbol {symbol} is not configured and has no stored data")

    head = (f'{{"symbol": "{symbol}", "timeframe": "{store.TIMEFRAME}", '
            f'"start_date": "{start.isoformat()}", "end_date": "{end.isoformat()}", '
            f'{bars.adjust_fields(adjust)}{bars.ticker_fields(tickers)}')  # not while streaming

    def body():
        if fmt == "csv":
            yield (",".join(store.HISTORICAL_CSV_HEADER) + "\n" + "".join(first)).encode()
            if not done:
                for chunk in _chunks(rows):
                    yield "".join(chunk).encode()
        else:
            if done:
                yield (f'{head}"count": {len(first)}, "data": [' + ", ".join(first)
                       + "]}").encode()
            else:
                n = len(first)
                yield (head + '"data": [' + ", ".join(first)).encode()
                for chunk in _chunks(rows):
                    n += len(chunk)
                    yield (", " + ", ".join(chunk)).encode()
                yield f'], "count": {n}}}'.encode()

    headers = {}
    if fmt == "csv":
        mimetype = "text/csv"
        headers["Content-Disposition"] = f'inline; filename="{symbol}_{start}_{end}.csv"'
    else:
        mimetype = "application/json"
    if done:
        return Response(list(body()), mimetype=mimetype, headers=headers)
    return Response(Stream(body(), conn, cm, symbol), mimetype=mimetype, headers=headers)


def _chunks(rows):
    chunk = []
    for r in rows:
        chunk.append(r[0])
        if len(chunk) >= STREAM_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --------------------------------------------------------------------------- gaps

@bp.get("/api/v1/gaps")
@require_read
def gaps():
    args = query_args({"symbol", "kind", "since", "until", "limit"})
    sym = symbol_arg(args["symbol"]) if "symbol" in args else None
    kind = args.get("kind")
    if kind is not None and kind not in GAP_KINDS:
        raise BadRequest(f"kind={kind[:40]!r} must be {', '.join(GAP_KINDS[:-1])} or "
                         f"{GAP_KINDS[-1]}", "bad_kind")
    since = date_arg(args, "since", None)
    until = date_arg(args, "until", None)
    if since and until and since > until:
        raise BadRequest(f"since ({since}) is after until ({until})", "bad_range")
    limit = int_arg(args, "limit", 500, 1, 100_000)
    with rt().read_conn() as conn:
        if sym is not None and not known_symbol(conn, sym):
            return api_error(404, "unknown_symbol",
                             f"symbol {sym} is not configured and has no stored data")
        rows = store.gaps(conn, symbol=sym, kind=kind, since=since, until=until, limit=limit,
                          tz=bars.exchange_tz())
    out = []
    for r in rows:
        out.append({"symbol": r["symbol"], "session": r["session"], "kind": r["kind"],
                    "timeframe": r["timeframe"], "jump_pct": r["jump_pct"], "open": r["open"], "close": r["close"],  # noqa: E501
                    "split_from": r["split_from"], "split_to": r["split_to"],
                    "split_ratio": (f"{_ratio_term(r['split_to'])}:{_ratio_term(r['split_from'])}"
                                    if r.get("split_from") else None)})
    return jsonify({"count": len(out), "gaps": out})


def _ratio_term(x: float) -> str:
    """One side of a split ratio as written: 4.0 -> "4", 1.5 -> "1.5"."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# --------------------------------------------------------------------------- jobs

#: the response shapes are declared once, in the OpenAPI document; these are
#: the fields copied from the row (the others are computed below)
_RUN_FIELDS = openapi_doc.stored_fields("JobRun", computed=("duration_s", "url"))


def _run_json(r: dict) -> dict:
    out = {k: r.get(k) for k in _RUN_FIELDS}
    for k in ("params", "progress", "result"):
        if not isinstance(out[k], dict):
            out[k] = {}
    out["duration_s"] = runs.duration_s(r)
    out["url"] = f"/api/v1/jobs/{r['id']}"
    return out


@bp.get("/api/v1/jobs")
@require_read
def jobs():
    args = query_args({"job", "limit"})
    job = args.get("job")
    if job is not None and job not in JOB_NAMES:
        raise BadRequest(f"job={job[:40]!r} is not a job; jobs: {', '.join(JOB_NAMES)}",
                         "bad_job")
    limit = int_arg(args, "limit", 50, 1, 1000)
    with rt().read_conn() as conn:
        rows = runs.recent(conn, job=job, limit=limit)
    return jsonify({"count": len(rows), "jobs": [_run_json(r) for r in rows]})


@bp.get("/api/v1/jobs/<int:run_id>")
@require_read
def job(run_id: int):
    query_args(set())
    r = None
    if run_id <= MAX_ID:
        r = rt().read_fresh(lambda conn: runs.get(conn, run_id))
    if r is None:
        return api_error(404, "unknown_job", f"no job run {run_id}")
    return jsonify(_run_json(r))


def _queued(run_id: int):
    return jsonify({"job_id": run_id, "status": "queued", "url": f"/api/v1/jobs/{run_id}"}), 202


@bp.post("/api/v1/backfill")
@require_admin
def post_backfill():
    query_args(set())
    body = json_body({"symbols", "start", "end"})
    syms = None
    if "symbols" in body:
        syms = body["symbols"]
        if not isinstance(syms, list) or not all(isinstance(s, str) for s in syms):
            raise BadRequest("symbols must be a list of symbol strings", "bad_symbols")
        if not syms:
            raise BadRequest("symbols is empty; omit it to backfill every configured symbol",
                             "bad_symbols")
        if len(syms) > 20000:
            raise BadRequest("too many symbols (at most 20000)", "bad_symbols")
        for s in syms:
            symbol_arg(s)
        configured = {s.symbol for s in rt().config.symbols}
        missing = [s for s in syms if s not in configured]
        if missing:
            return api_error(422, "not_configured",
                             f"not configured: {', '.join(missing[:20])}; add them to symbols "
                             f"in appliance.yaml and reload (reloading backfills new symbols)")
        syms = list(dict.fromkeys(syms))
    dates = {}
    for k in ("start", "end"):
        if k in body:
            v = body[k]
            if not isinstance(v, str):
                raise BadRequest(f"{k} must be a date string (YYYY-MM-DD)", "bad_date")
            dates[k] = date_arg({k: v}, k, None)
    if dates.get("start") and dates.get("end") and dates["start"] > dates["end"]:
        raise BadRequest(f"start ({dates['start']}) is after end ({dates['end']})", "bad_range")
    run_id = enqueue(rt(), "backfill", {"symbols": syms,
                                        "start": body.get("start"), "end": body.get("end")})
    return _queued(run_id)


@bp.post("/api/v1/jobs/<name>/run")
@require_admin
def post_job(name: str):
    """Run any scheduled job now (queued for the worker)."""
    query_args(set())
    json_body(set())
    if name not in JOB_NAMES:
        return api_error(404, "unknown_job", f"{name[:40]!r} is not a job; jobs: "
                                             f"{', '.join(JOB_NAMES)}")
    params = run_now_params(name)
    return _queued(enqueue(rt(), name, params))


# --------------------------------------------------------------------------- config

def _reload_json(r: dict | None) -> dict | None:
    if not r:
        return None
    return {"id": r["id"], "ts": r["ts"], "source": r["source"], "actor": r["actor"],
            "sha256": r["sha256"], "ok": r["ok"], "error": r["error"]}


@bp.get("/api/v1/config")
@require_read
def config():
    query_args(set())
    cfg = rt().config
    with rt().read_conn() as conn:
        last = store.last_config_reload(conn)
    return jsonify({"path": str(cfg.path), "sha256": cfg.sha256, "version": rt().config_version(),
                    "last_reload": _reload_json(last), "config": cfg.masked()})


@bp.post("/api/v1/config/reload")
@require_admin
def config_reload():
    query_args(set())
    json_body(set())
    res = reload_mod.reload_config(rt(), source="api", actor="api")
    if not res["ok"]:
        return api_error(res["status"], "config_invalid" if res["status"] == 422
                         else "reload_unconfirmed", "\n".join(res["errors"]),
                         errors=list(res["errors"]))
    return jsonify({"ok": True, "sha256": res["sha256"], "version": res["version"],
                    "diff": res["diff"], "backfill_job_id": res["backfill_run_id"],
                    "restart_required": res["diff"]["restart_required"],
                    "restart_required_since": res["restart_required_since"]})


# --------------------------------------------------------------------------- backups

_BACKUP_FIELDS = openapi_doc.stored_fields("Backup")


def _backup_rows(conn, limit: int) -> list[dict]:
    return [{k: r.get(k) for k in _BACKUP_FIELDS}
            for r in backups_mod.list_backups(conn, limit=limit)]


@bp.get("/api/v1/backups")
@require_read
def backups():
    args = query_args({"limit"})
    limit = int_arg(args, "limit", 100, 1, 10000)
    with rt().conn() as conn:
        rows = _backup_rows(conn, limit)
    return jsonify({"count": len(rows), "backups": rows})


@bp.post("/api/v1/backups")
@require_admin
def post_backup():
    query_args(set())
    json_body(set())
    return _queued(enqueue(rt(), "backup", {}))


@bp.post("/api/v1/backups/<int:backup_id>/restore-test")
@require_admin
def post_restore_test(backup_id: int):
    query_args(set())
    json_body(set())
    if backup_id > MAX_ID:
        return api_error(404, "unknown_backup", f"no backup {backup_id}")
    with rt().conn() as conn:
        status = store.backup_status(conn, backup_id)
        if status is None:
            return api_error(404, "unknown_backup", f"no backup {backup_id}")
        try:  # the rule the command applies too
            backups_mod.testable_backup(conn, rt().config, str(backup_id))
        except BackupError as e:
            return api_error(409, "backup_unusable", e.message)
    return _queued(enqueue(rt(), "restore_test", {"backup": str(backup_id)}))


# --------------------------------------------------------------------------- alerts

_ALERT_FIELDS = openapi_doc.stored_fields("Alert")


@bp.get("/api/v1/alerts")
@require_read
def alerts():
    args = query_args({"status", "limit"})
    st = args.get("status", "open")
    if st not in ("open", "pending", "resolved", "all"):
        raise BadRequest(f"status={st[:40]!r} must be open, pending, resolved or all",
                         "bad_status")
    limit = int_arg(args, "limit", 200, 1, 10000)
    with rt().read_conn() as conn:
        rows = store.alerts_list(conn, status=st, limit=limit)
    out = [{k: r.get(k) for k in _ALERT_FIELDS} for r in rows]
    for a in out:
        if not isinstance(a["details"], dict):
            a["details"] = {}
    return jsonify({"count": len(out), "alerts": out})


# --------------------------------------------------------------------------- openapi

@bp.get("/api/v1/openapi.json")
def openapi():
    return jsonify(openapi_doc.spec())


# --------------------------------------------------------------------------- errors

def register(app) -> None:
    app.json = JSONProvider(app)
    app.register_blueprint(bp)
    columnar.register(app)
    corpactions.register(app)
    errors.register(app)
