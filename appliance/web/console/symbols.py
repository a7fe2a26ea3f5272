"""The symbol grid, one symbol's page with its chart data, and its backfill button."""
from __future__ import annotations

import datetime as dt
import logging
from urllib.parse import urlencode

from flask import Blueprint, abort, jsonify, render_template, request, url_for

from appliance import store
from appliance.config.loader import SYMBOL_RE
from appliance.core import timeframes
from appliance.core.adjustment import MODES, BadMode, mode_of
from appliance.store import minutes as mstore
from appliance.web import columnar
from appliance.web.bars import exchange_tz, exchange_zone
from appliance.web.console import chart
from appliance.web.console.common import (
    SORT_KEYS,
    _done,
    _enqueue,
    admin_post,
    is_htmx,
    page,
    quality_class,
    rt,
)
from appliance.web.errors import BadRequest

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
        minutes = mstore.minute_stats(conn)
        rows = [dict(r, minutes=minutes.get(r["symbol"])) for r in store.symbol_rows(conn)]
    grid = rt().config["quality"]["grid"]
    shown = filtered_symbols(rows, args, grid)
    return page("symbols.html", "partials/symbols_table.html", "symbols-table",
                rows=shown, total=len(rows), args=args, grid=grid)


def _check_symbol(symbol: str) -> str:
    if not SYMBOL_RE.match(symbol or ""):
        abort(404)
    return symbol


def _ny_span(minutes: dict | None) -> dict | None:
    """Minute stats with their first and last bar as New York wall time."""
    if minutes is None:
        return None
    out = dict(minutes)
    for k in ("first_bar", "last_bar"):
        t = minutes[k]
        out[k + "_ny"] = t.astimezone(exchange_zone()).strftime("%Y-%m-%d %H:%M") if t else None
    return out


def _stored_range(row: dict, minutes: dict | None, timeframe: str) -> tuple:
    """The sessions the Download links ask for until the chart says which
    bars it shows (static/js/chart.js keeps them to the visible range)."""
    if timeframe in chart.INTRADAY and minutes and minutes.get("first_bar"):
        return (minutes["first_bar"].astimezone(exchange_zone()).date(),
                minutes["last_bar"].astimezone(exchange_zone()).date())
    return row.get("first_session"), row.get("last_session")


@bp.get("/symbols/<symbol>")
def symbol_page(symbol: str):
    """The symbol's facts, its chart (timeframes 1m..1w; the intraday ones
    when it has minute bars), invalid candles and gaps."""
    symbol = _check_symbol(symbol)
    adjust = _adjust_arg(request.args)
    timeframe = request.args.get("timeframe", "1d")
    if timeframe not in chart.TIMEFRAMES:
        abort(400, f"timeframe={timeframe[:20]!r} must be one of {', '.join(chart.TIMEFRAMES)}")
    with rt().read_conn() as conn:
        row = store.symbol_row(conn, symbol)
        if row is None:
            abort(404)
        minutes = _ny_span(mstore.minute_stats_of(conn, symbol))
        invalid = store.invalid_candles(conn, symbol, limit=500, tz=exchange_tz())
        gaps = store.gaps(conn, symbol=symbol, limit=200, tz=exchange_tz())
        dividends = store.dividends.dividends_for(conn, symbol, tz=exchange_tz())
        security = store.securities.security(conn, symbol)
    configured = symbol in {s.symbol for s in rt().config.symbols}
    offered = [tf for tf in chart.TIMEFRAMES if minutes or tf not in chart.INTRADAY]
    return render_template("symbol.html", symbol=symbol, row=row, invalid=invalid, gaps=gaps,
                           download_range=_stored_range(row, minutes, timeframe),
                           adjust=adjust, adjusted=adjust != "none", adjust_modes=MODES,
                           dividends=dividends, security=security,
                           configured=configured, minutes=minutes,
                           timeframe=timeframe, timeframes=offered,
                           qclass=quality_class(row["quality_score"] if row["records"] else None))


@bp.get("/symbols/<symbol>/download")
def download(symbol: str):
    """The Download links: the symbol's bars of the range shown (``start``,
    ``end``, ``timeframe``, prices, ``format`` csv or parquet) in one file,
    not the first page of the API's answer."""
    symbol = _check_symbol(symbol)
    with rt().read_conn() as conn:
        if store.symbol_row(conn, symbol) is None:
            abort(404)
    return columnar.symbol_download(symbol)


def _adjust_arg(a) -> str:
    """The chart's adjustment mode: ``adjust`` (none, splits, total), or the
    older ``adjusted`` (1 or true: splits); none by default."""
    if a.get("adjust"):
        try:
            return mode_of(a["adjust"])
        except BadMode as e:
            raise BadRequest(str(e), "bad_adjust") from None
    return mode_of(a.get("adjusted") in ("1", "true"))


def _chart_args() -> tuple[str, str, dt.date | None]:
    """(timeframe, adjust, end) of a chart request, checked."""
    a = request.args
    timeframe = a.get("timeframe", "1d")
    if timeframe not in timeframes.ALL:
        raise BadRequest(f"timeframe={timeframe[:20]!r} must be one of "
                         f"{', '.join(timeframes.ALL)}", "bad_timeframe")
    end = None
    if a.get("end"):
        try:
            end = dt.date.fromisoformat(a["end"])
        except ValueError:
            raise BadRequest(f"end={a['end'][:20]!r} is not a date (YYYY-MM-DD)",
                             "bad_date") from None
    return timeframe, _adjust_arg(a), end


@bp.get("/console/api/chart/<symbol>")
def chart_data(symbol: str):
    """One page of the symbol chart (``chart.page``): ``timeframe`` (default
    1d), ``adjust`` (none, splits or total; the older ``adjusted=1`` is
    splits), ``end`` (a session date; default the latest bar)."""
    symbol = _check_symbol(symbol)
    timeframe, adjust, end = _chart_args()
    with rt().read_conn() as conn:
        data = chart.page(conn, symbol, timeframe, adjust=adjust, end=end)
    resp = jsonify({"symbol": symbol, "timeframe": timeframe, "adjusted": adjust != "none",
                    "adjust": adjust, **data})
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
