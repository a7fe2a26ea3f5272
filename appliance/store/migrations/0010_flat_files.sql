-- The vendor's flat files ingested: one row per dataset (1d, 1m) and trading
-- day, written in the same transaction as the file's bars, with the ETag and
-- size of the version stored. A file whose row holds its current ETag is
-- done; a re-published file (a new ETag) is read again and its changed bars
-- recorded in revisions; a file that failed has no row (none of its bars is
-- kept) and is tried again by the next run. A file stored while other
-- tickers were selected (a symbol added, the universe's rules changed) is
-- read again too: `selection` says which were.
CREATE TABLE flat_files (
  timeframe    text        NOT NULL,          -- 1d | 1m
  day          date        NOT NULL,          -- the trading day the file holds
  key          text        NOT NULL,
  etag         text        NOT NULL,
  size         bigint      NOT NULL,          -- compressed bytes
  rows         bigint      NOT NULL DEFAULT 0, -- the file's rows read
  bars         bigint      NOT NULL DEFAULT 0, -- bars stored (kept by universe and session)
  tickers      integer     NOT NULL DEFAULT 0,
  skipped      bigint      NOT NULL DEFAULT 0, -- rows left out: universe rules, odd tickers
  revised      bigint      NOT NULL DEFAULT 0,
  selection    text        NOT NULL DEFAULT '',  -- which tickers were kept (ingest.flatfiles.selection_key)
  run_id       bigint,
  ingested_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (timeframe, day)
);
