"""Demo data never passes as real.

The demo provider's bars are stored with ``source = demo``. Once
``provider.name`` names a real vendor, a symbol that still holds any demo bar
is *replaced*: the next backfill (``backfill.make_plan``) fetches its whole
history from ``history.start`` (or its ``since``), daily and minute bars
where configured, and
  * its demo daily bars and demo splits are deleted in the transaction that
    stores the vendor's bars (``daily.write_symbol``): every session the
    vendor has holds the vendor's bar, the others none;
  * its minute months holding a demo session are fetched again, and once all
    of them are stored, the demo sessions the vendor did not send are deleted
    with their rollups (``intraday.drop_demo_leftovers``).
A symbol whose fetch fails keeps its demo bars, labelled demo, and is
replaced by the next backfill. Until then every view says demo: a symbol's
``source`` (stats, ``/api/v1/symbols``), the rows' own ``source``, the
console's banner and symbol page, ``/health``'s ``demo_data_present``.

Or the operator deletes the demo data outright (``appliance demo-data
--delete``, ``delete``); the next backfill then fetches the vendor's whole
history as for a new symbol.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from appliance import store
from appliance.core.errors import LockBusy
from appliance.ingest import daily
from appliance.ingest import minutes as intraday
from appliance.store import demo as dstore
from appliance.store import pool as db
from appliance.store.locks import BACKFILL_LOCK

log = logging.getLogger("appliance.demodata")

#: a real vendor (not ``demo``) replaces the stored demo bars
replacing = dstore.replacing


def symbols_to_replace(conn, provider: str, active_symbols) -> list[str]:
    """The active configured symbols whose demo bars the next backfill
    replaces (none while the provider is ``demo``): a reload that changes
    ``provider.name`` queues their backfill (``reload.reload_config``)."""
    if not replacing(provider):
        return []
    held = set(dstore.demo_symbols(conn))
    return [s for s in active_symbols if s in held]


def report(rt, symbols: Sequence[str] | None = None) -> dict[str, dict]:
    """{symbol: demo daily bars, minute sessions, splits} still stored."""
    with rt.conn() as conn:
        return dstore.demo_counts(conn, symbols)


def delete(rt, symbols: Sequence[str] | None = None) -> dict[str, dict]:
    """Delete the demo data of ``symbols`` (None: every symbol holding some):
    daily bars, splits, minute sessions and their rollups; the symbols'
    stats follow and the next backfill fetches their whole history from the
    configured provider. Refused while a backfill runs (it may be replacing
    them). Returns what was deleted, per symbol."""
    cfg = rt.config
    lock_conn = db.connect(rt.endpoints.database_url, autocommit=True)
    try:
        if not store.locks.try_lock(lock_conn, BACKFILL_LOCK):
            raise LockBusy("a backfill is running (it may be replacing the demo data); "
                           "try again when it has finished")
        with rt.conn() as conn:
            counts = dstore.demo_counts(conn, symbols)
        for sym in counts:
            with rt.conn() as conn:  # one transaction per symbol
                dstore.drop_daily(conn, sym)
                days = dstore.drop_minutes(conn, sym)
                daily.refresh_stats(conn, cfg, sym)
                if days:
                    intraday.refresh_stats(conn, cfg, sym)
        if counts:
            log.info("demo data deleted: %s", counts)
            with rt.conn() as conn:
                store.add_event(conn, "info", "demo",
                                f"demo data of {len(counts)} symbol(s) deleted: "
                                f"{', '.join(sorted(counts))}", {"deleted": counts})
        return counts
    finally:
        lock_conn.close()
