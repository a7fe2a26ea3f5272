"""The ``alerts`` table's SQL: the rules' pending/open/resolved rows, the
alerts opened at once by the code that saw a failure, acknowledgements, and
the lists status and the console read."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from appliance.store.pool import one_row


def open_alerts(conn: Connection[Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT id, key, severity, status, message, details, opened_at,
                              acknowledged_at, acknowledged_by
                       FROM alerts WHERE status = 'open'
                       ORDER BY severity = 'critical' DESC, opened_at DESC""")
        return cur.fetchall()


def alerts_list(conn: Connection[Any], *, status: str = "open", limit: int = 200) -> list[dict[str, Any]]:
    where = {"open": "status = 'open'", "resolved": "status = 'resolved'",
             "pending": "status = 'pending'",
             "all": "status IN ('pending', 'open', 'resolved')"}[status]
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"""SELECT id, key, severity, status, message, details, opened_at,
                               resolved_at, acknowledged_at, acknowledged_by, pending_since
                        FROM alerts WHERE {where}
                        ORDER BY coalesce(resolved_at, opened_at) DESC, id DESC LIMIT %s""",
                    (limit,))
        return cur.fetchall()


def active_rule_alerts(conn: Connection[Any]) -> list[dict[str, Any]]:
    """Pending and open alerts of the rules (``backup_failed`` is the backup job's)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM alerts WHERE status IN ('pending', 'open') "
                    "AND key <> 'backup_failed'")
        return cur.fetchall()


def insert_alert(conn: Connection[Any], key: str, severity: str, message: str, details: dict[str, Any],
                 now: dt.datetime, *,
                 open_now: bool) -> dict[str, Any]:
    """A new alert row, pending since ``now`` (or open since ``now``)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """INSERT INTO alerts (key, severity, status, message, details, pending_since,
                                   opened_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *""",
            (key, severity, "open" if open_now else "pending", message,
             json.dumps(details, default=str), now, now if open_now else None))
        return one_row(cur)


def update_alert(conn: Connection[Any], alert_id: int, message: str, details: dict[str, Any] | None, *,
                 status: str | None = None, at: dt.datetime | None = None) -> dict[str, Any] | None:
    """New message (and details, unless None); ``status`` 'open' or 'resolved' at ``at``."""
    sets: list[str] = ["message = %s"]
    args: list[Any] = [message]
    if details is not None:
        sets.append("details = %s")
        args.append(json.dumps(details, default=str))
    if status == "open":
        sets += ["status = 'open'", "opened_at = %s"]
        args.append(at)
    elif status == "resolved":
        sets += ["status = 'resolved'", "resolved_at = %s"]
        args.append(at)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"UPDATE alerts SET {', '.join(sets)} WHERE id = %s RETURNING *",
                    (*args, alert_id))
        return cur.fetchone()


def delete_alert(conn: Connection[Any], alert_id: int) -> None:
    conn.execute("DELETE FROM alerts WHERE id = %s", (alert_id,))


def open_alert(conn: Connection[Any], key: str, severity: str, message: str,
               details: dict[str, Any]) -> dict[str, Any] | None:
    """``key``'s alert open now (its active row updated, or a new one); the
    row when this opened it (it was not open before), else None."""
    was = conn.execute("""SELECT status FROM alerts WHERE key = %s
                          AND status IN ('pending', 'open') FOR UPDATE""", (key,)).fetchone()
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            """INSERT INTO alerts (key, severity, status, message, details, opened_at)
               VALUES (%s, %s, 'open', %s, %s, now())
               ON CONFLICT (key) WHERE status IN ('pending', 'open')
               DO UPDATE SET message = EXCLUDED.message, details = EXCLUDED.details,
                             severity = EXCLUDED.severity, status = 'open',
                             opened_at = coalesce(alerts.opened_at, now())
               RETURNING *""",
            (key, severity, message, json.dumps(details, default=str))).fetchone()
    return row if was is None or was[0] != "open" else None


def resolve_alert(conn: Connection[Any], key: str) -> dict[str, Any] | None:
    """``key``'s active alert resolved now; the row when an open one was."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            """WITH old AS (SELECT id, status FROM alerts
                            WHERE key = %s AND status IN ('pending', 'open') FOR UPDATE)
               UPDATE alerts a SET status = 'resolved', resolved_at = now()
               FROM old WHERE a.id = old.id RETURNING a.*, old.status AS was""",
            (key,)).fetchone()
    return row if row is not None and row.pop("was") == "open" else None


def acknowledge_alert(conn: Connection[Any], alert_id: int, who: str) -> bool:
    """An open, unacknowledged alert acknowledged by ``who``; False if there is none."""
    cur = conn.execute("""UPDATE alerts SET acknowledged_at = now(), acknowledged_by = %s
                          WHERE id = %s AND status = 'open' AND acknowledged_at IS NULL""",
                       (who, alert_id))
    return cur.rowcount == 1


def delete_resolved_before(conn: Connection[Any], days: int) -> int:
    """Alerts resolved more than ``days`` ago deleted; how many."""
    return conn.execute(
        """DELETE FROM alerts WHERE status = 'resolved'
           AND resolved_at < now() - make_interval(days => %s)""", (days,)).rowcount


def resolve_opened_before(conn: Connection[Any], key: str, before: dt.datetime, note: str) -> list[int]:
    """``key``'s active alert, opened before ``before``, resolved now with
    ``note`` added to its message; the ids resolved."""
    return [r[0] for r in conn.execute(
        """UPDATE alerts SET status = 'resolved', resolved_at = now(),
                  message = message || ' ' || %s
           WHERE key = %s AND status IN ('pending', 'open')
             AND coalesce(opened_at, pending_since) < %s
           RETURNING id""", (note, key, before))]


def add_note(conn: Connection[Any], keys: list[str], since: dt.datetime, note: str) -> None:
    """``note`` added to the message of the alerts of ``keys`` resolved since ``since``."""
    conn.execute("""UPDATE alerts SET message = message || ' ' || %s
                    WHERE key = ANY(%s) AND status = 'resolved' AND resolved_at >= %s""",
                 (note, keys, since))
