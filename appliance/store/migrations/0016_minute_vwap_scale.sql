-- minute_bars.vwap_scale on every database, also those that applied 0013
-- before it had the column.
--
-- 0013 was released first without vwap_scale (the vwap at the prices'
-- scale), and the column was then added to 0013 itself. The migrations are
-- applied by number, so a database that had applied the first 0013 never got
-- it: reading a minute session (the 1m answers, the export) and writing one
-- (the backfill's stage) failed with "column vwap_scale does not exist",
-- while the schema said version 15 and up to date. This adds the column and
-- the constraint as 0013 has them now, where the column is missing;
-- elsewhere it changes nothing (and reads no row). Sessions stored before
-- have vwap_scale NULL: the vwap at the prices' scale, as they were written.
-- Migrations are not edited once released (tests/unit/test_migrations.py).
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_attribute
             WHERE attrelid = 'minute_bars'::regclass AND attname = 'vwap_scale'
               AND NOT attisdropped) THEN
    RETURN;
  END IF;
  ALTER TABLE minute_bars ADD COLUMN vwap_scale smallint;
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
       AND body IS NULL AND upper_wick IS NULL AND lower_wick IS NULL));
END $$;
