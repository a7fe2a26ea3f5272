"""One backfill at a time, visibly: a second request while one runs waits
for it with a clear message (in its progress and the CLI), then does its
work; it never records a failed run."""
from __future__ import annotations

import threading

from appliance import db, store
from appliance.jobs import backfill, runs
from appliance.locks import BACKFILL_LOCK
from tests.support import wait_until


def test_a_second_backfill_waits_for_the_running_one_and_never_fails(runtime, database_url):
    rt = runtime
    with rt.conn() as c:  # the first backfill, running (it holds the lock)
        first = runs.claim(c, "backfill", runs.manual_slot())
        runs.start(c, first)
    holder = db.connect(database_url, autocommit=True)
    assert store.locks.try_lock(holder, BACKFILL_LOCK)
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(runs.execute(
        rt, "backfill", runs.manual_slot(), backfill.run, params={"symbols": ["AAPL"]})))
    t.start()
    try:
        def waiting():
            with rt.conn() as c:
                rows = [r for r in runs.recent(c, job="backfill") if r["id"] != first]
            p = (rows[0]["progress"] or {}) if rows else {}
            return p if p.get("phase") == "waiting" else None
        p = wait_until(waiting, 30, "the second backfill to say it waits")
        assert p["waiting_for"] == first
        assert f"waiting for backfill run {first}" in p["message"]
    finally:
        holder.close()  # the first one ends: its lock goes with its connection
    t.join(120)
    assert not t.is_alive()
    assert out["status"] == "ok", out
    with rt.conn() as c:
        statuses = {r["id"]: r["status"] for r in runs.recent(c, job="backfill")}
    assert "failed" not in statuses.values(), statuses
