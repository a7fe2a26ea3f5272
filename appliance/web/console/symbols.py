"""The symbol grid, one symbol's page with its chart data, and its backfill button."""
from __future__ import annotations

import logging
import math
from urllib.parse import urlencode

from flask import (Blueprint, abort, jsonify, render_template, request, url_for)

from ... import store
from ...config import SYMBOL_RE
from .common import (quality_class, SORT_KEYS, _done, _enqueue, admin_post, is_htmx, page, rt)

log = logging.getLogger("appliance.console")

bp = Blueprint("symbols", __name__)


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
    with rt().read_conn() as conn:
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
    with rt().read_conn() as conn:
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
    markers for split/jump gaps, missing sessions and invalid candles. Each
    marker (and an invalid candle) carries a ``role``; the page colours it
    from the stylesheet's ``--chart-*`` variables."""
    symbol = _check_symbol(symbol)
    adjusted = request.args.get("adjusted") in ("1", "true")
    with rt().read_conn() as conn:
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
                item["role"] = "invalid"
            candles.append(item)
        if not r["validated"]:
            markers.append({"time": t, "position": "belowBar", "role": "invalid",
                            "shape": "circle",
                            "text": "invalid: " + ", ".join(r.get("issues") or [])})
        if r["gap_detected"] and r["gap_kind"] in ("split", "jump"):
            markers.append({"time": t, "position": "aboveBar", "role": r["gap_kind"],
                            "shape": "arrowDown", "text": r["gap_kind"]})
    have = {c["time"] for c in candles}
    for m in missing:
        t = m["session"].isoformat()
        if t not in have:
            candles.append({"time": t})
            have.add(t)
        markers.append({"time": t, "position": "inBar", "role": "missing",
                        "shape": "square", "text": "missing"})
    candles.sort(key=lambda c: c["time"])
    markers.sort(key=lambda m: m["time"])
    resp = jsonify({"symbol": symbol, "adjusted": adjusted, "candles": candles,
                    "markers": markers})
    resp.headers["Cache-Control"] = "no-store"
    return resp


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
    return _done("partials/run_queued.html", url_for("console.jobs.jobs"), run_id=run_id,
                 what=f"Backfill of {symbol}")
