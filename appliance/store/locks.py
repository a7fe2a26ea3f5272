"""PostgreSQL advisory locks: taking them, and the lock ids shared by more than
one module.

A lock id used by a single module stays beside its user; one that two modules
must agree on lives here, so that they cannot drift apart.
"""
from __future__ import annotations

from typing import Any

from psycopg import Connection

from appliance.store.pool import one_row

#: held by a backfill while it writes; a full restore takes it so that no
#: backfill writes into the database being swapped
BACKFILL_LOCK = 7_345_100


def try_lock(conn: Connection[Any], key: int) -> bool:
    """The session-level lock ``key`` taken, if free (it lasts as long as ``conn``)."""
    return bool(one_row(conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)))[0])


def lock_for_transaction(conn: Connection[Any], key: int) -> None:
    """Wait for the transaction-level lock ``key`` (released at commit or rollback)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
