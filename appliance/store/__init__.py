"""Every SQL statement about candles, symbols, splits, stats and the small
bookkeeping tables. Named functions, bound parameters only.

Functions take an open psycopg connection and do not commit unless they say
so; the caller owns the transaction.

The parts: ``writes`` (candles and splits), ``symbols`` (symbols and their
stats), ``reads`` (candles out), ``ops`` (events, counters, checkpoints, the
rows status reads), ``backups`` (the backup catalogue and the dump's
snapshot); callers use ``store.NAME`` for these. The tables and tasks with a
module of their own are used as ``store.MODULE.NAME``: ``alerts``, ``runs``
(job_runs), ``history`` (a restore's history merge), ``maintenance``,
``performance``, ``spotcheck``, ``databases`` (whole databases on the
server), ``scratch`` (a database that is not the live one yet), ``locks``
(advisory locks), ``sessions`` (session settings), ``dividends`` (cash
dividends and their revisions) and ``securities`` (identity: FIGI, tickers,
delistings, the universe as of a date).

Outside this package only ``appliance.store.pool`` runs SQL: the connection pool,
the migration runner and the partitions a migration needs.
"""
from appliance.store import (
    alerts,
    databases,
    dividends,
    history,
    locks,
    maintenance,
    performance,
    runs,
    scratch,
    securities,
    spotcheck,
)
from appliance.store import settings as sessions
from appliance.store.alerts import alerts_list, open_alerts
from appliance.store.backups import (
    backup_id,
    backup_id_at,
    backup_row,
    backup_rows,
    backup_status,
    backup_statuses,
    database_facts,
    export_snapshot,
    good_backup_paths,
    good_backups,
    last_archive_and_database_size,
    last_good_backup_at,
    mark_backup_deleted,
    mark_backup_missing,
    record_restore_test,
    restore_test_from_manifest,
    table_and_symbol_counts,
    upsert_backup,
)
from appliance.store.ops import (
    add_event,
    add_vendor_counts,
    checkpoint,
    config_reloads,
    delete_config_reloads_before,
    delete_events_before,
    event_kinds,
    history_coverage,
    installed_at,
    job_run_stats,
    last_config_reload,
    last_restore_test,
    last_vendor_auth_error,
    latest_backup,
    mark_history_from,
    recent_events,
    record_config_reload,
    vendor_429_total,
    vendor_counts,
)
from appliance.store.reads import (
    HISTORICAL_CSV_HEADER,
    WEEKLY_CSV_HEADER,  # noqa: F401
    chart_series,
    daily_hlv,  # noqa: F401
    gaps,
    historical_csv_sql,
    historical_json_sql,
    invalid_candles,
    weekly_sql,  # noqa: F401
)
from appliance.store.symbols import (
    no_symbol_stats,
    refresh_symbol_stats,
    summary,
    symbol_known,
    symbol_row,
    symbol_rows,
    symbol_rows_for,
    sync_symbols,
)
from appliance.store.writes import (
    TIMEFRAME,
    copy_text,
    ensure_partitions_for,
    last_close_before,
    last_session_before,
    last_stored_session,
    save_splits,
    splits_for,
    stored_sessions,
    upsert_bars,
    write_bars,
)

__all__ = [
    "alerts",
    "databases",
    "dividends",
    "history",
    "locks",
    "maintenance",
    "performance",
    "runs",
    "securities",
    "scratch",
    "sessions",
    "spotcheck",
    "database_facts",
    "export_snapshot",
    "good_backups",
    "last_archive_and_database_size",
    "last_good_backup_at",
    "mark_backup_deleted",
    "table_and_symbol_counts",
    "no_symbol_stats",
    "symbol_known",
    "delete_config_reloads_before",
    "delete_events_before",
    "installed_at",
    "last_vendor_auth_error",
    "vendor_429_total",
    "backup_id",
    "backup_id_at",
    "backup_row",
    "backup_rows",
    "backup_status",
    "backup_statuses",
    "good_backup_paths",
    "mark_backup_missing",
    "record_restore_test",
    "restore_test_from_manifest",
    "upsert_backup",
    "TIMEFRAME",
    "copy_text",
    "ensure_partitions_for",
    "last_close_before",
    "last_session_before",
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
