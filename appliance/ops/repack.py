"""Minute sessions stored before migrations 0013, 0014 and 0017 written
again in the layout of those migrations: the candles' body and wicks, the
volume and vwap at their own scales, the seven numbers of a bar packed in
one ``bytea`` (0017: sent to the columnar answers and the export as stored),
and the rollups as candles too. The same bars (every price is the same
integer at the same scale), about a fifth less disk for the minutes and a
third less for their rollups than before 0013. ``appliance repack``;
safe to stop and run again: each batch is one transaction, and a session
written again is no longer found."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.store import minutes as mstore

#: Sessions written again per transaction.
BATCH = 200


def repack(conn_cm: Callable[[], Any], limit: int | None = None,
           on_batch: Callable[[int], None] | None = None) -> dict[str, int]:
    """Write up to ``limit`` (None: all) older-layout minute sessions again,
    ``BATCH`` per transaction on ``conn_cm()``; ``on_batch(done)`` after each.
    Returns {"sessions": written}."""
    done, after = 0, None
    while limit is None or done < limit:
        with conn_cm() as conn:
            keys = mstore.old_layout_keys(conn, BATCH if limit is None
                                          else min(BATCH, limit - done), after)
            if not keys:
                break
            mstore.write_days(conn, mstore.sessions_as_stored(conn, keys), rollups=True)
        done, after = done + len(keys), keys[-1]
        if on_batch is not None:
            on_batch(done)
    return {"sessions": done}
