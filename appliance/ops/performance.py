"""Performance review (quarterly, and on demand).

* ``database_bytes``: ``pg_database_size`` of the appliance's database.
* ``market_data``: rows, bytes (table + indexes + TOAST of every partition)
  and the average bytes per row (bytes / rows).
* ``growth``: candles ingested per month (``market_data.ingested_at``; a
  re-written candle counts in the month of its last write) and the estimated
  bytes they take (rows x the average bytes per row above). One scan of
  ``market_data``: this job runs a few times a year.
* ``growth_by_market_month``: candles per month of market time over the last
  12 months, and ``projected_bytes_per_month``: the mean of the last three
  complete market months x the average bytes per row -- what the store grows
  by each month with the current symbol list (a first backfill of years of
  history lands in one ingestion month; this does not).
* ``slowest_queries``: the top ``SLOW_QUERIES`` statements of this database by
  mean execution time from ``pg_stat_statements`` when the extension is
  installed in the database (it also needs ``shared_preload_libraries``);
  otherwise ``pg_stat_statements.message`` says why there are none.
* ``tables`` / ``indexes``: the ``TOP`` largest (bytes).
"""
from __future__ import annotations

import logging
from typing import Any

from appliance import store
from appliance.core import calendar as tcal
from appliance.jobs.registry import JobResult
from appliance.store import performance as perf

log = logging.getLogger("appliance.performance")

TOP = 20
SLOW_QUERIES = 10


def _market_data(conn) -> dict:
    size = perf.market_data_bytes(conn)
    rows = perf.market_data_rows(conn)
    return {"rows": int(rows), "bytes": size,
            "avg_row_bytes": round(size / rows, 1) if rows else None}


def _growth(conn, avg_row_bytes) -> list[dict]:
    rows = perf.rows_per_ingestion_month(conn)
    return [{"month": m, "rows": int(n),
             "bytes_estimated": int(n * avg_row_bytes) if avg_row_bytes else None}
            for m, n in rows]


def _market_months(conn, avg_row_bytes, tz: str) -> tuple[list[dict], int | None]:
    rows, this_month = perf.rows_per_market_month(conn, tz=tz)
    months = [{"month": m, "rows": int(n),
               "bytes_estimated": int(n * avg_row_bytes) if avg_row_bytes else None}
              for m, n in rows]
    complete = [m for m in months if m["month"] < this_month][-3:]
    if not complete or not avg_row_bytes:
        return months, None
    return months, int(sum(m["rows"] for m in complete) / len(complete) * avg_row_bytes)


def _slow_queries(conn) -> tuple[dict, list[dict]]:
    if not store.databases.has_extension(conn, "pg_stat_statements"):
        return {"available": False, "message": "pg_stat_statements is not installed"}, []
    try:
        rows = perf.slowest_statements(conn, SLOW_QUERIES)
    except Exception as e:  # noqa: BLE001 - installed but not preloaded
        return {"available": False,
                "message": f"pg_stat_statements is installed but cannot be read: "
                           f"{str(e).strip().splitlines()[0]}"}, []
    return {"available": True, "message": f"top {SLOW_QUERIES} by mean execution time"}, [
        {"query": q, "calls": int(c), "total_ms": round(float(t), 3),
         "mean_ms": round(float(m), 3), "rows": int(r)} for q, c, t, m, r in rows]


def _sizes(conn) -> tuple[list[dict], list[dict]]:
    tables = perf.largest_tables(conn, TOP)
    indexes = perf.largest_indexes(conn, TOP)
    return ([{"table": f"{s}.{t}", "total_bytes": int(tot), "table_bytes": int(tb),
              "index_bytes": int(ib), "rows_estimated": max(0, int(rt))}
             for s, t, tot, tb, ib, rt in tables],
            [{"index": f"{s}.{i}", "table": t, "bytes": int(b)} for s, i, t, b in indexes])


class PerformanceResult(JobResult, total=False):
    """The ``performance_review`` job's result."""
    database_bytes: int
    market_data: dict[str, Any]
    growth: list[dict[str, Any]]
    growth_method: str
    growth_by_market_month: list[dict[str, Any]]
    projected_bytes_per_month: int | None
    #: whether pg_stat_statements is there, and why not
    pg_stat_statements: dict[str, Any]
    slowest_queries: list[dict[str, Any]]
    tables: list[dict[str, Any]]
    indexes: list[dict[str, Any]]


def review(rt, run_id, report) -> PerformanceResult:
    with rt.conn() as conn:
        report({"phase": "sizes"}, True)
        database_bytes = store.databases.current_size(conn)
        md = _market_data(conn)
        report({"phase": "growth"}, True)
        growth = _growth(conn, md["avg_row_bytes"])
        by_month, projected = _market_months(conn, md["avg_row_bytes"],
                                               tcal.exchange_tz(rt.config["calendar"]))
        pss, slow = _slow_queries(conn)
        tables, indexes = _sizes(conn)
    return {
        "status": "ok",
        "database_bytes": database_bytes,
        "market_data": md,
        "growth": growth,
        "growth_method": "rows per month of ingested_at x average bytes per row "
                         "(market_data bytes / rows)",
        "growth_by_market_month": by_month,
        "projected_bytes_per_month": projected,
        "pg_stat_statements": pss,
        "slowest_queries": slow,
        "tables": tables,
        "indexes": indexes,
    }
