"""One backfill at a time, visibly: a second request while one runs waits
for it with a clear message (in its progress and the CLI), then does its
work; it never records a failed run."""
from __future__ import annotations

import threading

from appliance import store
from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from appliance.store import pool as db
from appliance.store.locks import BACKFILL_LOCK
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
        rt, "backfill", runs.manual_slot(), run_backfill, params={"symbols": ["AAPL"]})))
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


FANNED = {"phase": "chunks", "chunks_total": 26, "chunks_done": 16, "chunks_failed": 0,
          "chunks_running": 2, "symbols_total": 2, "symbols_done": 2, "bars": 5000,
          "rows": 5000, "requests": 18, "minute_months_total": 24, "minute_months_done": 14,
          "minute_bars": 90000, "eta_s": 122.0, "plan": "fanned out: 26 chunk(s)"}


def test_the_jobs_list_the_run_page_and_the_cli_agree_on_months_and_eta(client, runtime):
    import json

    from appliance.cli.progress import progress_line
    with runtime.conn() as c:
        rid = runs.claim(c, "backfill", runs.manual_slot())
        runs.start(c, rid)
        runs.progress(c, rid, FANNED)
    listing = client.get("/jobs").get_data(as_text=True)
    row = listing[listing.index(f'id="run-{rid}"'):]
    row = row[:row.index("</tr>")]
    assert 'aria-valuenow="62"' in row, row  # 16 of 26 chunks, not 100 % (2 of 2 symbols)
    assert "14 of 24 months" in row and "2m02s" in row.replace(" ", ""), row
    page = client.get(f"/jobs/{rid}").get_data(as_text=True)
    assert "14 of 24 months" in page
    assert json.dumps(FANNED, separators=(",", ":"))[:20] not in page, "raw JSON on the run page"
    assert "minute months done" in page  # a readable table of the progress
    total, done, text = progress_line(FANNED)
    assert (done, total) == (16, 26) and "14/24 months" in text


def test_a_fanned_out_run_whose_parent_died_is_finished_by_its_last_chunk(runtime):
    """The host running the parent job died; other workers did every chunk:
    the run ends with the chunks' result, not 'running' until the stale check."""
    import datetime as dt

    from appliance.ingest import chunks
    from appliance.store import chunks as chunk_store
    rt = runtime
    start, end = dt.date(2024, 1, 2), dt.date(2024, 2, 28)
    with rt.conn() as c:
        rid = runs.claim(c, "backfill", runs.manual_slot())
        runs.start(c, rid)
        chunk_store.create_fanout(c, rid, "gone-host:1",
                                  [(s, chunks.DAILY, start, end, True) for s in ("AAPL", "MSFT")])
        # its parent's last heartbeat, long ago
        c.execute("UPDATE job_runs SET heartbeat_at = now() - interval '2 hours' "
                  "WHERE id = %s", (rid,))
    chunks.work(rt, rt.config, rid)
    res = chunks.finish(rt, rid)
    assert res is not None and res["status"] == "ok", res
    with rt.conn() as c:
        run = runs.get(c, rid)
    assert run["status"] == "ok", (run["status"], run["error"])
    assert run["result"]["symbols"] == 2 and run["finished_at"] is not None
