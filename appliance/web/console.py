"""The HTMX ops console: server-rendered pages, one partial per hx-target.

Every page works without JavaScript (plain links, GET forms, POST forms that
redirect); htmx only enhances: panels poll for changes, filters swap the
table in place, buttons swap their result in. A request with ``HX-Request``
and the page's ``HX-Target`` gets the partial alone, any other request the
full page (which includes the same partial).

Reading needs no login unless ``server.login_for_read`` is true or
``server.read_token`` is set (checked app-wide by ``auth.gate``). Everything
that changes something is a POST that needs an admin login (a form checking
``server.admin_token``, a server-side session, see ``sessions.py``) and the session's CSRF
token (form field ``csrf_token`` or header ``X-CSRFToken``, which htmx sends
from ``hx-headers`` on <body>). Values are escaped by Jinja's autoescape;
secrets come only from ``Config.masked()``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import importlib
import importlib.util
import json
import logging
import math
import secrets
import shutil
from functools import wraps
from urllib.parse import urlencode

import psycopg
import redis
import yaml
from flask import (Blueprint, Response, abort, current_app, g, jsonify, redirect, render_template,
                   request, session, url_for)
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout

from .. import health as health_mod
from .. import store, units
from ..config import SYMBOL_RE, diff_configs, load_config
from ..errors import ConfigError
from . import auth
from .api import MAX_ID
from .auth import admin_token, fingerprint, is_admin, token_matches

log = logging.getLogger("appliance.console")

bp = Blueprint("console", __name__)

SORT_KEYS = ("symbol", "first_session", "last_session", "records", "completeness",
             "quality_score", "gaps", "missing_sessions", "last_update")
GAP_KINDS = ("split", "jump", "missing")
EVENT_LEVELS = ("debug", "info", "warning", "error")
FINISHED = ("ok", "partial", "failed")


def rt():
    return current_app.config["RUNTIME"]


# --------------------------------------------------------------------------- request helpers

def is_htmx() -> bool:
    return request.headers.get("HX-Request", "").lower() == "true"


def hx_target() -> str | None:
    return request.headers.get("HX-Target") if is_htmx() else None


def page(template: str, partial: str, target: str, status: int = 200, **ctx):
    """The partial alone for an htmx request aimed at ``target``, else the page."""
    if hx_target() == target and not request.headers.get("HX-Boosted"):
        return render_template(partial, **ctx), status
    return render_template(template, **ctx), status


def csrf_token() -> str:
    tok = session.get("csrf")
    if not tok:
        tok = secrets.token_urlsafe(32)
        session["csrf"] = tok
    return tok


def _csrf_ok() -> bool:
    expected = session.get("csrf")
    given = request.headers.get("X-CSRFToken") or request.form.get("csrf_token")
    return bool(expected and given) and hmac.compare_digest(str(given), str(expected))


def _refused(message: str, status: int = 403):
    if is_htmx():
        return render_template("partials/refused_inline.html", message=message), status
    return render_template("refused.html", message=message), status


def admin_post(fn):
    """A console action: admin login and the session's CSRF token, else 403."""
    @wraps(fn)
    def wrapper(*a, **kw):
        if not admin_token():
            return _refused("Actions are disabled: set server.admin_token in appliance.yaml "
                            "and reload.")
        if not is_admin():
            return _refused("This action needs an admin login.")
        if not _csrf_ok():
            return _refused("Missing or wrong CSRF token: reload the page and try again.")
        return fn(*a, **kw)
    return wrapper


def _actor() -> str:
    return f"console admin ({request.remote_addr or 'unknown'})"


def _done(result_template: str, fallback: str, **ctx):
    """After an action: the result partial for htmx, a redirect for a plain form."""
    if is_htmx():
        return render_template(result_template, **ctx)
    return redirect(fallback, code=303)


@bp.before_request
def _nonce():
    # reading is gated app-wide (auth.gate), before this
    g.csp_nonce = secrets.token_urlsafe(16)
    return None


@bp.after_request
def _headers(resp: Response):
    nonce = getattr(g, "csp_nonce", "")
    resp.headers.setdefault(
        "Content-Security-Policy",
        f"default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    if resp.mimetype == "text/html":
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.vary.add("HX-Request")
        resp.vary.add("HX-Target")
    return resp


@bp.context_processor
def _context():
    cfg = rt().config
    return {
        "csrf_token": csrf_token,
        "csp_nonce": getattr(g, "csp_nonce", ""),
        "is_admin": is_admin(),
        "logged_in": getattr(auth.principal(), "kind", None) == "session",
        "admin_enabled": bool(admin_token()),
        "provider_name": cfg["provider"]["name"],
        "refresh_seconds": int(cfg["dashboard"]["refresh_seconds"]),
        "nav_active": request.endpoint,
    }


def _unavailable(e):
    log.warning("console: service unavailable: %s", e)
    what = "Redis (the job queue)" if isinstance(e, redis.RedisError) else "the database"
    return render_template("refused.html", title="Service unavailable",
                           message=f"{what} is unreachable right now; this page will work again "
                                   "when it is back."), 503


bp.register_error_handler(psycopg.OperationalError, _unavailable)
bp.register_error_handler(PoolTimeout, _unavailable)
bp.register_error_handler(redis.RedisError, _unavailable)


# --------------------------------------------------------------------------- formatting filters

def _age_seconds(ts) -> float | None:
    if ts is None:
        return None
    if isinstance(ts, str):
        try:
            ts = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(ts, dt.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.timezone.utc)
        return (dt.datetime.now(dt.timezone.utc) - ts).total_seconds()
    return None


def f_age(ts) -> str:
    s = _age_seconds(ts)
    return "—" if s is None else f_duration(max(0.0, s)) + " ago"


def f_duration(s) -> str:
    if s is None:
        return "—"
    s = float(s)
    if s < 1:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    if s < 86400:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def f_bytes(n) -> str:
    return units.human_bytes(n, missing="—")


def f_num(n, digits: int = 0) -> str:
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "—"
    return f"{n:,.{digits}f}"


def f_pct(x, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{100 * x:.{digits}f} %"


def f_ts(ts) -> str:
    if ts is None:
        return "—"
    if isinstance(ts, dt.datetime):
        if ts.tzinfo is not None:
            ts = ts.astimezone(dt.timezone.utc)
        return ts.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(ts)


def f_json(v) -> str:
    return json.dumps(v, default=str, ensure_ascii=False, sort_keys=True)


@bp.record_once
def _filters(state):
    app = state.app
    app.add_template_filter(f_age, "age")
    app.add_template_filter(f_duration, "duration")
    app.add_template_filter(f_bytes, "bytes")
    app.add_template_filter(f_num, "num")
    app.add_template_filter(f_pct, "pct")
    app.add_template_filter(f_ts, "ts")
    app.add_template_filter(f_json, "compactjson")
    app.jinja_env.globals["quality_class"] = quality_class
    app.jinja_env.globals["sort_url"] = sort_url


# --------------------------------------------------------------------------- dashboard

def quality_class(score, grid=None) -> str:
    grid = grid or rt().config["quality"]["grid"]
    if score is None:
        return "q-red"
    if score > grid["green"]:
        return "q-green"
    if score >= grid["yellow"]:
        return "q-yellow"
    return "q-red"


def badge_level(h: dict, cfg) -> tuple[str, str, list[str]]:
    """(css class, text, reasons) from the health snapshot: the text is
    /health's status, the colour its severity (red for anything critical)."""
    text = {"healthy": "Healthy", "degraded": "Degraded", "unhealthy": "Unhealthy"}[h["status"]]
    cls = {"critical": "unhealthy", "warning": "degraded", "ok": "healthy"}[h["severity"]]
    if h["severity"] == "critical" and h["status"] == "degraded":
        text = "Degraded · critical"
    return cls, text, list(h["reasons"])


def dashboard_data() -> dict:
    r = rt()
    cfg = r.config
    h = health_mod.compute(r)
    sb = health_mod.status_body(r, h)
    cls, text, reasons = badge_level(h, cfg)
    return {"h": h, "sb": sb, "snap": h["_snap"], "cfg": cfg, "badge_class": cls,
            "badge_text": text, "reasons": reasons,
            "alerts": sb.get("alerts") or [],
            "configured_symbols": len(cfg.active_symbols)}


#: dashboard panels, in page order: id -> partial template
PANELS = {
    "dash-banner": "partials/demo_banner.html",
    "dash-badge": "partials/dash_badge.html",
    "card-symbols": "partials/card_symbols.html",
    "card-records": "partials/card_records.html",
    "card-validation": "partials/card_validation.html",
    "card-latest": "partials/card_latest.html",
    "card-gaps": "partials/card_gaps.html",
    "card-scheduler": "partials/card_scheduler.html",
    "card-backup": "partials/card_backup.html",
    "card-restore": "partials/card_restore.html",
    "dash-alerts": "partials/dash_alerts.html",
}


def _digest(html: str) -> str:
    return hashlib.blake2s(html.encode("utf-8"), digest_size=4).hexdigest()


def render_panels(data: dict) -> dict[str, str]:
    return {pid: render_template(tpl, oob=False, **data) for pid, tpl in PANELS.items()}


def poll_url(digests: dict[str, str], refresh: int) -> str:
    return url_for("console.dashboard_update",
                   d=".".join(digests[p] for p in PANELS), r=str(refresh))


@bp.get("/")
@bp.get("/dashboard")
def dashboard():
    data = dashboard_data()
    panels = render_panels(data)
    digests = {k: _digest(v) for k, v in panels.items()}
    refresh = int(data["cfg"]["dashboard"]["refresh_seconds"])
    return render_template("dashboard.html", panels=panels,
                           poll_url=poll_url(digests, refresh), **data)


@bp.get("/dashboard/update")
def dashboard_update():
    """The panels that changed since the digests in ``d``, as out-of-band swaps
    (and the poller itself with the new digests); 204 when nothing changed."""
    data = dashboard_data()
    panels = render_panels(data)
    digests = {k: _digest(v) for k, v in panels.items()}
    refresh = int(data["cfg"]["dashboard"]["refresh_seconds"])
    old = (request.args.get("d") or "").split(".")
    old_refresh = request.args.get("r")
    changed = [p for i, p in enumerate(PANELS)
               if i >= len(old) or old[i] != digests[p]]
    if not changed and old_refresh == str(refresh):
        return Response(status=204)
    if not is_htmx():
        return redirect(url_for("console.dashboard"))
    html = [panels[p].replace(f'id="{p}"', f'id="{p}" hx-swap-oob="true"', 1) for p in changed]
    html.append(render_template("partials/dash_poller.html", oob=True,
                                poll_url=poll_url(digests, refresh), refresh_seconds=refresh))
    return "\n".join(html)


def _ack_alert(conn, alert_id: int, actor: str) -> bool:
    fn = getattr(store, "acknowledge_alert", None)
    if fn is not None:
        return bool(fn(conn, alert_id, actor))
    cur = conn.execute(
        """UPDATE alerts SET acknowledged_at = now(), acknowledged_by = %s
           WHERE id = %s AND status = 'open' AND acknowledged_at IS NULL""", (actor, alert_id))
    return cur.rowcount == 1


@bp.post("/alerts/<int:alert_id>/ack")
@admin_post
def ack_alert(alert_id: int):
    with rt().conn() as conn:
        if _ack_alert(conn, alert_id, _actor()):
            store.add_event(conn, "info", "alert", f"alert {alert_id} acknowledged",
                            {"alert_id": alert_id, "by": _actor()})
    if is_htmx():
        data = dashboard_data()
        return render_template("partials/dash_alerts.html", oob=False, **data)
    return redirect(url_for("console.dashboard"), code=303)


# --------------------------------------------------------------------------- symbols

def sort_url(endpoint: str, key: str, args: dict, **extra) -> str:
    cur_sort, cur_dir = args.get("sort"), args.get("dir")
    direction = "desc" if (cur_sort == key and cur_dir != "desc") else "asc"
    q = {k: v for k, v in args.items() if v and k not in ("sort", "dir")}
    q.update(sort=key, dir=direction)
    return url_for(endpoint, **extra) + "?" + urlencode(q)


def _symbol_args() -> dict:
    a = request.args
    sort = a.get("sort") if a.get("sort") in SORT_KEYS else "symbol"
    direction = "desc" if a.get("dir") == "desc" else "asc"
    quality = a.get("quality") if a.get("quality") in ("green", "yellow", "red") else ""
    q = (a.get("q") or "").strip().upper()[:20]
    status = a.get("status") if a.get("status") in ("active", "inactive") else ""
    return {"sort": sort, "dir": direction, "quality": quality, "q": q, "status": status}


def filtered_symbols(rows: list[dict], args: dict, grid) -> list[dict]:
    out = []
    for r in rows:
        r = dict(r)
        r["qclass"] = quality_class(r["quality_score"] if r["records"] else None, grid)
        if args["q"] and args["q"] not in r["symbol"]:
            continue
        if args["quality"] and r["qclass"] != "q-" + args["quality"]:
            continue
        if args["status"] == "active" and not r["active"]:
            continue
        if args["status"] == "inactive" and r["active"]:
            continue
        out.append(r)
    key = args["sort"]
    present = [r for r in out if r.get(key) is not None]
    absent = [r for r in out if r.get(key) is None]
    present.sort(key=lambda r: r[key], reverse=args["dir"] == "desc")
    return present + absent


@bp.get("/symbols")
def symbols():
    args = _symbol_args()
    with rt().conn() as conn:
        rows = store.symbol_rows(conn)
    grid = rt().config["quality"]["grid"]
    shown = filtered_symbols(rows, args, grid)
    return page("symbols.html", "partials/symbols_table.html", "symbols-table",
                rows=shown, total=len(rows), args=args, grid=grid)


def _check_symbol(symbol: str) -> str:
    if not SYMBOL_RE.match(symbol or ""):
        abort(404)
    return symbol


@bp.get("/symbols/<symbol>")
def symbol_page(symbol: str):
    symbol = _check_symbol(symbol)
    adjusted = request.args.get("adjusted") == "1"
    with rt().conn() as conn:
        row = store.symbol_row(conn, symbol)
        if row is None:
            abort(404)
        invalid = store.invalid_candles(conn, symbol, limit=500)
        gaps = store.gaps(conn, symbol=symbol, limit=200)
    configured = symbol in {s.symbol for s in rt().config.symbols}
    return render_template("symbol.html", symbol=symbol, row=row, invalid=invalid, gaps=gaps,
                           adjusted=adjusted, configured=configured,
                           qclass=quality_class(row["quality_score"] if row["records"] else None))


def _num(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@bp.get("/console/api/chart/<symbol>")
def chart_data(symbol: str):
    """Candles (raw or split-adjusted), whitespace for missing sessions, and
    markers for split/jump gaps, missing sessions and invalid candles."""
    symbol = _check_symbol(symbol)
    adjusted = request.args.get("adjusted") in ("1", "true")
    with rt().conn() as conn:
        series = store.chart_series(conn, symbol, adjusted=adjusted)
        missing = store.gaps(conn, symbol=symbol, kind="missing", limit=5000)
    candles, markers = [], []
    for r in series:
        t = r["time"].isoformat()
        o, hi, lo, c = (_num(r[k]) for k in ("open", "high", "low", "close"))
        if None in (o, hi, lo, c):
            candles.append({"time": t})
        else:
            item = {"time": t, "open": o, "high": hi, "low": lo, "close": c}
            if not r["validated"]:
                item.update(color="#9aa5b5", borderColor="#b42318", wickColor="#b42318")
            candles.append(item)
        if not r["validated"]:
            markers.append({"time": t, "position": "belowBar", "color": "#b42318",
                            "shape": "circle",
                            "text": "invalid: " + ", ".join(r.get("issues") or [])})
        if r["gap_detected"] and r["gap_kind"] in ("split", "jump"):
            markers.append({"time": t, "position": "aboveBar",
                            "color": "#1f5fbf" if r["gap_kind"] == "split" else "#8a5a00",
                            "shape": "arrowDown", "text": r["gap_kind"]})
    have = {c["time"] for c in candles}
    for m in missing:
        t = m["session"].isoformat()
        if t not in have:
            candles.append({"time": t})
            have.add(t)
        markers.append({"time": t, "position": "inBar", "color": "#b42318",
                        "shape": "square", "text": "missing"})
    candles.sort(key=lambda c: c["time"])
    markers.sort(key=lambda m: m["time"])
    resp = jsonify({"symbol": symbol, "adjusted": adjusted, "candles": candles,
                    "markers": markers})
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _enqueue(job: str, params: dict) -> int:
    from ..queue import enqueue
    return enqueue(rt(), job, params)


@bp.post("/symbols/<symbol>/backfill")
@admin_post
def symbol_backfill(symbol: str):
    symbol = _check_symbol(symbol)
    if symbol not in {s.symbol for s in rt().config.symbols if s.active}:
        return render_template("partials/action_result.html", ok=False,
                               message=f"{symbol} is not an active symbol in appliance.yaml; "
                                       f"add it and reload (a reload backfills new symbols)."), \
            (200 if is_htmx() else 422)
    run_id = _enqueue("backfill", {"symbols": [symbol]})
    return _done("partials/run_queued.html", url_for("console.jobs"), run_id=run_id,
                 what=f"Backfill of {symbol}")


# --------------------------------------------------------------------------- jobs

def run_view(r: dict) -> dict:
    res = r.get("result") or {}
    prog = r.get("progress") or {}
    dur = None
    if r.get("started_at"):
        end = r.get("finished_at") or dt.datetime.now(dt.timezone.utc)
        dur = (end - r["started_at"]).total_seconds()
    rows = None
    if "inserted" in res or "updated" in res:
        rows = (res.get("inserted") or 0) + (res.get("updated") or 0)
    elif "rows" in prog:
        rows = prog.get("rows")
    elif "rows" in res:
        rows = res.get("rows")
    requests_ = res.get("requests", prog.get("requests"))
    errors = []
    if r.get("error"):
        errors.append(r["error"])
    failed = res.get("failed")
    if isinstance(failed, dict) and failed:
        errors.extend(f"{k}: {v}" for k, v in failed.items())
    elif isinstance(failed, list) and failed:
        errors.extend(str(x) for x in failed)
    pct = None
    if prog.get("symbols_total"):
        pct = round(100 * (prog.get("symbols_done") or 0) / prog["symbols_total"])
    elif prog.get("sessions_total"):
        pct = round(100 * (prog.get("sessions_done") or 0) / prog["sessions_total"])
    steps = prog.get("steps") if isinstance(prog.get("steps"), list) else []
    if steps and pct is None:
        done = sum(1 for s in steps if isinstance(s, dict) and s.get("status") in ("ok", "failed"))
        pct = round(100 * done / len(steps))
    return {**r, "duration_s": dur, "rows": rows, "requests": requests_, "errors": errors,
            "pct": pct, "steps": steps, "running": r["status"] not in FINISHED,
            "progress_obj": prog, "result_obj": res}


@bp.get("/jobs")
def jobs():
    from ..jobs import runs
    job = request.args.get("job") or ""
    with rt().conn() as conn:
        rows = runs.recent(conn, job=job or None, limit=100)
        names = [r[0] for r in conn.execute("SELECT DISTINCT job FROM job_runs ORDER BY 1")]
    views = [run_view(r) for r in rows]
    return page("jobs.html", "partials/jobs_table.html", "jobs-table", runs=views, job=job,
                job_names=names, schedules=dict(rt().config["schedules"]))


def _get_run(run_id: int) -> dict:
    from ..jobs import runs
    if run_id > MAX_ID:
        abort(404)
    with rt().conn() as conn:
        r = runs.get(conn, run_id)
    if r is None:
        abort(404)
    return r


@bp.get("/jobs/<int:run_id>")
def job_run(run_id: int):
    v = run_view(_get_run(run_id))
    if is_htmx():
        return render_template("partials/job_row.html", r=v)
    return render_template("job.html", r=v)


@bp.post("/jobs/backfill")
@admin_post
def run_backfill():
    run_id = _enqueue("backfill", {})
    return _done("partials/run_queued.html", url_for("console.jobs"), run_id=run_id,
                 what="Backfill of all symbols")


@bp.post("/jobs/<name>/run")
@admin_post
def run_job(name: str):
    """Any scheduled job, now (the Jobs page's Run now buttons)."""
    from .api import JOB_NAMES
    if name not in JOB_NAMES:
        abort(404)
    params = {"backup": "latest"} if name == "restore_test" else {}
    run_id = _enqueue(name, params)
    return _done("partials/run_queued.html", url_for("console.jobs"), run_id=run_id,
                 what=f"{name.replace('_', ' ').capitalize()}")


# --------------------------------------------------------------------------- backups

def backups_module():
    """appliance.backups when it exists (and has list_backups), else None."""
    if importlib.util.find_spec("appliance.backups") is None:
        return None
    mod = importlib.import_module("appliance.backups")
    return mod if hasattr(mod, "list_backups") else None


def _as_dict(r) -> dict:
    if isinstance(r, dict):
        return r
    if hasattr(r, "_asdict"):
        return r._asdict()
    import dataclasses
    if dataclasses.is_dataclass(r):
        return dataclasses.asdict(r)
    return dict(getattr(r, "__dict__", {}))


def _disk(path) -> dict | None:
    """Free space where backups go (the nearest existing parent when the
    folder is not created yet)."""
    from pathlib import Path
    p = units.nearest_existing(path)
    try:
        u = shutil.disk_usage(p)
    except OSError as e:
        return {"error": f"{path}: {e.strerror or e}"}
    return {"total": u.total, "free": u.free, "exists": p == Path(path),
            "free_pct": round(100 * u.free / u.total, 1) if u.total else None}


def _latest_restore_runs(conn) -> dict[str, dict]:
    """backup id (as str) -> the newest restore_test run for it."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT DISTINCT ON (params->>'backup') * FROM job_runs
                       WHERE job = 'restore_test' ORDER BY params->>'backup', created_at DESC""")
        return {r["params"].get("backup"): r for r in cur.fetchall()}


@bp.get("/backups")
def backups():
    mod = backups_module()
    cfg = rt().config
    rows, running = [], {}
    if mod is not None:
        with rt().conn() as conn:
            rows = [_as_dict(r) for r in mod.list_backups(conn, limit=100)]
            running = {k: run_view(v) for k, v in _latest_restore_runs(conn).items()
                       if v["status"] not in FINISHED}
    disk = _disk(cfg["backup"]["path"])
    return page("backups.html", "partials/backups_table.html", "backups-table",
                available=mod is not None, rows=rows, running=running, disk=disk,
                backup_path=cfg["backup"]["path"], min_free_pct=cfg["backup"]["min_free_pct"])


@bp.post("/backups")
@admin_post
def backup_now():
    run_id = _enqueue("backup", {})
    return _done("partials/run_queued.html", url_for("console.backups"), run_id=run_id,
                 what="Backup")


@bp.post("/backups/<int:backup_id>/restore-test")
@admin_post
def restore_test(backup_id: int):
    row = None
    if backup_id <= MAX_ID:
        with rt().conn() as conn:
            row = conn.execute("SELECT status FROM backups WHERE id = %s", (backup_id,)).fetchone()
    if row is None or row[0] != "ok":
        msg = (f"There is no backup {backup_id}." if row is None else
               f"Backup {backup_id} is {row[0]}; only a backup with status ok can be "
               f"restore-tested.")
        return render_template("partials/action_result.html", ok=False, message=msg), \
            (200 if is_htmx() else 409)
    run_id = _enqueue("restore_test", {"backup": str(backup_id)})
    if not is_htmx():
        return redirect(url_for("console.restore_progress", run_id=run_id), code=303)
    return render_template("partials/restore_progress.html", r=run_view(_get_run(run_id)),
                           backup_id=backup_id)


def _restore_outcome(r: dict) -> dict | None:
    """The catalogue's record of a finished restore test: the comparisons made."""
    if r["running"]:
        return None
    bid = (r.get("result_obj") or {}).get("backup_id") or (r.get("params") or {}).get("backup")
    mod = backups_module()
    if mod is None or not str(bid or "").isdigit() or not hasattr(mod, "get_backup"):
        return None
    with rt().conn() as conn:
        row = mod.get_backup(conn, int(bid))
    if not row:
        return None
    res = row.get("restore_test_result") or {}
    return {"checks": [c for c in res.get("checks") or [] if isinstance(c, dict)],
            "mismatches": res.get("mismatches") or [], "validation": res.get("validation"),
            "restore_seconds": res.get("restore_seconds")}


@bp.get("/restore-tests/<int:run_id>")
def restore_progress(run_id: int):
    r = run_view(_get_run(run_id))
    if r["job"] != "restore_test":
        abort(404)
    backup_id = (r.get("params") or {}).get("backup")
    outcome = _restore_outcome(r)
    if is_htmx():
        resp = Response(render_template("partials/restore_progress.html", r=r,
                                        backup_id=backup_id, outcome=outcome))
        if not r["running"]:
            resp.headers["HX-Trigger"] = "backups-changed"  # the table shows the new result
        return resp
    return render_template("restore.html", r=r, backup_id=backup_id, outcome=outcome)


# --------------------------------------------------------------------------- config

def _config_ctx() -> dict:
    r = rt()
    cfg = r.config
    with r.conn() as conn:
        reloads = store.config_reloads(conn, limit=10)
    text = yaml.safe_dump(cfg.masked(), sort_keys=False, default_flow_style=False,
                          allow_unicode=True)
    keys = auth.key_stats(r)
    api_keys = [{"name": k["name"], "scopes": list(k.get("scopes") or ["read"]),
                 "requests_per_minute": k.get("requests_per_minute"), **keys.get(k["name"], {})}
                for k in cfg["server"].get("api_keys") or ()]
    for k in api_keys:
        if k.get("last_used"):
            k["last_used"] = dt.datetime.fromtimestamp(k["last_used"], dt.timezone.utc)
    return {"cfg": cfg, "yaml_text": text, "reloads": reloads, "version": r.config_version(),
            "api_keys": api_keys}


@bp.get("/config")
def config_page():
    return render_template("config.html", **_config_ctx())


def _diff_lines(diff: dict) -> list[tuple[str, str]]:
    """(css class, text) lines of a config diff; values are already masked."""
    out = []
    for s in diff.get("symbols_added") or []:
        out.append(("add", f"+ symbols: {s}"))
    for s in diff.get("symbols_removed") or []:
        out.append(("del", f"- symbols: {s} (its data is kept)"))
    for s, ch in (diff.get("symbols_since_changed") or {}).items():
        out.append(("del", f"- {s}.since: {ch.get('old')}"))
        out.append(("add", f"+ {s}.since: {ch.get('new')}"))
    for k, ch in (diff.get("changed") or {}).items():
        out.append(("hunk", f"@ {k}"))
        out.append(("del", f"- {k}: {f_json(ch.get('old'))}"))
        out.append(("add", f"+ {k}: {f_json(ch.get('new'))}"))
    for k in diff.get("restart_required") or []:
        out.append(("meta", f"! {k} needs a restart"))
    return out


@bp.post("/config/check")
@admin_post
def config_check():
    running = rt().config
    try:
        new = load_config(running.path)
    except ConfigError as e:
        ctx = {"ok": False, "errors": list(e.errors), "action": "check"}
    else:
        diff = diff_configs(running, new)
        ctx = {"ok": True, "action": "check", "sha256": new.sha256, "diff_lines": _diff_lines(diff),
               "restart": diff["restart_required"]}
    if is_htmx():
        return render_template("partials/config_result.html", res=ctx)
    return render_template("config.html", result=ctx, **_config_ctx()), (200 if ctx["ok"] else 422)


@bp.post("/config/reload")
@admin_post
def config_reload():
    from .. import reload as reload_mod
    res = reload_mod.reload_config(rt(), source="console", actor=_actor())
    if res["ok"]:
        ctx = {"ok": True, "action": "reload", "sha256": res["sha256"],
               "diff_lines": _diff_lines(res["diff"]), "version": res["version"],
               "backfill_run_id": res.get("backfill_run_id"), "restart": []}
    else:
        ctx = {"ok": False, "action": "reload", "errors": list(res["errors"]),
               "diff_lines": _diff_lines(res.get("diff") or {})}
    if is_htmx():
        resp = Response(render_template("partials/config_result.html", res=ctx))
        if res["ok"]:
            resp.headers["HX-Trigger"] = "config-reloaded"
        return resp
    return render_template("config.html", result=ctx, **_config_ctx()), \
        (200 if res["ok"] else res.get("status", 422))


@bp.get("/config/running")
def config_running():
    """The running-config panel (refreshed after a reload)."""
    return render_template("partials/config_running.html", **_config_ctx())


# --------------------------------------------------------------------------- gaps, events

def _date_arg(name: str) -> dt.date | None:
    v = request.args.get(name) or ""
    try:
        return dt.date.fromisoformat(v) if v else None
    except ValueError:
        return None


def _float_arg(name: str) -> float | None:
    try:
        v = float(request.args.get(name) or "")
    except ValueError:
        return None
    return v if math.isfinite(v) else None


@bp.get("/gaps")
def gaps_page():
    kind = request.args.get("kind") if request.args.get("kind") in GAP_KINDS else ""
    sym = (request.args.get("symbol") or "").strip().upper()
    sym = sym if SYMBOL_RE.match(sym) else ""
    since, until = _date_arg("since"), _date_arg("until")
    min_jump = _float_arg("min_jump")
    with rt().conn() as conn:
        rows = store.gaps(conn, symbol=sym or None, kind=kind or None, since=since, until=until,
                          limit=1000)
    if min_jump is not None:
        rows = [r for r in rows if r["jump_pct"] is not None and abs(r["jump_pct"]) >= min_jump]
    args = {"kind": kind, "symbol": sym, "since": since.isoformat() if since else "",
            "until": until.isoformat() if until else "",
            "min_jump": "" if min_jump is None else f"{min_jump:g}"}
    counts = {k: sum(1 for r in rows if r["kind"] == k) for k in GAP_KINDS}
    unexplained = sum(1 for r in rows if r["kind"] == "jump")
    return page("gaps.html", "partials/gaps_table.html", "gaps-table", rows=rows, args=args,
                counts=counts, unexplained=unexplained, kinds=GAP_KINDS)


@bp.get("/events")
def events_page():
    level = request.args.get("level") if request.args.get("level") in EVENT_LEVELS else ""
    kind = (request.args.get("kind") or "")[:40]
    q = (request.args.get("q") or "")[:200]
    with rt().conn() as conn:
        rows = store.recent_events(conn, level=level or None, kind=kind or None, q=q or None,
                                   limit=300)
        kinds = store.event_kinds(conn)
    return page("events.html", "partials/events_table.html", "events-table", rows=rows,
                args={"level": level, "kind": kind, "q": q}, kinds=kinds, levels=EVENT_LEVELS)


# --------------------------------------------------------------------------- login

def _safe_next(target: str | None) -> str:
    """A local path to go to after the login, else the dashboard. Browsers drop
    tabs and newlines from URLs (``/\t/evil.example`` is ``//evil.example``, another
    host), so any control character or space refuses the target outright."""
    from urllib.parse import urlsplit
    if target and target.startswith("/") and not target.startswith("//") \
            and "\\" not in target and not any(ord(c) <= 0x20 or ord(c) == 0x7f for c in target):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("console.dashboard")


@bp.route("/login", methods=["GET", "POST"])
def login():
    nxt = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("login.html", next=nxt, error=None)
    if not _csrf_ok():
        return _refused("Missing or wrong CSRF token: reload the login page and try again.")
    addr = auth.client_addr()
    wait = auth.locked_for(addr)
    if wait:  # checked before the token: a locked-out address learns nothing
        auth.count_refusal("login")
        resp = render_template("login.html", next=nxt,
                               error=f"Too many failed logins from this address; try again "
                                     f"in {wait} s."), 429, {"Retry-After": str(wait)}
        return resp
    cfg = rt().config["server"]
    expected, reader = admin_token(), cfg["read_token"]
    if not expected and not reader:
        return render_template("login.html", next=nxt,
                               error="Login is disabled: set server.admin_token in "
                                     "appliance.yaml and reload."), 403
    given = request.form.get("token") or ""
    as_admin = token_matches(given, expected)
    if not as_admin and not token_matches(given, reader):
        # no sleep: under gevent it would not serialise guesses; the lockout does
        auth.record_failure(addr, "login", "a console login")
        return render_template("login.html", next=nxt,
                               error="Wrong token." if reader else "Wrong admin token."), 403
    session.clear()
    session.regenerate()  # a new session id: one planted before the login is worthless
    session["admin" if as_admin else "read"] = True
    session["fp"] = fingerprint(expected if as_admin else reader)
    session["csrf"] = secrets.token_urlsafe(32)
    log.info("console %s login from %s", "admin" if as_admin else "read-only", addr)
    return redirect(nxt, code=303)


@bp.post("/logout")
def logout():
    if not _csrf_ok():
        return _refused("Missing or wrong CSRF token.")
    session.clear()  # deletes the server-side session: the cookie is worthless from now
    return redirect(url_for("console.dashboard"), code=303)


def register(app) -> None:
    app.register_blueprint(bp)
