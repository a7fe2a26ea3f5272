-- The 5m..4h rollups stored as candles, like minute sessions since 0013.
--
-- rollup_bars (0003) holds float8 arrays: pglz finds little in them, and a
-- whole-market day's rollups took 41 bytes per minute bar, twice the minutes
-- themselves. A rollup's open, high, low and close are prices of its minute
-- session, exact at a decimal scale, and its volume a sum of its minutes'
-- volumes, exact at theirs. So a rollup row whose minute session is scaled,
-- and whose bars' differences all fit a smallint, is stored as
--   scale          the fewest decimals of the row's open, high, low, close
--   open_scaled    open * 10^scale                       (int8)
--   body           (close - open) * 10^scale             (int2)
--   upper_wick     (high - greatest(open, close)) * 10^scale
--   lower_wick     (least(open, close) - low) * 10^scale
--   volume_scale   the minute session's volume scale (0013)
--   volume_scaled  volume * 10^volume_scale               (int8)
-- with open, high, low, close and volume NULL; vwap (a quotient) and trades
-- stay as they are. Measured on a generated whole-market day (bench/README.md,
-- run 7): 41 -> 27.6 bytes of rollups per minute bar. Other rows (a raw
-- minute session, a wider candle: a 4h bar of a volatile name at four
-- decimals) keep the float8 form, and the rows stored before this migration
-- too: both forms are read alike (store.minutes._source), so nothing is
-- rewritten here and checking the constraint reads no array.
ALTER TABLE rollup_bars
  ADD COLUMN scale         smallint,
  ADD COLUMN volume_scale  smallint,
  ADD COLUMN open_scaled   int8[],
  ADD COLUMN volume_scaled int8[],
  ADD COLUMN body          smallint[],
  ADD COLUMN upper_wick    smallint[],
  ADD COLUMN lower_wick    smallint[],
  ALTER COLUMN open DROP NOT NULL,
  ALTER COLUMN high DROP NOT NULL,
  ALTER COLUMN low DROP NOT NULL,
  ALTER COLUMN close DROP NOT NULL,
  ALTER COLUMN volume DROP NOT NULL;

DO $$
DECLARE c text;
BEGIN
  FOREACH c IN ARRAY ARRAY['open_scaled', 'volume_scaled', 'body', 'upper_wick',
                           'lower_wick'] LOOP
    EXECUTE format('ALTER TABLE rollup_bars ALTER COLUMN %I SET COMPRESSION pglz', c);
  END LOOP;
END $$;

ALTER TABLE rollup_bars
  ADD CONSTRAINT rollup_bars_floats_xor_candles CHECK (
    (scale IS NULL AND volume_scale IS NULL
     AND open IS NOT NULL AND high IS NOT NULL AND low IS NOT NULL AND close IS NOT NULL
     AND volume IS NOT NULL
     AND open_scaled IS NULL AND volume_scaled IS NULL AND body IS NULL
     AND upper_wick IS NULL AND lower_wick IS NULL)
    OR
    (scale IS NOT NULL AND scale BETWEEN 0 AND 9
     AND volume_scale IS NOT NULL AND volume_scale BETWEEN 0 AND 9
     AND open IS NULL AND high IS NULL AND low IS NULL AND close IS NULL AND volume IS NULL
     AND open_scaled IS NOT NULL AND volume_scaled IS NOT NULL AND body IS NOT NULL
     AND upper_wick IS NOT NULL AND lower_wick IS NOT NULL
     AND cardinality(open_scaled) = cardinality(starts)
     AND cardinality(volume_scaled) = cardinality(starts)
     AND cardinality(body) = cardinality(starts)
     AND cardinality(upper_wick) = cardinality(starts)
     AND cardinality(lower_wick) = cardinality(starts)));
