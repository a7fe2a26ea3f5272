-- The appliance's tables. market_data is natively range-partitioned by year
-- (the appliance creates partitions ahead of the data it writes).

CREATE TABLE market_data (
  symbol        text             NOT NULL,
  timeframe     text             NOT NULL DEFAULT '1d',
  ts            timestamptz      NOT NULL,
  open          double precision,
  high          double precision,
  low           double precision,
  close         double precision,
  volume        double precision,
  vwap          double precision,
  trades        bigint,
  source        text             NOT NULL,
  validated     boolean          NOT NULL,
  quality_score real             NOT NULL,
  issues        text[]           NOT NULL DEFAULT '{}',
  gap_detected  boolean          NOT NULL DEFAULT false,
  gap_kind      text,
  gap_pct       real,
  ingested_at   timestamptz      NOT NULL DEFAULT now(),
  PRIMARY KEY (symbol, timeframe, ts)
) PARTITION BY RANGE (ts);

CREATE INDEX market_data_gaps ON market_data (ts) WHERE gap_detected;
CREATE INDEX market_data_invalid ON market_data (symbol, ts) WHERE NOT validated;

CREATE TABLE symbols (
  symbol      text PRIMARY KEY,
  active      boolean     NOT NULL DEFAULT true,
  since       date,
  added_at    timestamptz NOT NULL DEFAULT now(),
  removed_at  timestamptz
);

-- Running aggregates per symbol, refreshed after every write of that symbol,
-- so that status and the console never scan market_data.
CREATE TABLE symbol_stats (
  symbol            text PRIMARY KEY,
  timeframe         text        NOT NULL DEFAULT '1d',
  first_session     date,
  last_session      date,
  records           bigint      NOT NULL DEFAULT 0,
  validated         bigint      NOT NULL DEFAULT 0,
  gaps              bigint      NOT NULL DEFAULT 0,
  gaps_split        bigint      NOT NULL DEFAULT 0,
  gaps_jump         bigint      NOT NULL DEFAULT 0,
  missing_sessions  bigint      NOT NULL DEFAULT 0,
  expected_sessions bigint      NOT NULL DEFAULT 0,
  completeness      double precision,
  mean_score        double precision,
  quality_score     double precision,
  source            text,
  last_update       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE splits (
  symbol          text             NOT NULL,
  execution_date  date             NOT NULL,
  split_from      double precision NOT NULL,
  split_to        double precision NOT NULL,
  source          text             NOT NULL,
  fetched_at      timestamptz      NOT NULL DEFAULT now(),
  PRIMARY KEY (symbol, execution_date)
);

-- Sessions a symbol is missing, found against the trading calendar.
CREATE TABLE missing_sessions (
  symbol    text NOT NULL,
  session   date NOT NULL,
  found_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (symbol, session)
);

-- A stored bar the vendor later revised: old and new values.
CREATE TABLE revisions (
  id          bigserial PRIMARY KEY,
  symbol      text        NOT NULL,
  timeframe   text        NOT NULL,
  ts          timestamptz NOT NULL,
  old         jsonb       NOT NULL,
  new         jsonb       NOT NULL,
  run_id      bigint,
  revised_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revisions_symbol ON revisions (symbol, ts);

CREATE TABLE job_runs (
  id           bigserial PRIMARY KEY,
  job          text        NOT NULL,
  slot         text        NOT NULL,
  trigger      text        NOT NULL DEFAULT 'manual',   -- scheduled | manual | catch_up | reload
  status       text        NOT NULL DEFAULT 'queued',   -- queued | running | ok | partial | failed
  params       jsonb       NOT NULL DEFAULT '{}',
  progress     jsonb       NOT NULL DEFAULT '{}',
  result       jsonb       NOT NULL DEFAULT '{}',
  error        text,
  rq_job_id    text,
  attempts     integer     NOT NULL DEFAULT 0,
  timeout_s    integer,
  created_at   timestamptz NOT NULL DEFAULT now(),
  started_at   timestamptz,
  finished_at  timestamptz,
  heartbeat_at timestamptz,
  UNIQUE (job, slot)
);
CREATE INDEX job_runs_recent ON job_runs (job, created_at DESC);
CREATE INDEX job_runs_status ON job_runs (status) WHERE status IN ('queued', 'running');

-- Per-symbol progress of a backfill, so that a killed run resumes.
CREATE TABLE backfill_checkpoints (
  symbol       text PRIMARY KEY,
  last_session date        NOT NULL,
  run_id       bigint,
  updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE backups (
  id                  bigserial PRIMARY KEY,
  filename            text        NOT NULL UNIQUE,
  path                text        NOT NULL,
  created_at          timestamptz NOT NULL DEFAULT now(),
  size_bytes          bigint,
  sha256              text,
  status              text        NOT NULL DEFAULT 'ok',   -- ok | failed | deleted | missing
  manifest            jsonb       NOT NULL DEFAULT '{}',
  restore_test_status text,                                -- passed | failed
  restore_test_at     timestamptz,
  restore_test_seconds double precision,
  restore_test_result jsonb,
  deleted_at          timestamptz
);

CREATE TABLE alerts (
  id              bigserial PRIMARY KEY,
  key             text        NOT NULL,
  severity        text        NOT NULL,             -- warning | critical
  status          text        NOT NULL,             -- pending | open | resolved
  message         text        NOT NULL,
  details         jsonb       NOT NULL DEFAULT '{}',
  pending_since   timestamptz NOT NULL DEFAULT now(),
  opened_at       timestamptz,
  resolved_at     timestamptz,
  acknowledged_at timestamptz,
  acknowledged_by text
);
CREATE UNIQUE INDEX alerts_one_active ON alerts (key) WHERE status IN ('pending', 'open');

CREATE TABLE events (
  id       bigserial PRIMARY KEY,
  ts       timestamptz NOT NULL DEFAULT now(),
  level    text        NOT NULL,    -- debug | info | warning | error
  kind     text        NOT NULL,    -- backfill | backup | restore_test | reload | vendor | alert | ...
  message  text        NOT NULL,
  details  jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX events_ts ON events (ts DESC);
CREATE INDEX events_kind ON events (kind, ts DESC);

CREATE TABLE config_reloads (
  id       bigserial PRIMARY KEY,
  ts       timestamptz NOT NULL DEFAULT now(),
  source   text        NOT NULL,   -- cli | api | console | sighup | startup
  actor    text,
  sha256   text,
  ok       boolean     NOT NULL,
  error    text,
  diff     jsonb       NOT NULL DEFAULT '{}'
);

-- Vendor request counters, summed over all processes (for /metrics and the console).
CREATE TABLE vendor_requests (
  provider text   NOT NULL,
  kind     text   NOT NULL,   -- request | retry | error
  label    text   NOT NULL,
  count    bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (provider, kind, label)
);
