"""PostgreSQL advisory locks (their ids are in ``appliance.locks`` or beside
their single user)."""
from __future__ import annotations


def try_lock(conn, key: int) -> bool:
    """The session-level lock ``key`` taken, if free (it lasts as long as ``conn``)."""
    return bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])


def lock_for_transaction(conn, key: int) -> None:
    """Wait for the transaction-level lock ``key`` (released at commit or rollback)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
