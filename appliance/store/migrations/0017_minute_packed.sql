-- A minute session's candle in one bytea, sent as it is stored.
--
-- The columnar answers, the bulk answer and the export read every session's
-- arrays, and PostgreSQL sends an array element by element (array_send: a
-- call of the element type's send function and an allocation each, about
-- 45 ns, eight elements a bar). That was most of the server's share of an
-- export and capped it below 2 million bars a second on two cores
-- (bench/README.md, issue 27, "Sixth look" and "Seventh look"). A bytea is
-- sent as it is: measured on a year of five symbols' minutes, the server
-- sent the sessions about 4 times faster, and the client decoded them 3 to
-- 7 times faster.
--
-- So a session stored as a candle (0013) is now stored with its seven
-- per-bar numbers in `packed`, one column after the other, big-endian:
--   open (int8), body, upper wick, lower wick (int2), volume, vwap (int8, at
--   volume_scale and vwap_scale), trades (int4)
-- 34 bytes a bar; a NULL volume or vwap is the smallest int8, a NULL trade
-- count -1 (appliance/store/packed.py, its one home). `minutes` and
-- `invalid` stay arrays: SQL counts sessions' bars and finds invalid ones
-- with them. open, high, low, close, volume, vwap, trades, body and the
-- wicks are NULL in such a row.
--
-- SQL reads a packed number with get_byte or through its hex digits
-- (PostgreSQL has no function for it), dearer than unnesting an array: the
-- JSON and CSV answers, the revisions and the rollups refreshed in SQL pay
-- that (a page of JSON 10-15 % slower; the daily/minute consistency check
-- reads packed sessions by numpy instead), measured in bench/README.md.
--
-- Every value is the same integer as before: a read is bit for bit the one
-- of the arrays. Rows stored before keep their arrays (both read alike), so
-- this migration rewrites no row; `appliance repack` writes them again
-- packed, and so does any re-fetch. The constraint is replaced by one
-- allowing the third form; checking it reads no array.
ALTER TABLE minute_bars ADD COLUMN packed bytea;

ALTER TABLE minute_bars
  DROP CONSTRAINT minute_bars_scaled_xor_raw,
  ADD CONSTRAINT minute_bars_scaled_xor_raw CHECK (
    (scale IS NOT NULL AND scale BETWEEN 0 AND 9 AND raw IS NULL AND packed IS NULL
     AND open IS NOT NULL AND volume IS NOT NULL AND vwap IS NOT NULL
     AND ((high IS NOT NULL AND low IS NOT NULL AND close IS NOT NULL
           AND body IS NULL AND upper_wick IS NULL AND lower_wick IS NULL)
          OR
          (high IS NULL AND low IS NULL AND close IS NULL
           AND body IS NOT NULL AND upper_wick IS NOT NULL AND lower_wick IS NOT NULL))
     AND (volume_scale IS NULL OR volume_scale BETWEEN 0 AND 9)
     AND (vwap_scale IS NULL OR vwap_scale BETWEEN 0 AND 9))
    OR
    (scale IS NOT NULL AND scale BETWEEN 0 AND 9 AND raw IS NULL AND packed IS NOT NULL
     AND open IS NULL AND high IS NULL AND low IS NULL AND close IS NULL
     AND volume IS NULL AND vwap IS NULL AND trades IS NULL
     AND body IS NULL AND upper_wick IS NULL AND lower_wick IS NULL
     AND volume_scale BETWEEN 0 AND 9 AND vwap_scale BETWEEN 0 AND 9
     AND length(packed) = 34 * cardinality(minutes))
    OR
    (scale IS NULL AND raw IS NOT NULL AND packed IS NULL
     AND open IS NULL AND high IS NULL AND low IS NULL AND close IS NULL
     AND volume IS NULL AND vwap IS NULL AND volume_scale IS NULL AND vwap_scale IS NULL
     AND body IS NULL AND upper_wick IS NULL AND lower_wick IS NULL));
