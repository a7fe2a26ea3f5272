-- Minute sessions stored smaller and written faster: a bar's close, high and
-- low as its candle's body and wicks, small int2 numbers, and the volume at
-- its own decimal scale.
--
-- pglz (0003) finds little to compress in an int8 array of prices: their low
-- bytes are random, and it takes about 3 bytes a value. A bar's close is
-- near its open and its high and low near them, so a session whose open,
-- high, low and close are all present, and whose differences all fit a
-- smallint, is stored (at the same exact integer scale) as
--   open        open                            (int8, as before)
--   body        close - open                    (int2)
--   upper_wick  high - greatest(open, close)    (int2; 0 when the high is the open or close)
--   lower_wick  least(open, close) - low        (int2; likewise)
-- with high, low and close NULL; and its volume times 10^volume_scale, the
-- fewest decimals of the day's volumes (0 for whole shares), and its vwap
-- times 10^vwap_scale (a vendor's vwap has four decimals where the prices
-- have two), instead of one scale for all of them. Measured on a generated whole-market day (9,000 tickers,
-- 2.3 million bars; bench/README.md): 26.3 -> 21.0 bytes a bar, and the
-- server's compression of a day 3.9 -> 2.8 s (int8 differences compressed
-- to 23.1 B but took pglz 7.8 s: long runs of zero bytes are its slow case).
--
-- Each price is the same integer as before, rebuilt by an addition
-- (store.minutes._decoded in SQL, ops.arrowbars in numpy), so every value
-- read is bit for bit the one of a session stored the old way. Sessions with
-- a missing price or a wider candle, and raw (float8) sessions, are stored as
-- before.
--
-- The sessions stored before keep their layout (no body; volume_scale and
-- vwap_scale NULL: the volume and vwap at the prices' scale), and both are
-- read alike: this migration
-- rewrites no row, and a restored older backup reads as it was written. A
-- session written again (a re-fetch, a re-published flat file) is stored the
-- new way. The constraint of 0009 is replaced by one allowing either form;
-- checking it reads no array.
ALTER TABLE minute_bars
  ADD COLUMN body         smallint[],
  ADD COLUMN upper_wick   smallint[],
  ADD COLUMN lower_wick   smallint[],
  ADD COLUMN volume_scale smallint,
  ADD COLUMN vwap_scale   smallint;

-- pglz like the other arrays (0003), on minute_bars and on each partition
-- (SET COMPRESSION does not reach the partitions that exist; new ones copy
-- the table's)
DO $$
DECLARE c text; t regclass;
BEGIN
  FOR t IN SELECT relid FROM pg_partition_tree('minute_bars') LOOP
    FOREACH c IN ARRAY ARRAY['body', 'upper_wick', 'lower_wick'] LOOP
      EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET COMPRESSION pglz', t, c);
    END LOOP;
  END LOOP;
END $$;

ALTER TABLE minute_bars
  DROP CONSTRAINT minute_bars_scaled_xor_raw,
  ADD CONSTRAINT minute_bars_scaled_xor_raw CHECK (
    (scale IS NOT NULL AND scale BETWEEN 0 AND 9 AND raw IS NULL
     AND open IS NOT NULL AND volume IS NOT NULL AND vwap IS NOT NULL
     AND ((high IS NOT NULL AND low IS NOT NULL AND close IS NOT NULL
           AND body IS NULL AND upper_wick IS NULL AND lower_wick IS NULL)
          OR
          (high IS NULL AND low IS NULL AND close IS NULL
           AND body IS NOT NULL AND upper_wick IS NOT NULL AND lower_wick IS NOT NULL))
     AND (volume_scale IS NULL OR volume_scale BETWEEN 0 AND 9)
     AND (vwap_scale IS NULL OR vwap_scale BETWEEN 0 AND 9))
    OR
    (scale IS NULL AND raw IS NOT NULL
     AND open IS NULL AND high IS NULL AND low IS NULL AND close IS NULL
     AND volume IS NULL AND vwap IS NULL AND volume_scale IS NULL AND vwap_scale IS NULL
     AND body IS NULL AND upper_wick IS NULL AND lower_wick IS NULL)),
  ADD CONSTRAINT minute_bars_candle_lengths CHECK (
    body IS NULL OR (cardinality(body) = cardinality(minutes)
                     AND cardinality(upper_wick) = cardinality(minutes)
                     AND cardinality(lower_wick) = cardinality(minutes)));
