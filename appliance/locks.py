"""PostgreSQL advisory lock ids shared by more than one module.

A lock id used by a single module stays beside its user; one that two modules
must agree on lives here, so that they cannot drift apart.
"""
from __future__ import annotations

#: held by a backfill while it writes; a full restore takes it so that no
#: backfill writes into the database being swapped
BACKFILL_LOCK = 7_345_100
