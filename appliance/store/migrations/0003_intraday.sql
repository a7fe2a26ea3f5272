-- Intraday bars. One row per symbol and session holds that day's one-minute
-- bars as arrays, compressed by TOAST with pglz: measured on a year of 500
-- symbols, 30 bytes per bar with pglz against 38 with lz4 (and 141 for one
-- row per bar), so pglz is set explicitly, whatever the server's default.
--
-- Prices are stored exactly: as integers times 10^-scale (`scale` is the
-- fewest decimals that give back every price and volume of the day to the last
-- digit, and an integer array compresses far better than float8), or, for a
-- day with a value no decimal scale up to 10^-9 represents, in `raw`, a
-- float8[6][n] of open, high, low, close, volume and vwap.
CREATE TABLE minute_bars (
  symbol      text        NOT NULL,
  session     date        NOT NULL,
  minutes     smallint[]  NOT NULL,  -- minute of the New York day each bar starts (570 = 09:30)
  scale       smallint,              -- NULL: the values are in raw
  open        int8[],
  high        int8[],
  low         int8[],
  close       int8[],
  volume      int8[],
  vwap        int8[],                -- NULL element: the vendor sent none
  raw         float8[],
  trades      int4[],                -- NULL element: the vendor sent none
  invalid     smallint[]  NOT NULL DEFAULT '{}',  -- 0-based positions failing validation
  source      text        NOT NULL,
  ingested_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (symbol, session)
);

-- 5m, 15m, 30m, 1h and 4h bars derived from minute_bars, one row per symbol,
-- timeframe and session, refreshed for each session a write touches.
CREATE TABLE rollup_bars (
  symbol     text       NOT NULL,
  timeframe  text       NOT NULL,
  session    date       NOT NULL,
  starts     smallint[] NOT NULL,  -- minute of the New York day each bar starts
  open       float8[]   NOT NULL,
  high       float8[]   NOT NULL,
  low        float8[]   NOT NULL,
  close      float8[]   NOT NULL,
  volume     float8[]   NOT NULL,
  vwap       float8[]   NOT NULL,
  trades     int8[]     NOT NULL,
  PRIMARY KEY (symbol, timeframe, session)
);

DO $$
DECLARE c text;
BEGIN
  FOREACH c IN ARRAY ARRAY['minutes', 'open', 'high', 'low', 'close', 'volume', 'vwap', 'raw',
                           'trades'] LOOP
    EXECUTE format('ALTER TABLE minute_bars ALTER COLUMN %I SET COMPRESSION pglz', c);
  END LOOP;
  FOREACH c IN ARRAY ARRAY['starts', 'open', 'high', 'low', 'close', 'volume', 'vwap',
                           'trades'] LOOP
    EXECUTE format('ALTER TABLE rollup_bars ALTER COLUMN %I SET COMPRESSION pglz', c);
  END LOOP;
END $$;

-- Which months of a symbol's minute bars have been fetched and stored, and
-- up to which date (the current month grows): a backfill asks the vendor only
-- for what is not here, whatever order the months were fetched in.
CREATE TABLE minute_months (
  symbol      text        NOT NULL,
  month       date        NOT NULL,  -- the first day of the month
  fetched_to  date        NOT NULL,  -- the month is stored from its start up to this date
  run_id      bigint,
  fetched_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (symbol, month)
);

-- Missing sessions and stats per stored resolution.
ALTER TABLE missing_sessions ADD COLUMN timeframe text NOT NULL DEFAULT '1d';
ALTER TABLE missing_sessions DROP CONSTRAINT missing_sessions_pkey;
ALTER TABLE missing_sessions ADD PRIMARY KEY (symbol, timeframe, session);

CREATE TABLE minute_stats (
  symbol            text PRIMARY KEY,
  first_bar         timestamptz,
  last_bar          timestamptz,
  sessions          bigint      NOT NULL DEFAULT 0,
  bars              bigint      NOT NULL DEFAULT 0,
  invalid           bigint      NOT NULL DEFAULT 0,
  missing_sessions  bigint      NOT NULL DEFAULT 0,
  expected_sessions bigint      NOT NULL DEFAULT 0,
  completeness      double precision,
  -- sessions whose daily high/low/volume disagree with their regular-hours minutes
  inconsistent_sessions bigint  NOT NULL DEFAULT 0,
  last_update       timestamptz NOT NULL DEFAULT now()
);
