"""Maintenance (monthly): statistics, index bloat, partitions ahead, data retention.

Steps, each recorded as an event of kind ``maintenance`` and listed in the result:

1. ``ANALYZE`` of the appliance's tables (on the partitioned ``market_data``
   and ``minute_bars`` this also analyzes every partition).
2. Index bloat, for every B-tree index of the appliance's tables and of
   their partitions:

   * when the ``pgstattuple`` extension is installed in the database,
     ``pgstatindex()`` measures it: ``bloat = 1 - avg_leaf_density / fillfactor``;
   * otherwise it is estimated from the catalog: the size a freshly built index
     would have is ``reltuples`` x (8-byte index tuple header + the average width
     of the key columns from ``pg_stats``, aligned to 8 bytes, + a 4-byte line
     pointer), packed into 8 KiB pages (8152 usable bytes) filled to the index's
     fillfactor (90 % by default), plus the metapage; ``bloat = 1 - that /
     pg_relation_size(index)``. Deduplicated B-trees are smaller than this
     estimate, so it errs towards "not bloated". Expression indexes and indexes
     that were never analyzed (``reltuples < 0``) are not estimated.

   An index is rebuilt with ``REINDEX INDEX CONCURRENTLY`` (an autocommit
   connection; never on a partitioned parent: each partition's index is rebuilt
   on its own) when its bloat is at least ``BLOAT_THRESHOLD_PCT`` (30 %) and it
   is at least ``MIN_INDEX_BYTES`` (10 MiB) large: rebuilding small indexes buys
   nothing. Both can be overridden per run (params ``bloat_threshold_pct``,
   ``min_index_bytes``). Invalid leftovers of an interrupted concurrent rebuild
   (``*_ccnew*``) are dropped first.
3. Partitions ahead: yearly partitions of ``market_data`` and ``minute_bars``
   for this year and the next two.
4. Data retention, only when ``retention.data_years`` is set: whole yearly
   partitions that end before 1 January of
   (this year - data_years) are dropped -- never row-by-row deletes -- and the
   statistics of the symbols that had candles there are recomputed.
5. Intraday retention, per resolution listed in ``retention.bar_years``
   (``ingest.minutes.apply_retention``): whole yearly partitions of
   ``minute_bars`` before the cutoff dropped, rows deleted only in the year
   the cutoff falls in; rollups deleted row by row.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

from appliance import store
from appliance.ingest import minutes as intraday
from appliance.ingest.daily import refresh_stats
from appliance.jobs.registry import JobResult
from appliance.store import maintenance as mnt
from appliance.store import pool as db

log = logging.getLogger("appliance.maintenance")

BLOAT_THRESHOLD_PCT = 30.0
MIN_INDEX_BYTES = 10 * 1024 * 1024
PAGE_USABLE_BYTES = 8192 - 24 - 16  # page header, B-tree special space
DEFAULT_FILLFACTOR = 90

TABLES = ("market_data", "symbols", "symbol_stats", "splits", "missing_sessions", "revisions",
          "job_runs", "backfill_checkpoints", "backups", "alerts", "events", "config_reloads",
          "vendor_requests",
          # intraday (minute_bars partitioned by year, like market_data), flat
          # files, corporate actions and identity
          "minute_bars", "rollup_bars", "minute_stats", "minute_months", "backfill_chunks",
          "backfill_fanouts", "flat_files", "dividends", "dividend_revisions", "securities",
          "security_tickers")


def _event(conn, message: str, details: dict, level: str = "info") -> None:
    store.add_event(conn, level, "maintenance", message, details)


def _indexes(conn) -> list[dict]:
    """B-tree indexes (leaf, not partitioned parents) of the appliance's tables,
    of market_data's partitions and chunks."""
    return mnt.btree_indexes(conn, TABLES, DEFAULT_FILLFACTOR)


def estimate_bloat(ix: dict) -> tuple[float | None, int | None]:
    """(bloat percent, expected bytes) from the catalog, or (None, None) when
    the index cannot be estimated (see the module docstring)."""
    if ix["expression"] or ix["reltuples"] < 0 or ix["key_width"] is None or ix["bytes"] <= 0:
        return None, None
    tuple_bytes = 8 * math.ceil((8 + ix["key_width"]) / 8) + 4
    per_page = PAGE_USABLE_BYTES * ix["fillfactor"] / 100.0
    leaf_pages = math.ceil(ix["reltuples"] * tuple_bytes / per_page) if ix["reltuples"] else 1
    inner_pages = math.ceil(leaf_pages / 200) if leaf_pages > 1 else 0
    expected = (leaf_pages + inner_pages + 1) * 8192
    pct = max(0.0, (1 - expected / ix["bytes"]) * 100.0)
    return round(pct, 2), expected


def measure_bloat(conn, ix: dict) -> float | None:
    """Bloat percent measured by ``pgstatindex`` (pgstattuple)."""
    density, leaf_pages = mnt.leaf_density(conn, ix["oid"])
    if not leaf_pages or density is None or math.isnan(density):
        return 0.0
    return round(max(0.0, (1 - float(density) / ix["fillfactor"]) * 100.0), 2)


def _drop_invalid_leftovers(conn) -> list[str]:
    dropped = []
    for schema, name in mnt.invalid_rebuild_leftovers(conn):
        mnt.drop_index_concurrently(conn, schema, name)
        dropped.append(f"{schema}.{name}")
    return dropped


def _retention(rt, conn, cfg, years: int, today: dt.date) -> dict:
    cutoff_year = today.year - years
    cutoff = dt.date(cutoff_year, 1, 1)
    dropped: list[str] = []
    affected: set[str] = set()
    store.settings.lock_timeout(conn, "60s")
    for year in sorted(db.existing_partitions(conn)):
        if year >= cutoff_year:
            continue
        name = db.partition_name("market_data", year)
        syms = mnt.symbols_with_data_before(conn, dt.date(year, 12, 31), inclusive=True)
        rows = mnt.drop_partition(conn, name)
        affected |= syms
        dropped.append(name)
        _event(conn, f"retention: dropped partition {name} ({rows} candle(s); "
                     f"retention.data_years = {years})",
               {"partition": name, "rows": rows, "cutoff": cutoff.isoformat()})
    store.settings.lock_timeout(conn, None)
    refreshed = []
    if dropped:
        with rt.conn() as c:
            for sym in sorted(affected):
                refresh_stats(c, cfg, sym)
                refreshed.append(sym)
            _event(c, f"retention: statistics recomputed for {len(refreshed)} symbol(s)",
                   {"symbols": refreshed[:200]})
    return {"data_years": years, "cutoff": cutoff.isoformat(), "dropped": dropped,
            "symbols_refreshed": refreshed}


def _index_bloat(conn, report, threshold: float, min_bytes: int, result: dict) -> None:
    """Measure every index's bloat and rebuild those past the threshold
    (concurrently); fills result's index_bloat, reindexed and errors."""
    leftovers = _drop_invalid_leftovers(conn)
    if leftovers:
        _event(conn, f"maintenance: dropped {len(leftovers)} invalid index(es) left by an "
                     "interrupted rebuild", {"indexes": leftovers}, "warning")
    method = "pgstatindex" if store.databases.has_extension(conn, "pgstattuple") else "estimate"
    indexes = []
    reindexed = []
    for ix in _indexes(conn):
        if method == "pgstatindex":
            try:
                pct, expected = measure_bloat(conn, ix), None
            except Exception as e:  # noqa: BLE001 - fall back to the estimate
                log.warning("pgstatindex(%s) failed: %s", ix["index"], e)
                pct, expected = estimate_bloat(ix)
        else:
            pct, expected = estimate_bloat(ix)
        entry = {"index": f"{ix['schema']}.{ix['index']}", "table": ix["table"],
                 "bytes": ix["bytes"], "bloat_pct": pct, "expected_bytes": expected}
        indexes.append(entry)
        if pct is None or pct < threshold or ix["bytes"] < min_bytes:
            continue
        report({"phase": "reindex", "index": entry["index"]}, True)
        try:
            mnt.reindex_concurrently(conn, ix["schema"], ix["index"])
        except Exception as e:  # noqa: BLE001 - one index must not stop the rest
            msg = f"REINDEX of {entry['index']} failed: {e}"
            result["errors"].append(msg)
            _event(conn, "maintenance: " + msg, {"index": entry["index"]}, "warning")
            continue
        # the rebuilt index is a new relation under the same name
        after_bytes = mnt.index_bytes(conn, ix["schema"], ix["index"])
        done = {**entry, "bytes_after": after_bytes}
        reindexed.append(done)
        _event(conn, f"maintenance: rebuilt index {entry['index']} (estimated bloat {pct}%, "
                     f"{ix['bytes']} -> {after_bytes} bytes)", done)
    result["index_bloat"] = {"method": method, "threshold_pct": threshold,
                             "min_index_bytes": min_bytes, "indexes": indexes}
    result["reindexed"] = reindexed


class MaintenanceResult(JobResult, total=False):
    """The ``maintenance`` job's result."""
    #: what went wrong in a step that did not stop the rest (status partial)
    errors: list[str]
    analyzed: list[str]
    #: method, threshold_pct, min_index_bytes, indexes (each with its estimate)
    index_bloat: dict[str, Any]
    #: the indexes rebuilt, with their bytes before and after
    reindexed: list[dict[str, Any]]
    partitions_created: list[str]
    #: data_years, dropped, note
    retention: dict[str, Any]
    bar_retention: dict[str, Any]


def maintain(rt, run_id, report, bloat_threshold_pct=None, min_index_bytes=None,
             today=None) -> MaintenanceResult:
    cfg = rt.config
    threshold = BLOAT_THRESHOLD_PCT if bloat_threshold_pct is None else float(bloat_threshold_pct)
    min_bytes = MIN_INDEX_BYTES if min_index_bytes is None else int(min_index_bytes)
    today = dt.date.fromisoformat(today) if isinstance(today, str) else \
        (today or dt.datetime.now(dt.UTC).date())
    result: dict = {"status": "ok", "errors": []}
    # one autocommit connection without the pool's statement timeout: ANALYZE and
    # REINDEX CONCURRENTLY of a large table take their time, and REINDEX
    # CONCURRENTLY cannot run inside a transaction
    conn = db.connect(rt.endpoints.database_url, autocommit=True)
    try:
        # 1. statistics
        report({"phase": "analyze"}, True)
        present = mnt.present_tables(conn, TABLES)
        mnt.analyze(conn, present)
        result["analyzed"] = sorted(present)
        _event(conn, f"maintenance: analyzed {len(present)} table(s)", {"tables": present})

        # 2. index bloat
        report({"phase": "index bloat"}, True)
        _index_bloat(conn, report, threshold, min_bytes, result)

        # 3. partitions ahead
        report({"phase": "partitions"}, True)
        result["partitions_created"] = [
            db.partition_name(table, y) for table in db.PARTITIONED
            for y in db.ensure_partitions(conn, today.year, today.year + 2, table)]
        if result["partitions_created"]:
            _event(conn, f"maintenance: created partitions {result['partitions_created']}",
                   {"partitions": result["partitions_created"]})

        # 4. data retention
        years = cfg.get("retention.data_years")
        if years:
            report({"phase": "retention"}, True)
            result["retention"] = _retention(rt, conn, cfg, int(years), today)
        else:
            result["retention"] = {"data_years": None, "dropped": [],
                                   "note": "retention.data_years is not set: all data kept"}
        result["bar_retention"] = intraday.apply_retention(conn, cfg, today)
    finally:
        conn.close()
    if result["errors"]:
        result["status"] = "partial"
    return result
