"""Corporate actions and identity out: ``GET /api/v1/dividends/{symbol}`` (a
symbol's stored cash dividends with what each contributes to
``adjust=total``; the adjustment itself is read with the bars,
``store.adjustment``) and ``GET /api/v1/universe?as_of=`` (the securities
that traded on a date, with the ticker each had). Their OpenAPI parts:
``openapi_dividends``."""
from __future__ import annotations

import datetime as dt

from flask import Blueprint, current_app, jsonify

from appliance import store
from appliance.web.auth import require_read
from appliance.web.bars import exchange_tz, exchange_zone
from appliance.web.errors import BadRequest, api_error
from appliance.web.params import date_arg, known_symbol, query_args, symbol_arg

bp = Blueprint("corpactions", __name__)


@bp.get("/api/v1/dividends/<path:symbol>")
@require_read
def dividends(symbol: str):
    """A symbol's stored cash dividends, oldest first, each with the factor it
    contributes to ``adjust=total`` (null when it is not applied, and why)."""
    args = query_args({"start", "end"})
    symbol = symbol_arg(symbol)
    start = date_arg(args, "start", None)
    end = date_arg(args, "end", None)
    if start and end and start > end:
        raise BadRequest(f"start ({start}) is after end ({end})", "bad_range")
    with current_app.config["RUNTIME"].read_conn() as conn:
        if not known_symbol(conn, symbol):
            return api_error(404, "unknown_symbol",
                             f"symbol {symbol} is not configured and has no stored data")
        rows = store.dividends.dividends_for(conn, symbol, start, end, tz=exchange_tz())
    out = []
    for r in rows:
        problem = r["problem"]
        if problem is None and r["factor"] is None:
            problem = ("no valid daily bar before the ex-date" if r["close_before"] is None
                       else "cash not below the close before the ex-date")
        out.append({"ex_dividend_date": r["ex_dividend_date"],
                    "dividend_type": r["dividend_type"], "cash_amount": r["cash_amount"],
                    "currency": r["currency"], "declaration_date": r["declaration_date"],
                    "record_date": r["record_date"], "pay_date": r["pay_date"],
                    "frequency": r["frequency"], "close_before": r["close_before"],
                    "factor": r["factor"], "applied": r["factor"] is not None,
                    "problem": problem, "source": r["source"]})
    return jsonify({"symbol": symbol, "count": len(out), "dividends": out})


@bp.get("/api/v1/universe")
@require_read
def universe():
    """The securities that traded on ``as_of`` (default today, New York) with
    the ticker each had then, from the stored reference data (listings,
    ticker changes, delistings)."""
    args = query_args({"as_of"})
    as_of = date_arg(args, "as_of", None) or dt.datetime.now(exchange_zone()).date()
    with current_app.config["RUNTIME"].read_conn() as conn:
        rows = store.securities.universe(conn, as_of)
    return jsonify({"as_of": as_of, "count": len(rows), "securities": rows})


def register(app) -> None:
    app.register_blueprint(bp)
