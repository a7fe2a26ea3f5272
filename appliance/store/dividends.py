"""Cash dividends in and out (``dividends``, ``dividend_revisions``; see
``migrations/0011_corporate_actions.sql``).

A vendor answer is merged by key (symbol, ex-dividend date, type): repeats
of one record are kept once; records of one key with different cash amounts
are a conflict, stored with a ``problem`` and never applied. A stored
dividend sent again with other values is revised in place and the old and new
vendor records are kept in ``dividend_revisions`` (as bars in ``revisions``).
"""
from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import Connection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from appliance.core.candles import Dividend


def problem_of(cash: float | None) -> str | None:
    """Why a cash amount cannot be applied, or None when it can."""
    if cash is None:
        return "no cash amount"
    if not math.isfinite(cash):
        return f"cash amount {cash!r} is not a number"
    if cash <= 0:
        return f"cash amount {cash!r} is not positive"
    return None


def _vendor_json(d: Dividend) -> dict[str, Any]:
    return json.loads(json.dumps(d.fields(), default=str))


def merge(dividends: Iterable[Dividend]) -> list[tuple[Dividend, str | None, dict[str, Any]]]:
    """One entry per key: (the dividend, its problem or None, its vendor
    record). Records of a key that differ only in other fields than the cash
    amount are merged (the last one sent wins); different cash amounts are a
    conflict."""
    groups: dict[tuple[str, dt.date, str], list[Dividend]] = {}
    for d in dividends:
        groups.setdefault((d.symbol, d.ex_dividend_date, d.dividend_type), []).append(d)
    out: list[tuple[Dividend, str | None, dict[str, Any]]] = []
    for recs in groups.values():
        last = recs[-1]
        amounts = sorted({repr(r.cash_amount) for r in recs})
        problem: str | None
        vendor: dict[str, Any]
        if len(amounts) > 1:
            problem = (f"the vendor sent {len(amounts)} different cash amounts for this "
                       f"dividend ({', '.join(amounts)})")
            vendor = {"conflicting": [_vendor_json(r) for r in recs]}
        else:
            problem = problem_of(last.cash_amount)
            vendor = _vendor_json(last)
        out.append((last, problem, vendor))
    return out


def save_dividends(conn: psycopg.Connection[Any], dividends: Iterable[Dividend], source: str,
                   run_id: int | None = None) -> dict[str, Any]:
    """Upsert one vendor answer's dividends (see the module doc). Returns
    ``{"inserted", "revised", "unchanged", "saved": [keys inserted or
    revised], "problems": [(symbol, ex-date, type, cash, problem)] of the
    entries saved with a problem}``."""
    res: dict[str, Any] = {"inserted": 0, "revised": 0, "unchanged": 0, "saved": [],
                           "problems": []}
    for d, problem, vendor in merge(dividends):
        key = (d.symbol, d.ex_dividend_date, d.dividend_type)
        row = conn.execute(
            """SELECT cash_amount, vendor, problem FROM dividends
               WHERE symbol = %s AND ex_dividend_date = %s AND dividend_type = %s""",
            key).fetchone()
        cash = None if problem and problem.startswith("the vendor sent") else d.cash_amount
        if row is not None and row[1] == vendor and row[2] == problem:
            res["unchanged"] += 1
            continue
        if row is not None:
            conn.execute(
                """INSERT INTO dividend_revisions (symbol, ex_dividend_date, dividend_type,
                                                   old, new, run_id)
                   VALUES (%s, %s, %s, %s, %s, %s)""",
                (*key, Jsonb({**row[1], "problem": row[2]} if row[2] else row[1]),
                 Jsonb({**vendor, "problem": problem} if problem else vendor), run_id))
            res["revised"] += 1
        else:
            res["inserted"] += 1
        conn.execute(
            """INSERT INTO dividends (symbol, ex_dividend_date, dividend_type, cash_amount,
                                      currency, declaration_date, record_date, pay_date,
                                      frequency, vendor_id, vendor, problem, source)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (symbol, ex_dividend_date, dividend_type) DO UPDATE SET
                 cash_amount = EXCLUDED.cash_amount, currency = EXCLUDED.currency,
                 declaration_date = EXCLUDED.declaration_date,
                 record_date = EXCLUDED.record_date, pay_date = EXCLUDED.pay_date,
                 frequency = EXCLUDED.frequency, vendor_id = EXCLUDED.vendor_id,
                 vendor = EXCLUDED.vendor, problem = EXCLUDED.problem,
                 source = EXCLUDED.source, fetched_at = now()""",
            (*key, cash, d.currency, d.declaration_date, d.record_date, d.pay_date,
             d.frequency, d.vendor_id, Jsonb(vendor), problem, source))
        res["saved"].append(key)
        if problem:
            res["problems"].append((*key, d.cash_amount, problem))
    return res


#: the raw close of the last valid daily bar before the ex-date of ``d`` (the
#: close the total-return factor divides by; the SQL function
#: ``adjustment_steps`` of migration 0011 reads it the same way), its time
#: zone the first parameter
_CLOSE_BEFORE_EX = """SELECT m.close FROM market_data m
             WHERE m.symbol = d.symbol AND m.timeframe = '1d' AND m.validated
               AND m.ts < (d.ex_dividend_date::timestamp AT TIME ZONE %s)
             ORDER BY m.ts DESC LIMIT 1"""


def unapplied(conn: Connection[Any], symbol: str, ex_dates: Iterable[dt.date], *,
              tz: str) -> list[dict[str, Any]]:
    """Those of ``symbol``'s dividends with these ex-dates that have no
    problem of their own and still cannot be applied: no valid daily bar
    before the ex-date (``reason`` ``no_close_before``) or cash not below that
    close (``cash_not_below_close``)."""
    rows = conn.execute(
        """SELECT d.ex_dividend_date, d.dividend_type, d.cash_amount, c.close
           FROM dividends d
           LEFT JOIN LATERAL (""" + _CLOSE_BEFORE_EX + """) c ON true
           WHERE d.symbol = %s AND d.ex_dividend_date = ANY(%s::date[]) AND d.problem IS NULL
             AND (c.close IS NULL OR d.cash_amount >= c.close)
           ORDER BY 1, 2""", (tz, symbol, list(ex_dates))).fetchall()
    return [{"ex_dividend_date": r[0], "dividend_type": r[1], "cash_amount": r[2],
             "close_before": r[3],
             "reason": "no_close_before" if r[3] is None else "cash_not_below_close"}
            for r in rows]


def dividends_for(conn: Connection[Any], symbol: str, start: dt.date | None = None,
                  end: dt.date | None = None, *, tz: str) -> list[dict[str, Any]]:
    """``symbol``'s stored dividends (ex-dates in ``start``..``end``, None:
    unbounded), oldest first, with the factor each contributes to the total
    return series (``factor``: ``1 - cash / close_before``, None when not
    applied) and the close it was computed from."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT d.symbol, d.ex_dividend_date, d.dividend_type, d.cash_amount, d.currency,
                      d.declaration_date, d.record_date, d.pay_date, d.frequency, d.problem,
                      d.source, c.close AS close_before,
                      CASE WHEN d.problem IS NULL AND c.close > d.cash_amount
                           THEN 1.0 - d.cash_amount / c.close END AS factor
               FROM dividends d
               LEFT JOIN LATERAL (""" + _CLOSE_BEFORE_EX + """) c ON true
               WHERE d.symbol = %s
                 AND (%s::date IS NULL OR d.ex_dividend_date >= %s::date)
                 AND (%s::date IS NULL OR d.ex_dividend_date <= %s::date)
               ORDER BY d.ex_dividend_date, d.dividend_type""",
            (tz, symbol, start, start, end, end)).fetchall()


def applied_dividends(conn: Connection[Any], symbol: str) -> list[Dividend]:
    """``symbol``'s dividends that enter its total-return factor, as
    ``Dividend`` objects (for quality's dividend rule)."""
    rows = conn.execute(
        """SELECT symbol, ex_dividend_date, dividend_type, cash_amount FROM dividends
           WHERE symbol = %s AND problem IS NULL AND cash_amount > 0
           ORDER BY ex_dividend_date, dividend_type""", (symbol,)).fetchall()
    return [Dividend(*r) for r in rows]


def revisions(conn: Connection[Any], symbol: str, limit: int = 100) -> list[dict[str, Any]]:
    """``symbol``'s dividend revisions, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT ex_dividend_date, dividend_type, old, new, run_id, revised_at
               FROM dividend_revisions WHERE symbol = %s ORDER BY id DESC LIMIT %s""",
            (symbol, limit)).fetchall()
