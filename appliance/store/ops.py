"""The bookkeeping tables: events, vendor counters, backfill checkpoints and
history coverage, backups and reloads as status reads them."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from appliance.config.redaction import redact, redact_obj
from appliance.store.pool import one_row


def add_event(conn: Connection[Any], level: str, kind: str, message: str,
              details: dict[str, Any] | None = None) -> None:
    """Events can be read without a login: known secrets are redacted first."""
    details = json.loads(json.dumps(details or {}, default=str))
    conn.execute("INSERT INTO events (level, kind, message, details) VALUES (%s, %s, %s, %s)",
                 (level, kind, redact(message), json.dumps(redact_obj(details))))


def recent_events(conn: Connection[Any], *, level: str | None = None, kind: str | None = None,
                  limit: int = 200, q: str | None = None) -> list[dict[str, Any]]:
    levels = {"debug": 0, "info": 1, "warning": 2, "error": 3}
    min_level = [k for k, v in levels.items() if v >= levels.get(level or "debug", 0)]
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT id, ts, level, kind, message, details FROM events
               WHERE level = ANY(%s) AND (%s::text IS NULL OR kind = %s)
                 AND (%s::text IS NULL OR message ILIKE '%%' || %s || '%%')
               ORDER BY ts DESC, id DESC LIMIT %s""",
            (min_level, kind, kind, q, q, limit))
        return cur.fetchall()


def event_kinds(conn: Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT kind FROM events ORDER BY 1")]


def add_vendor_counts(conn: Connection[Any], counts: dict[tuple[str, str, str], int]) -> None:
    """counts: {(provider, kind, label): n}."""
    with conn.cursor() as cur:
        for (prov, kind, label), n in counts.items():
            if n:
                cur.execute(
                    """INSERT INTO vendor_requests (provider, kind, label, count)
                       VALUES (%s, %s, %s, %s) ON CONFLICT (provider, kind, label)
                       DO UPDATE SET count = vendor_requests.count + EXCLUDED.count""",
                    (prov, kind, str(label), n))


def vendor_counts(conn: Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT provider, kind, label, count FROM vendor_requests "
                        "ORDER BY 1, 2, 3").fetchall()


def history_coverage(conn: Connection[Any], symbol: str) -> tuple[dt.date | None, dt.date | None]:
    """(first stored session, earliest session the vendor was asked for)."""
    row = conn.execute(
        """SELECT st.first_session, sy.history_from FROM symbols sy
             LEFT JOIN symbol_stats st USING (symbol) WHERE sy.symbol = %s""",
        (symbol,)).fetchone()
    return (row[0], row[1]) if row else (None, None)


def mark_history_from(conn: Connection[Any], symbol: str, session: dt.date) -> None:
    """A whole-history fetch from ``session`` completed for ``symbol``."""
    conn.execute("""UPDATE symbols SET history_from = least(coalesce(history_from, %s), %s)
                     WHERE symbol = %s""", (session, session, symbol))


def checkpoint(conn: Connection[Any], symbol: str, session: dt.date, run_id: int | None) -> None:
    conn.execute(
        """INSERT INTO backfill_checkpoints (symbol, last_session, run_id) VALUES (%s, %s, %s)
           ON CONFLICT (symbol) DO UPDATE SET last_session = EXCLUDED.last_session,
             run_id = EXCLUDED.run_id, updated_at = now()""", (symbol, session, run_id))


# --------------------------------------------------------------------------- status helpers

def latest_backup(conn: Connection[Any]) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT id, filename, created_at, size_bytes, sha256, status,
                              restore_test_status, restore_test_at
                       FROM backups WHERE status = 'ok' ORDER BY created_at DESC LIMIT 1""")
        return cur.fetchone()


def last_restore_test(conn: Connection[Any], *, with_error: bool = False) -> dict[str, Any] | None:
    """The newest restore test the catalogue records (with its error: ``with_error``)."""
    error = ", restore_test_result->>'error' AS error" if with_error else ""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"""SELECT id AS backup_id, filename, restore_test_status AS status,
                               restore_test_at AS at, restore_test_seconds AS seconds{error}
                        FROM backups WHERE restore_test_at IS NOT NULL
                        ORDER BY restore_test_at DESC LIMIT 1""")
        return cur.fetchone()


def last_config_reload(conn: Connection[Any]) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT id, ts, source, actor, sha256, ok, error, diff FROM config_reloads
                       ORDER BY ts DESC, id DESC LIMIT 1""")
        return cur.fetchone()


def record_config_reload(conn: Connection[Any], *, source: str, actor: str | None,
                         sha256: str | None, ok: bool, error: str | None,
                         diff: dict[str, Any] | None) -> int:
    return one_row(conn.execute(
        """INSERT INTO config_reloads (source, actor, sha256, ok, error, diff)
           VALUES (%s, %s, %s, %s, %s, %s) RETURNING id""",
        (source, actor, sha256, ok, _redact(error),
         json.dumps(_redact_obj(json.loads(json.dumps(diff or {}, default=str)))))))[0]


def _redact(text: Any) -> Any:
    return redact(text)


def _redact_obj(v: Any) -> Any:
    return redact_obj(v)


def config_reloads(conn: Connection[Any], limit: int = 20) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM config_reloads ORDER BY ts DESC, id DESC LIMIT %s", (limit,))
        return cur.fetchall()


def job_run_stats(conn: Connection[Any]) -> list[tuple[Any, ...]]:
    """(job, status, count, sum of durations in seconds) over all recorded runs."""
    return conn.execute(
        """SELECT job, status, count(*),
                  coalesce(sum(extract(epoch FROM finished_at - started_at)), 0)
           FROM job_runs GROUP BY job, status ORDER BY 1, 2""").fetchall()


def installed_at(conn: Connection[Any]) -> dt.datetime | None:
    """When the appliance was installed: its first migration."""
    row = conn.execute("SELECT min(applied_at) FROM schema_migrations").fetchone()
    return row[0] if row else None


def last_vendor_auth_error(conn: Connection[Any]) -> dict[str, Any] | None:
    """The newest vendor error event after the last backfill that ended ok
    (ts, message), or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT e.ts, e.message FROM events e
                       WHERE e.kind = 'vendor' AND e.level = 'error'
                         AND e.ts > coalesce((SELECT max(finished_at) FROM job_runs
                                               WHERE job = 'backfill' AND status = 'ok'),
                                              '-infinity'::timestamptz)
                       ORDER BY e.ts DESC LIMIT 1""")
        return cur.fetchone()


def vendor_429_total(conn: Connection[Any]) -> int:
    """Rate-limited (429) vendor answers ever counted."""
    return int(one_row(conn.execute(
        """SELECT coalesce(sum(count), 0) FROM vendor_requests
           WHERE kind = 'request' AND label = '429'"""))[0])


def delete_events_before(conn: Connection[Any], days: int) -> int:
    return conn.execute("DELETE FROM events WHERE ts < now() - make_interval(days => %s)",
                        (days,)).rowcount


def delete_config_reloads_before(conn: Connection[Any], days: int) -> int:
    return conn.execute(
        "DELETE FROM config_reloads WHERE ts < now() - make_interval(days => %s)",
        (days,)).rowcount
