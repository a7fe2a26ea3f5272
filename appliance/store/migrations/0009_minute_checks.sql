-- The minute arrays' invariants, held by the database as well as by the code
-- that writes them (store/minutes.py, encode_day): a session is stored either
-- scaled (scale and the six int8 arrays, no raw) or raw (the six float8 rows
-- of raw, no scale), and every array has one element per bar. Adding the
-- constraints checks every row already stored; a row that breaks one stops
-- the migration with the constraint's name.
ALTER TABLE minute_bars
  ADD CONSTRAINT minute_bars_scaled_xor_raw CHECK (
    (scale IS NOT NULL AND scale BETWEEN 0 AND 9 AND raw IS NULL
     AND open IS NOT NULL AND high IS NOT NULL AND low IS NOT NULL
     AND close IS NOT NULL AND volume IS NOT NULL AND vwap IS NOT NULL)
    OR
    (scale IS NULL AND raw IS NOT NULL
     AND open IS NULL AND high IS NULL AND low IS NULL
     AND close IS NULL AND volume IS NULL AND vwap IS NULL)),
  ADD CONSTRAINT minute_bars_equal_lengths CHECK (
    cardinality(trades) = cardinality(minutes)
    AND (scale IS NULL OR (cardinality(open) = cardinality(minutes)
                           AND cardinality(high) = cardinality(minutes)
                           AND cardinality(low) = cardinality(minutes)
                           AND cardinality(close) = cardinality(minutes)
                           AND cardinality(volume) = cardinality(minutes)
                           AND cardinality(vwap) = cardinality(minutes)))
    AND (raw IS NULL OR (array_ndims(raw) = 2 AND array_length(raw, 1) = 6
                         AND array_length(raw, 2) = cardinality(minutes))));
