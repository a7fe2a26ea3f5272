"""Arrow and Parquet out: ``format=parquet|arrow`` (or the ``Accept`` types)
on ``/api/v1/historical/{symbol}``, and the bulk endpoint ``/api/v1/bars``.

Historical: the same rows and the same cursor pages as the JSON answer
(``bars.PAGE_MAX`` bars per page for every timeframe but 1d; the next page's
link in a ``Link: <...>; rel="next"`` header and in the file's metadata).

Bulk: many symbols in one streamed answer, sorted by symbol then time, each
Parquet row group (or Arrow / CSV batch) sent as it is read from one
server-side stream per symbol; the connection is held only while the answer
is sent and given back (its query cancelled) when the client goes away. It
needs the ``export`` scope (or ``admin``); ``server.export.max_rows`` bounds
one answer (413 beyond, saying how to page).
"""
from __future__ import annotations

import datetime as dt
import sys
import time

import pyarrow as pa
from flask import Blueprint, Response, current_app, request

from appliance import store
from appliance.ops import arrowbars, arrowfiles, readahead
from appliance.store import columnar as cstore
from appliance.store import minutes as mstore
from appliance.web import bars
from appliance.web.auth import ADMIN, principal
from appliance.web.errors import BadRequest, api_error
from appliance.web.params import adjust_arg, bool_arg, date_arg, query_args, symbol_arg
from appliance.web.stream import Stream

bp = Blueprint("columnar", __name__)

EXPORT = "export"
#: Rows fetched per round trip and per Arrow batch of the bulk answer.
CHUNK = 10_000
#: Rows per Parquet row group of the bulk answer (each sent when complete).
ROW_GROUP = 100_000
#: Bars per Parquet row group of a historical page (a page of 50,000 bars is
#: two: the first encoded while the second is read).
PAGE_GROUP = 25_000
MAX_SYMBOLS = 20_000
BULK_FORMATS = ("parquet", "arrow", "csv")


def rt():
    return current_app.config["RUNTIME"]


def negotiate(args) -> str:
    """``format`` when given, else parquet or arrow when ``Accept`` prefers
    one of their types, else json (what every answer was before)."""
    fmt = args.get("format")
    if fmt is None:
        best = request.accept_mimetypes.best_match(
            ["application/json", arrowbars.MIMETYPES["parquet"], arrowbars.MIMETYPES["arrow"]])
        return {arrowbars.MIMETYPES["parquet"]: "parquet",
                arrowbars.MIMETYPES["arrow"]: "arrow"}.get(best, "json")
    if fmt not in arrowbars.FORMATS:
        raise BadRequest(f"format={fmt[:40]!r} is not a format; formats: "
                         f"{', '.join(arrowbars.FORMATS)}", "bad_format")
    return fmt


def compression_arg(args) -> str:
    """The Parquet compression asked for (``compression=``), by default
    ``arrowfiles.ANSWER_COMPRESSION``."""
    c = args.get("compression", arrowfiles.ANSWER_COMPRESSION)
    if c not in arrowfiles.COMPRESSIONS:
        raise BadRequest(f"compression={c[:40]!r} is not a Parquet compression; "
                         f"compressions: {', '.join(arrowfiles.COMPRESSIONS)}",
                         "bad_compression")
    return c


def _source_of(conn, symbol: str, timeframe: str) -> str | None:
    if cstore.kind_of(timeframe) == "intraday":
        return (mstore.minute_stats_of(conn, symbol) or {}).get("source")
    return (store.symbol_row(conn, symbol) or {}).get("source")


def historical(conn_cm, *, symbol: str, timeframe: str, start: dt.date, end: dt.date,
               adjust: str, include_invalid: bool, fmt: str, limit: int | None,
               cursor: str | None, known,
               compression: str = arrowfiles.ANSWER_COMPRESSION) -> Response | None:
    """One page of ``symbol``'s bars as Parquet (``compression``) or Arrow,
    or None when the symbol is unknown. A Parquet page is written as it is read (row groups
    of ``PAGE_GROUP`` bars, encoded by a second thread), its count and next
    link put in the footer once known; an Arrow stream starts with its schema,
    so its page is read whole first."""
    daily = timeframe == "1d"
    page = limit if daily else min(limit or bars.PAGE_MAX, bars.PAGE_MAX)
    after = None if daily else bars._cursor(cursor, timeframe == "1w")  # noqa: SLF001
    tz = bars.exchange_tz()
    params = {"symbol": symbol, "tf": "1d", "start": start, "end": end, "after": after,
              "limit": page + 1 if page else None, "tz": tz}
    sch = arrowbars.schema(timeframe, tz=tz)
    with conn_cm as conn:
        source = _source_of(conn, symbol, timeframe)
        tickers = bars.ticker_history(conn, symbol)
        rows = arrowfiles.FirstRows(arrowbars.symbol_batches(
            conn, arrowbars.Batches(sch, [symbol]), symbol, timeframe, adjust=adjust,
            include_invalid=include_invalid, params=params,
            chunk=PAGE_GROUP if fmt == "parquet" else 65536), page)

        def nxt() -> str | None:
            return bars._next_link(rows.last) if rows.more and not daily else None  # noqa: SLF001

        def answer_schema() -> pa.Schema:
            return arrowbars.schema(timeframe, {
                "symbol": symbol, "timeframe": timeframe, "start": start, "end": end,
                "adjusted": adjust != "none", "adjust": adjust,
                "include_invalid": include_invalid, "source": source, "tickers": tickers,
                "cursor": cursor, "count": rows.rows, "next": nxt()}, tz=tz)

        if fmt == "parquet":
            body = [arrowfiles.parquet_file(sch, rows, answer_schema, PAGE_GROUP, compression)]
        else:
            table = pa.Table.from_batches(list(rows), sch)
            body = list(arrowfiles.encode(fmt, answer_schema(), table.to_batches()))
        if not rows.rows and not known(conn):
            return None
    headers = {"Content-Disposition": f'attachment; filename="{symbol}_{timeframe}_{start}_'
                                      f'{end}.{arrowbars.SUFFIX[fmt]}"'}
    if nxt():
        headers["Link"] = f'<{nxt()}>; rel="next"'
    return Response(body, mimetype=arrowbars.MIMETYPES[fmt], headers=headers)


# --------------------------------------------------------------------------- bulk

def _refused() -> Response | None:
    """401 without a credential, 403 with one that may not export."""
    p = principal()
    how = ("an API key with scopes [read, export] (appliance api-key new NAME --scope read "
           "--scope export) or the admin token")
    if p is None:
        resp = api_error(401, "unauthorized", f"bulk export needs 'Authorization: Bearer "
                                              f"<key>' with the export scope: {how}")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="appliance"'
        return resp
    if EXPORT not in p.scopes and ADMIN not in p.scopes:
        return api_error(403, "export_not_allowed",
                         f"{p.label} has no export scope; bulk export needs {how}")
    return None


def _symbols(args) -> list[str]:
    if ("symbols" in args) == ("universe" in args):
        raise BadRequest("give either symbols (comma-separated) or universe "
                         "(configured or stored)", "bad_symbols")
    if "symbols" in args:
        syms = [symbol_arg(s) for s in args["symbols"].split(",")]
        if len(syms) > MAX_SYMBOLS:
            raise BadRequest(f"too many symbols (at most {MAX_SYMBOLS})", "bad_symbols")
        return sorted(set(syms))
    universe = args["universe"]
    if universe == "configured":
        return sorted({s.symbol for s in rt().config.symbols})
    if universe == "stored":
        return []  # read from the database with the rows
    raise BadRequest(f"universe={universe[:40]!r} must be configured or stored",
                     "bad_universe")


def _bulk_args(args) -> dict:
    timeframe = bars.timeframe_arg(args)
    tz = bars.exchange_tz()
    end = date_arg(args, "end", dt.datetime.now(bars.exchange_zone()).date())
    start = date_arg(args, "start", end - dt.timedelta(days=365)
                     if end.toordinal() > 365 else dt.date.min)
    if start > end:
        raise BadRequest(f"start ({start}) is after end ({end})", "bad_range")
    fmt = args.get("format", "parquet")
    if fmt not in BULK_FORMATS:
        raise BadRequest(f"format={fmt[:40]!r} is not a bulk format; formats: "
                         f"{', '.join(BULK_FORMATS)}", "bad_format")
    return {"timeframe": timeframe, "start": start, "end": end, "format": fmt,
            "adjust": adjust_arg(args),
            "include_invalid": bool_arg(args, "include_invalid", False),
            "symbols": _symbols(args), "tz": tz, "as_of": date_arg(args, "as_of", None),
            "compression": compression_arg(args)}


def _over_limit(conn, n: int, limit: int, a: dict, *, one_symbol: bool = False) -> Response:
    """413, saying which first part of the request fits one answer (also as
    ``fits``: start, end, rows; null when a single day is over the limit)."""
    cut = cstore.last_day_within(conn, a["timeframe"], a["symbols"], a["start"], a["end"],
                                 a["include_invalid"], limit, tz=a["tz"])
    fewer = "zoom in" if one_symbol else "ask for fewer symbols"
    how = (f"a single day of it is over the limit: {fewer}" if cut is None else
           f"{fewer} or a shorter start..end (start {a['start']} to end {cut[0]} holds "
           f"{cut[1]} of them, then from the day after)")
    fits = None if cut is None else {"start": a["start"].isoformat(),
                                     "end": cut[0].isoformat(), "rows": cut[1]}
    return api_error(413, "too_many_rows",
                     f"{n} bars asked for, over server.export.max_rows ({limit}): {how}; "
                     f"or run 'appliance export' for a whole dataset", max_rows=limit, rows=n,
                     fits=fits)


@bp.get("/api/v1/bars")
def bulk():
    refused = _refused()
    if refused is not None:
        return refused
    args = query_args({"symbols", "universe", "timeframe", "start", "end", "format",
                       "adjusted", "adjust", "include_invalid", "as_of", "compression"})
    a = _bulk_args(args)
    return _bars_answer(a, f'bars_{a["timeframe"]}_{a["start"]}_{a["end"]}',
                        stored=args.get("universe") == "stored")


def symbol_download(symbol: str) -> Response:
    """One symbol's bars of start..end (the request's parameters as the bulk
    endpoint takes them, without symbols) in one streamed file, however many
    pages of ``/api/v1/historical`` they fill: the console's Download links.
    Bounded by ``server.export.max_rows`` as the bulk answer; a read, not an
    export (the same bars the reader may page through)."""
    args = query_args({"timeframe", "start", "end", "format", "adjusted", "adjust",
                       "include_invalid", "compression"})
    a = _bulk_args({**args.to_dict(), "symbols": symbol})
    return _bars_answer(a, f'{symbol}_{a["timeframe"]}_{a["start"]}_{a["end"]}',
                        one_symbol=True)


def _bars_answer(a: dict, name: str, *, stored: bool = False,
                 one_symbol: bool = False) -> Response:
    """The bars ``a`` (``_bulk_args``; every stored symbol when ``stored``)
    as one streamed file named ``name``, or 413 over ``server.export.max_rows``."""
    limit = int(rt().config["server"]["export"]["max_rows"])
    cm = rt().read_conn()
    conn = cm.__enter__()
    try:
        if stored:
            a["symbols"] = cstore.stored_symbols(conn, a["timeframe"])
        if a["as_of"] is not None:  # only the securities that traded that day
            members = {m["symbol"] for m in store.securities.universe(conn, a["as_of"])}
            a["symbols"] = [s for s in a["symbols"] if s in members]
        n = cstore.count_rows(conn, a["timeframe"], a["symbols"], a["start"], a["end"],
                              a["include_invalid"], tz=a["tz"])
        if n > limit:
            over = _over_limit(conn, n, limit, a, one_symbol=one_symbol)
    except BaseException:
        cm.__exit__(*sys.exc_info())
        raise
    if n > limit:
        cm.__exit__(None, None, None)
        return over
    meta = {k: a[k] for k in ("timeframe", "start", "end", "adjust", "include_invalid")}
    meta["adjusted"] = a["adjust"] != "none"
    meta["symbols"] = len(a["symbols"])
    sch = arrowbars.schema(a["timeframe"], meta, tz=a["tz"])
    body = arrowfiles.encode(a["format"], sch, _paced(_read_batches(conn, sch, a), _rate()),
                            ROW_GROUP, a["compression"])
    name = f'{name}.{arrowbars.SUFFIX[a["format"]]}'
    return Response(Stream(body, conn, cm, "bulk bars"),
                    mimetype=arrowbars.MIMETYPES[a["format"]],
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _rate() -> int | None:
    """The bars per second the caller's key may export (None: no limit)."""
    p = principal()
    for k in rt().config["server"].get("api_keys") or ():
        if p is not None and p.kind == "api_key" and k["name"] == p.name:
            return k.get("export_rows_per_second")
    return None


def _paced(batches, rate: int | None):
    """``batches``, no faster than ``rate`` bars per second on average (a
    batch waits until the bars sent so far are due)."""
    t0, sent = time.monotonic(), 0
    for b in batches:
        if rate:
            wait = sent / rate - (time.monotonic() - t0)
            if wait > 0:
                time.sleep(wait)
        yield b
        sent += b.num_rows


def _read_batches(conn, sch, a: dict):
    """Record batches of every symbol in turn, each read as one stream (of
    its stored sessions for intraday bars, by a thread that reads the next
    sessions while these are encoded), about CHUNK rows in hand."""
    params = {"tf": "1d", "start": a["start"], "end": a["end"], "after": None, "limit": None,
              "tz": a["tz"]}
    return readahead.read_ahead(conn, arrowbars.Batches(sch, a["symbols"]), a["symbols"],
                                a["timeframe"], adjust=a["adjust"],
                                include_invalid=a["include_invalid"], params=params,
                                chunk=CHUNK)


def register(app) -> None:
    app.register_blueprint(bp)

