"""Every SQL statement about candles, symbols, splits, stats and the small
bookkeeping tables. Named functions, bound parameters only.

Functions take an open psycopg connection and do not commit unless they say
so; the caller owns the transaction.

The parts: ``writes`` (candles and splits), ``symbols`` (symbols and their
stats), ``reads`` (candles out), ``ops`` (events, counters, checkpoints, the
rows status reads). Callers use ``store.NAME``; everything is imported here.
"""
from .writes import (
    NY,
    TIMEFRAME,
    copy_text,
    ensure_partitions_for,
    last_close_before,
    last_stored_session,
    save_splits,
    splits_for,
    stored_sessions,
    upsert_bars,
    write_bars,
)
from .symbols import (
    refresh_symbol_stats,
    summary,
    symbol_row,
    symbol_rows,
    symbol_rows_for,
    sync_symbols,
)
from .reads import (
    HISTORICAL_CSV_HEADER,
    chart_series,
    gaps,
    historical_csv_sql,
    historical_json_sql,
    invalid_candles,
)
from .ops import (
    add_event,
    add_vendor_counts,
    alerts_list,
    checkpoint,
    config_reloads,
    event_kinds,
    history_coverage,
    job_run_stats,
    last_config_reload,
    last_restore_test,
    latest_backup,
    mark_history_from,
    open_alerts,
    recent_events,
    record_config_reload,
    vendor_counts,
)

__all__ = [
    "NY",
    "TIMEFRAME",
    "copy_text",
    "ensure_partitions_for",
    "last_close_before",
    "last_stored_session",
    "save_splits",
    "splits_for",
    "stored_sessions",
    "upsert_bars",
    "write_bars",
    "refresh_symbol_stats",
    "summary",
    "symbol_row",
    "symbol_rows",
    "symbol_rows_for",
    "sync_symbols",
    "HISTORICAL_CSV_HEADER",
    "chart_series",
    "gaps",
    "historical_csv_sql",
    "historical_json_sql",
    "invalid_candles",
    "add_event",
    "add_vendor_counts",
    "alerts_list",
    "checkpoint",
    "config_reloads",
    "event_kinds",
    "history_coverage",
    "job_run_stats",
    "last_config_reload",
    "last_restore_test",
    "latest_backup",
    "mark_history_from",
    "open_alerts",
    "recent_events",
    "record_config_reload",
    "vendor_counts",
]
