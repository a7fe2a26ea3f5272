-- One backfill, many workers. A backfill run of several symbols is split
-- into chunks keyed (symbol, timeframe, start, end): one per symbol for daily
-- bars. Any worker claims a pending chunk atomically; a claim carries who
-- holds it (hostname:pid) and a heartbeat, so that a chunk whose worker died
-- is taken over by another one. The run's finishing step runs once, guarded
-- by backfill_fanouts.finished_at.
CREATE TABLE backfill_fanouts (
  run_id       bigint      PRIMARY KEY,       -- the parent job_runs row
  owner        text        NOT NULL,          -- hostname:pid of the run's own process
  chunks_total integer     NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  finished_at  timestamptz,
  finished_by  text,
  result       jsonb
);

CREATE TABLE backfill_chunks (
  id           bigserial   PRIMARY KEY,
  run_id       bigint      NOT NULL REFERENCES backfill_fanouts (run_id) ON DELETE CASCADE,
  symbol       text        NOT NULL,
  timeframe    text        NOT NULL,
  start_date   date        NOT NULL,
  end_date     date        NOT NULL,
  full_history boolean     NOT NULL DEFAULT false,
  status       text        NOT NULL DEFAULT 'pending',   -- pending | running | done | failed
  claimed_by   text,                                      -- hostname:pid holding it now
  done_by      text,                                      -- hostname:pid that finished it
  heartbeat_at timestamptz,
  attempts     integer     NOT NULL DEFAULT 0,
  result       jsonb       NOT NULL DEFAULT '{}',
  error        text,
  started_at   timestamptz,
  finished_at  timestamptz,
  UNIQUE (run_id, symbol, timeframe, start_date, end_date)
);
CREATE INDEX backfill_chunks_open ON backfill_chunks (run_id, id)
  WHERE status IN ('pending', 'running');
