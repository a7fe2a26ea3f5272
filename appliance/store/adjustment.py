"""The adjustment of prices on read, as SQL fragments every read path shares
(daily, weekly, minute sessions, rollups, columnar and bulk). The factors
come from one place, the SQL function ``adjustment_steps(symbol, mode)``
(``migrations/0011_corporate_actions.sql``): it is called once per query, in
a CTE, and each bar takes the step its session lies in.

A read in mode ``none`` has no CTE and no factor: the stored values as they
are. The mode is one of ``core.adjustment.MODES`` (checked by ``mode_of``
before it is written into the SQL).
"""
from __future__ import annotations

from typing import Any

from psycopg import Connection

from appliance.core.adjustment import NONE, mode_of


def steps_cte(adjust: str | bool | None) -> str:
    """``adj AS (...)``: the steps of ``%(symbol)s`` in mode ``adjust`` (put it
    in the query's WITH list), or "" for ``none``; the query's parameters
    name the exchange time zone ``%(tz)s``."""
    mode = mode_of(adjust)
    if mode == NONE:
        return ""
    return (f"adj AS MATERIALIZED (SELECT span, price_factor, volume_factor "
            f"FROM adjustment_steps(%(symbol)s, '{mode}', %(tz)s))")


def factor_join(adjust: str | bool | None, session: str) -> str:
    """A join giving ``f.kp`` (price factor) and ``f.kv`` (volume factor) to
    each row whose exchange session date is the expression ``session``: 1 for
    ``none`` and outside every step."""
    if mode_of(adjust) == NONE:
        return "CROSS JOIN (SELECT 1.0::float8 AS kp, 1.0::float8 AS kv) f"
    return f"""CROSS JOIN LATERAL (
          SELECT coalesce(max(a.price_factor), 1.0) AS kp,
                 coalesce(max(a.volume_factor), 1.0) AS kv
          FROM adj a WHERE a.span @> ({session})) f"""


def steps(conn: Connection[Any], symbol: str, adjust: str | bool | None, *,
          tz: str) -> list[tuple[Any, ...]]:
    """The steps of ``symbol`` in mode ``adjust`` as (first session or None,
    session after the last or None, price factor, volume factor), by their
    end; none for ``none``. The same factors ``factor_join`` gives in SQL, for
    reads that apply them outside the database (``ops.arrowbars``)."""
    mode = mode_of(adjust)
    if mode == NONE:
        return []
    return [tuple(r) for r in conn.execute(
        """SELECT CASE WHEN lower_inc(span) THEN lower(span) ELSE lower(span) + 1 END,
                  CASE WHEN upper_inc(span) THEN upper(span) + 1 ELSE upper(span) END,
                  price_factor, volume_factor
           FROM adjustment_steps(%s, %s, %s) WHERE NOT isempty(span)
           ORDER BY upper(span) NULLS LAST""", (symbol, mode, tz)).fetchall()]


def adjusted(adjust: str | bool | None) -> bool:
    """Whether ``adjust`` changes any value."""
    return mode_of(adjust) != NONE
