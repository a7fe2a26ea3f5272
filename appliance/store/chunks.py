"""The chunks of a fanned-out backfill (``backfill_fanouts``, ``backfill_chunks``).

A claim is one ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED)
RETURNING``: two workers never get the same chunk. A chunk is claimable when
pending, or running with a heartbeat older than ``stale_s`` (its worker died),
as long as it has been tried fewer than ``max_attempts`` times.
"""
from __future__ import annotations

import json
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from appliance.store.pool import one_row

_CLAIMABLE = """(status = 'pending'
                 OR (status = 'running' AND heartbeat_at < now() - make_interval(secs => %(stale)s)))
                AND attempts < %(max)s"""


def create_fanout(conn: Connection[Any], run_id: int, owner: str, chunks: list[tuple[Any, ...]]) -> int:
    """The run's chunks ``(symbol, timeframe, start, end, full_history)``; a
    run that starts again (an RQ retry) keeps the chunks it already has.
    Returns the number of chunks of the run."""
    conn.execute("""INSERT INTO backfill_fanouts (run_id, owner, chunks_total) VALUES (%s, %s, %s)
                    ON CONFLICT (run_id) DO UPDATE SET owner = EXCLUDED.owner""",
                 (run_id, owner, len(chunks)))
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO backfill_chunks (run_id, symbol, timeframe, start_date, end_date,
                                            full_history)
               VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            [(run_id, *c) for c in chunks])
    n = one_row(conn.execute("SELECT count(*) FROM backfill_chunks WHERE run_id = %s",
                     (run_id,)))[0]
    conn.execute("UPDATE backfill_fanouts SET chunks_total = %s WHERE run_id = %s", (n, run_id))
    return n


def chunk_ids(conn: Connection[Any], run_id: int, status: str = "pending") -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT id FROM backfill_chunks WHERE run_id = %s AND status = %s ORDER BY id",
        (run_id, status))]


def claim(conn: Connection[Any], run_id: int, who: str, *, stale_s: float, max_attempts: int,
          chunk_id: int | None = None) -> dict[str, Any] | None:
    """Claim ``chunk_id`` (or, None, the first claimable chunk of the run)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"""UPDATE backfill_chunks SET status = 'running', claimed_by = %(who)s,
                               heartbeat_at = now(), started_at = now(),
                               attempts = attempts + 1, error = NULL
                        WHERE id = (SELECT id FROM backfill_chunks
                                    WHERE run_id = %(run)s AND {_CLAIMABLE}
                                      AND (%(id)s::bigint IS NULL OR id = %(id)s)
                                    ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                        RETURNING *""",
                    {"who": who, "run": run_id, "stale": stale_s, "max": max_attempts,
                     "id": chunk_id})
        return cur.fetchone()


def beat(conn: Connection[Any], chunk_id: int, who: str) -> bool:
    """Refresh the heartbeat of a chunk ``who`` holds; False when it lost it."""
    return conn.execute("""UPDATE backfill_chunks SET heartbeat_at = now()
                           WHERE id = %s AND claimed_by = %s AND status = 'running'""",
                        (chunk_id, who)).rowcount == 1


def complete(conn: Connection[Any], chunk_id: int, who: str, status: str, result: dict[str, Any],
             error: str | None = None) -> bool:
    """Record the outcome of a chunk ``who`` still holds (done or failed)."""
    return conn.execute(
        """UPDATE backfill_chunks SET status = %s, result = %s, error = %s, done_by = %s,
                  finished_at = now(), heartbeat_at = now()
           WHERE id = %s AND claimed_by = %s AND status = 'running'""",
        (status, json.dumps(result, default=str), error, who, chunk_id, who)).rowcount == 1


def release(conn: Connection[Any], who: str) -> int:
    """Chunks held by ``who`` (a process that died) go back to pending."""
    return conn.execute("""UPDATE backfill_chunks SET status = 'pending', claimed_by = NULL,
                                  error = 'released: its worker died'
                           WHERE status = 'running' AND claimed_by = %s""", (who,)).rowcount


def fail_pending(conn: Connection[Any], run_id: int, error: str) -> int:
    """Every pending chunk of the run failed with ``error`` (the vendor refused
    the key: every further request would fail the same way)."""
    return conn.execute("""UPDATE backfill_chunks SET status = 'failed', finished_at = now(),
                                  error = %s
                           WHERE run_id = %s AND status = 'pending'""",
                        (error, run_id)).rowcount


def give_up(conn: Connection[Any], run_id: int, *, stale_s: float, max_attempts: int) -> list[str]:
    """Chunks that cannot be claimed again (tried ``max_attempts`` times, and
    their last worker is gone) are failed; returns their symbols."""
    return [r[0] for r in conn.execute(
        """UPDATE backfill_chunks SET status = 'failed', finished_at = now(),
                  error = coalesce(error, 'its worker died') || ' (tried ' || attempts || ' times)'
           WHERE run_id = %s AND attempts >= %s
             AND (status = 'pending' OR (status = 'running'
                  AND heartbeat_at < now() - make_interval(secs => %s)))
           RETURNING symbol""", (run_id, max_attempts, stale_s))]


def counts(conn: Connection[Any], run_id: int) -> dict[str, Any]:
    """Progress of the run: chunks by status, symbols, bars, per host."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("""SELECT count(*) AS total,
                              count(*) FILTER (WHERE status = 'done') AS done,
                              count(*) FILTER (WHERE status = 'failed') AS failed,
                              count(*) FILTER (WHERE status = 'running') AS running,
                              count(DISTINCT symbol) FILTER (WHERE symbol <> '*') AS symbols,
                              count(DISTINCT symbol) FILTER (WHERE symbol <> '*'
                                                              AND status IN ('done', 'failed'))
                                AS symbols_done,
                              coalesce(sum((result->>'inserted')::bigint), 0) AS inserted,
                              coalesce(sum((result->>'updated')::bigint), 0) AS updated,
                              coalesce(sum((result->>'revised')::bigint), 0) AS revised,
                              coalesce(sum((result->>'rejected')::bigint), 0) AS rejected,
                              coalesce(sum((result->>'requests')::bigint), 0) AS requests,
                              coalesce(sum((result->>'retries')::bigint), 0) AS retries,
                              count(*) FILTER (WHERE timeframe = '1m' AND symbol <> '*')
                                AS months_total,
                              count(*) FILTER (WHERE timeframe = '1m' AND symbol <> '*'
                                               AND status = 'done') AS months_done,
                              coalesce(sum((result->>'bars')::bigint) FILTER (WHERE symbol <> '*'), 0)
                                AS minute_bars,
                              coalesce(sum((result->>'sessions')::bigint), 0) AS minute_sessions,
                              count(*) FILTER (WHERE symbol = '*') AS files_total,
                              count(*) FILTER (WHERE symbol = '*' AND status = 'done')
                                AS files_done,
                              count(*) FILTER (WHERE symbol = '*' AND status = 'failed')
                                AS files_failed,
                              coalesce(sum((result->>'bytes')::bigint), 0) AS file_bytes,
                              coalesce(sum((result->>'rows')::bigint), 0) AS file_rows,
                              coalesce(sum((result->>'bars')::bigint)
                                       FILTER (WHERE symbol = '*'), 0) AS file_bars
                       FROM backfill_chunks WHERE run_id = %s""", (run_id,))
        out = one_row(cur)
        cur.execute("""SELECT split_part(done_by, ':', 1) AS host, count(*) AS n
                       FROM backfill_chunks WHERE run_id = %s AND status = 'done'
                       GROUP BY 1 ORDER BY 1""", (run_id,))
        out["hosts"] = {r["host"]: r["n"] for r in cur.fetchall()}
        return out


def failures(conn: Connection[Any], run_id: int) -> dict[str, str]:
    """{what failed: why}: a symbol's daily chunk by its name, a month of
    minute bars as ``SYM (1m YYYY-MM)``."""
    return {r[0]: r[1] or "failed" for r in conn.execute(
        """SELECT CASE WHEN symbol = '*'
                       THEN 'flat file ' || timeframe || ' ' || to_char(start_date, 'YYYY-MM-DD')
                       WHEN timeframe = '1m'
                       THEN symbol || ' (1m ' || to_char(start_date, 'YYYY-MM') || ')'
                       ELSE symbol END, error
           FROM backfill_chunks WHERE run_id = %s AND status = 'failed'
           ORDER BY symbol, start_date""", (run_id,))}


def minute_symbols(conn: Connection[Any], run_id: int) -> list[str]:
    """Symbols with minute-bar chunks in the run."""
    return [r[0] for r in conn.execute(
        """SELECT DISTINCT symbol FROM backfill_chunks WHERE run_id = %s AND timeframe = '1m'
             AND symbol <> '*' ORDER BY 1""", (run_id,))]


def file_days(conn: Connection[Any], run_id: int) -> dict[str, list[Any]]:
    """{timeframe: [day]} of the flat files the run stored (its file chunks done)."""
    out: dict[str, list[Any]] = {}
    for tf, day in conn.execute(
            """SELECT timeframe, start_date FROM backfill_chunks
               WHERE run_id = %s AND symbol = '*' AND status = 'done'
                 AND coalesce((result->>'files')::int, 0) > 0 ORDER BY 1, 2""", (run_id,)):
        out.setdefault(tf, []).append(day)
    return out


def fanout(conn: Connection[Any], run_id: int) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM backfill_fanouts WHERE run_id = %s", (run_id,))
        return cur.fetchone()


def take_finish(conn: Connection[Any], run_id: int, who: str) -> bool:
    """The finishing step's guard: True for exactly one caller, once every
    chunk is done or failed."""
    return conn.execute(
        """UPDATE backfill_fanouts SET finished_at = now(), finished_by = %s
           WHERE run_id = %s AND finished_at IS NULL
             AND NOT EXISTS (SELECT 1 FROM backfill_chunks
                             WHERE run_id = %s AND status IN ('pending', 'running'))""",
        (who, run_id, run_id)).rowcount == 1


def store_result(conn: Connection[Any], run_id: int, result: dict[str, Any]) -> None:
    conn.execute("UPDATE backfill_fanouts SET result = %s WHERE run_id = %s",
                 (json.dumps(result, default=str), run_id))
