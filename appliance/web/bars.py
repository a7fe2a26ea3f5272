"""``/api/v1/historical/{symbol}?timeframe=...`` for every timeframe but
``1d`` (whose answer ``api.historical`` keeps exactly as it always was):
1m and its rollups 5m..4h, and 1w from the daily bars.

Cursor pagination: at most ``limit`` bars (default and maximum
``PAGE_MAX``) per answer; when more remain in the range, the answer carries
``next``, the same request with ``cursor`` set past the last bar returned
(CSV: a ``Link: <...>; rel="next"`` header). The cursor is opaque to
clients; it is the last bar's start in Unix milliseconds.
"""
from __future__ import annotations

import datetime as dt
import json
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from flask import Response, current_app, request

from appliance import store
from appliance.core import calendar as tcal
from appliance.core import timeframes
from appliance.store import minutes as mstore
from appliance.web.errors import BadRequest

PAGE_MAX = 50_000
#: Bars sent per chunk of a streamed answer.
CHUNK = 2000




def exchange_tz() -> str:
    """The exchange time zone of the running config (``calendar.exchange_tz``)."""
    return tcal.exchange_tz(current_app.config["RUNTIME"].config["calendar"])


def exchange_zone() -> ZoneInfo:
    return ZoneInfo(exchange_tz())


def timeframe_arg(args) -> str:
    """``timeframe`` (default 1d) checked; ``cursor`` only where it applies."""
    timeframe = args.get("timeframe", "1d")
    if timeframe not in timeframes.ALL:
        raise BadRequest(f"timeframe={timeframe[:20]!r} must be one of "
                         f"{', '.join(timeframes.ALL)}", "bad_timeframe")
    if timeframe == "1d" and "cursor" in args:
        raise BadRequest("cursor is for timeframes other than 1d (use start/end for daily bars)",
                         "bad_cursor")
    return timeframe


def resolutions(r: dict, minutes: dict | None) -> list[dict]:
    """The stored resolutions of one symbol with their first and last bar (the
    derived ones, 5m..4h and 1w, span the same bars)."""
    out = []
    if r.get("first_session"):
        out.append({"timeframe": "1d", "first": r["first_session"].isoformat(),
                    "last": r["last_session"].isoformat(), "bars": int(r["records"] or 0),
                    "completeness": r["completeness"]})
    if minutes:
        out.append({"timeframe": "1m", "first": _iso_ny(minutes["first_bar"]),
                    "last": _iso_ny(minutes["last_bar"]), "bars": int(minutes["bars"]),
                    "completeness": minutes["completeness"],
                    "inconsistent_sessions": int(minutes["inconsistent_sessions"])})
    return out


def _iso_ny(t: dt.datetime | None) -> str | None:
    return t.astimezone(exchange_zone()).isoformat() if t else None


# the last millisecond a date can hold (9999-12-31T23:59:59.999Z)
CURSOR_MAX_MS = 253402300799999


def _cursor(raw: str | None, weekly: bool):
    if raw is None:
        return None
    try:
        ms = int(raw)
        if ms < 0:
            raise ValueError
    except ValueError:
        raise BadRequest(f"cursor={raw[:40]!r} is not a cursor from a 'next' link",
                         "bad_cursor") from None
    if ms > CURSOR_MAX_MS:
        raise BadRequest(f"cursor={raw[:40]!r} is past the year 9999: not a cursor from a "
                         f"'next' link", "bad_cursor")
    t = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return t.date() if weekly else t


def _next_link(last_ms: int) -> str:
    args = request.args.to_dict()
    args["cursor"] = str(last_ms)
    return f"{request.path}?{urlencode(args)}"


def adjust_fields(adjust: str) -> str:
    """The answer's head fields saying how prices are adjusted: ``adjusted``
    (true unless none) as always, and ``adjust`` (the mode) when the request
    named it, so that an answer to an older request keeps its bytes."""
    head = f'"adjusted": {"false" if adjust == "none" else "true"}, '
    if "adjust" in request.args:
        head += f'"adjust": "{adjust}", '
    return head


def ticker_history(conn, symbol: str) -> list[dict] | None:
    """The tickers ``symbol``'s security had (``{ticker, from, to}``, ``to``
    exclusive or null), when it had more than one; else None."""
    sec = store.securities.security(conn, symbol)
    if not sec or len(sec["tickers"]) < 2:
        return None
    return [{"ticker": t["ticker"], "from": t["valid_from"].isoformat(),
             "to": t["valid_to"].isoformat() if t["valid_to"] else None}
            for t in sec["tickers"]]


def tickers_from_json(text: str | None) -> list[dict] | None:
    """``ticker_history``'s answer from ``store.TICKERS_SQL``'s JSON text."""
    return json.loads(text) if text else None


def ticker_fields(tickers: list[dict] | None) -> str:
    """The answer's ``tickers`` head field (the ticker in force on each date of
    a renamed security), or "" (an answer of any other symbol keeps its bytes)."""
    return f'"tickers": {json.dumps(tickers)}, ' if tickers else ""


def respond(conn_cm, *, symbol: str, timeframe: str, start: dt.date, end: dt.date,
            adjust: str, include_invalid: bool, fmt: str, limit: int | None,
            cursor: str | None, known) -> Response | None:
    """The answer, or None when the symbol is unknown (no bar and not
    configured: ``known(conn)`` is False)."""
    weekly = timeframe == "1w"
    page = min(limit or PAGE_MAX, PAGE_MAX)
    after = _cursor(cursor, weekly)
    if weekly:
        sql = store.weekly_sql(adjust, include_invalid, fmt)
        header = store.WEEKLY_CSV_HEADER
    else:
        sql = mstore.intraday_sql(timeframe, adjust=adjust, include_invalid=include_invalid,
                                  fmt=fmt)
        header = mstore.INTRADAY_CSV_HEADER
    params = {"symbol": symbol, "tf": "1d", "start": start, "end": end, "after": after,
              "tz": exchange_tz(),
              "limit": page + 1}
    with conn_cm as conn:
        rows = conn.execute(sql, params).fetchall()
        if not rows and not known(conn):
            return None
        tickers = ticker_history(conn, symbol)
    more = len(rows) > page
    rows = rows[:page]
    nxt = _next_link(rows[-1][0]) if more else None
    adj_head = adjust_fields(adjust) + ticker_fields(tickers)  # in the request, not streaming

    def chunks():
        for i in range(0, len(rows), CHUNK):
            yield [r[1] for r in rows[i:i + CHUNK]]

    if fmt == "csv":
        def body():
            yield (",".join(header) + "\n").encode()
            for c in chunks():
                yield "".join(c).encode()
        headers = {"Content-Disposition":
                   f'inline; filename="{symbol}_{timeframe}_{start}_{end}.csv"'}
        if nxt:
            headers["Link"] = f'<{nxt}>; rel="next"'
        return Response(body(), mimetype="text/csv", headers=headers)

    def body():
        yield (f'{{"symbol": "{symbol}", "timeframe": "{timeframe}", '
               f'"start_date": "{start.isoformat()}", "end_date": "{end.isoformat()}", '
               f'{adj_head}"count": {len(rows)}, '
               f'"data": [').encode()
        sep = ""
        for c in chunks():
            yield (sep + ", ".join(c)).encode()
            sep = ", "
        yield ('], "next": ' + (f'"{nxt}"' if nxt else "null") + "}").encode()

    return Response(body(), mimetype="application/json")
