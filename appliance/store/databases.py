"""Statements about whole databases on the server, run on a maintenance
connection (autocommit, to a database that is neither the live one nor a
scratch one) or on the database they measure: existence, creation, dropping,
renaming, sizes, sessions, the server's version."""
from __future__ import annotations

from typing import Any

from psycopg import Connection, sql

from appliance.store.pool import one_row


def server_version_num(conn: Connection[Any]) -> int:
    """The server's version as a number (150004 for 15.4)."""
    return int(one_row(conn.execute("SHOW server_version_num"))[0])


def current_size(conn: Connection[Any]) -> int:
    """Bytes of the database ``conn`` is connected to."""
    return int(one_row(conn.execute("SELECT pg_database_size(current_database())"))[0])


def has_extension(conn: Connection[Any], name: str) -> bool:
    """The extension ``name`` is installed in the database."""
    return conn.execute("SELECT 1 FROM pg_extension WHERE extname = %s",
                        (name,)).fetchone() is not None


def exists(mconn: Connection[Any], name: str) -> bool:
    return mconn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() \
        is not None


def create(mconn: Connection[Any], name: str, *, template: str | None = None) -> None:
    """``CREATE DATABASE name`` (from ``template``, else the server's default)."""
    stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
    mconn.execute(stmt)


def drop(mconn: Connection[Any], name: str) -> None:
    """Drop ``name`` if it exists, ending its sessions."""
    mconn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def names_starting_with(mconn: Connection[Any], prefix: str) -> list[str]:
    return [r[0] for r in mconn.execute(
        "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)).fetchall()]


def sizes_like(mconn: Connection[Any], pattern: str) -> list[tuple[str, int]]:
    """(name, bytes) of the databases whose name is LIKE ``pattern``, by name."""
    return [(r[0], int(r[1])) for r in mconn.execute(
        """SELECT datname, pg_database_size(datname) FROM pg_database
            WHERE datname LIKE %s ORDER BY datname""", (pattern,))]


def rename(mconn: Connection[Any], name: str, to: str) -> None:
    mconn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
        sql.Identifier(name), sql.Identifier(to)))


def allow_connections(mconn: Connection[Any], name: str, allow: bool) -> None:
    mconn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
        sql.Identifier(name), sql.SQL("true" if allow else "false")))


def end_sessions(mconn: Connection[Any], name: str) -> int:
    """Terminate every other session on ``name``; how many sessions it still has."""
    mconn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
    return one_row(mconn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                         (name,)))[0]


def replay_lag(conn: Connection[Any]) -> float | None:
    """Seconds a hot standby's replay is behind (0 when it has replayed all it
    received, or on a primary); None when it has replayed nothing yet."""
    return one_row(conn.execute(
        """SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0
                       WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                       ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())
                  END"""))[0]


def system_identifier(conn: Connection[Any]) -> int | None:
    """The cluster's system identifier (same on a primary and its standbys);
    None when this role may not read it."""
    try:
        with conn.transaction():
            return int(one_row(conn.execute(
                "SELECT system_identifier FROM pg_control_system()"))[0])
    except Exception:  # noqa: BLE001 - e.g. permission denied: the check is skipped
        return None


def standby_facts(conn: Connection[Any]) -> dict[str, Any]:
    """What decides whether ``conn``'s database may serve reads as a replica:
    ``in_recovery``, ``system_identifier`` (or None) and ``migration`` (the
    newest applied, None without ``schema_migrations``)."""
    in_rec = bool(one_row(conn.execute("SELECT pg_is_in_recovery()"))[0])
    ver = None
    if one_row(conn.execute("SELECT to_regclass('schema_migrations')"))[0] is not None:
        ver = one_row(conn.execute("SELECT max(version) FROM schema_migrations"))[0]
    return {"in_recovery": in_rec, "system_identifier": system_identifier(conn),
            "migration": ver}
