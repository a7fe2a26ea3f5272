"""Securities, the tickers each had, delistings, and the universe as of a
date (``securities``, ``security_tickers``; see
``migrations/0011_corporate_actions.sql``)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row


def periods(events: list[tuple[dt.date, str]]) -> list[tuple[str, dt.date, dt.date | None]]:
    """(ticker, valid_from, valid_to exclusive or None) from ticker-change
    events oldest first: each ticker holds until the next event."""
    out = []
    for i, (d, t) in enumerate(events):
        nxt = events[i + 1][0] if i + 1 < len(events) else None
        out.append((t, d, nxt))
    return out


def conflict_of(symbol: str, events: list[tuple[dt.date, str]]) -> str | None:
    """Why these ticker events cannot describe the security ``symbol`` names
    now, or None: two tickers on one date, or a latest ticker that is not it."""
    days: dict[dt.date, str] = {}
    for d, t in events:
        if days.setdefault(d, t) != t:
            return f"two tickers take effect on {d} ({days[d]} and {t})"
    if events and events[-1][1] != symbol:
        return f"the latest ticker event names {events[-1][1]}, not {symbol}"
    return None


def save_identity(conn: Connection[Any], symbol: str, ident: dict[str, Any], source: str) -> str | None:
    """Store the security ``symbol`` names and its ticker periods (replacing
    the stored ones). Returns the problem that kept it from being stored
    (conflicting events, or a FIGI another symbol's security has), else None."""
    events = ident.get("events") or []
    problem = conflict_of(symbol, events)
    figi = ident.get("composite_figi")
    if problem is None and figi:
        other = conn.execute("SELECT symbol FROM securities WHERE composite_figi = %s "
                             "AND symbol <> %s", (figi, symbol)).fetchone()
        if other:
            problem = f"its composite FIGI {figi} is already the security of {other[0]}"
    if problem:
        return problem
    conn.execute(
        """INSERT INTO securities (symbol, composite_figi, name, cik, source)
           VALUES (%s, %s, %s, %s, %s)
           ON CONFLICT (symbol) DO UPDATE SET composite_figi = EXCLUDED.composite_figi,
             name = EXCLUDED.name, cik = EXCLUDED.cik, source = EXCLUDED.source,
             fetched_at = now()""",
        (symbol, figi, ident.get("name"), ident.get("cik"), source))
    conn.execute("DELETE FROM security_tickers WHERE symbol = %s", (symbol,))
    with conn.cursor() as cur:
        cur.executemany("""INSERT INTO security_tickers (symbol, ticker, valid_from, valid_to)
                           VALUES (%s, %s, %s, %s)""",
                        [(symbol, t, a, b) for t, a, b in periods(events)])
    return None


def set_delisted(conn: Connection[Any], symbol: str, day: dt.date | None) -> None:
    conn.execute("UPDATE securities SET delisted_on = %s WHERE symbol = %s", (day, symbol))


def security(conn: Connection[Any], symbol: str) -> dict[str, Any] | None:
    """The security row of ``symbol`` with its ``tickers`` (oldest first), or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM securities WHERE symbol = %s", (symbol,)).fetchone()
        if row is None:
            return None
        row["tickers"] = cur.execute(
            """SELECT ticker, valid_from, valid_to FROM security_tickers
               WHERE symbol = %s ORDER BY valid_from""", (symbol,)).fetchall()
    return row


def delisted(conn: Connection[Any]) -> dict[str, dt.date]:
    """{symbol: delisted_on} of the delisted securities."""
    return dict(conn.execute("SELECT symbol, delisted_on FROM securities "
                             "WHERE delisted_on IS NOT NULL").fetchall())


def universe(conn: Connection[Any], as_of: dt.date) -> list[dict[str, Any]]:
    """The securities that traded on ``as_of`` (listed, not yet delisted),
    with the ticker each had then, by symbol; symbols without ticker events
    count from their first to their last stored daily bar (``basis``
    ``stored_bars``; after the latest stored session, such as a weekend or a
    day whose bars are not fetched yet, those that traded on it), unless a
    security's ticker history gives their ticker to it on that date (FB's own
    bars, stored before the rename, are META's company: listed once, as META)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT s.symbol, t.ticker, s.composite_figi, s.name, t.valid_from AS ticker_since,
                      s.delisted_on, 'reference' AS basis
               FROM securities s JOIN security_tickers t USING (symbol)
               WHERE t.valid_from <= %(d)s AND (t.valid_to IS NULL OR t.valid_to > %(d)s)
                 AND (s.delisted_on IS NULL OR s.delisted_on > %(d)s)
               UNION ALL
               SELECT st.symbol, st.symbol, s.composite_figi, s.name, NULL, s.delisted_on,
                      'stored_bars'
               FROM symbol_stats st LEFT JOIN securities s USING (symbol)
               WHERE NOT EXISTS (SELECT 1 FROM security_tickers t WHERE t.symbol = st.symbol)
                 AND NOT EXISTS (SELECT 1 FROM security_tickers t
                                 WHERE t.ticker = st.symbol AND t.valid_from <= %(d)s
                                   AND (t.valid_to IS NULL OR t.valid_to > %(d)s))
                 AND st.first_session <= %(d)s
                 AND st.last_session >= LEAST(%(d)s, (SELECT max(last_session)
                                                      FROM symbol_stats))
                 AND (s.delisted_on IS NULL OR s.delisted_on > %(d)s)
               ORDER BY 1""", {"d": as_of}).fetchall()
