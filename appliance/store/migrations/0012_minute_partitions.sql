-- minute_bars, natively range-partitioned by the year of its session, like
-- market_data: minute_bars_y2024 holds the sessions of 2024. Minute retention
-- (retention.bar_years.1m) then drops whole years (the partition detached and
-- dropped, its TOAST with it) instead of deleting rows whose TOASTed arrays
-- stay on disk until a vacuum, and whose space the table keeps; only the
-- year the cutoff falls in is deleted from row by row. The appliance creates
-- the partitions ahead of the sessions it writes (store.pool.ensure_partitions:
-- this year and the next at every migration, two years ahead at maintenance,
-- and the years of every write before it writes).
--
-- The table is rebuilt in this migration's transaction: the old one renamed,
-- the new one created LIKE it INCLUDING ALL (columns, defaults, the primary
-- key, the CHECK constraints of 0009, the pglz compression of 0003, every
-- index, as partitioned indexes), a partition created for every year of the
-- sessions stored, the rows copied (their compressed arrays as they are), the
-- old table dropped.
ALTER TABLE minute_bars RENAME TO minute_bars_unpartitioned;
ALTER INDEX minute_bars_pkey RENAME TO minute_bars_unpartitioned_pkey;

CREATE TABLE minute_bars (LIKE minute_bars_unpartitioned INCLUDING ALL)
  PARTITION BY RANGE (session);

DO $$
DECLARE y integer;
BEGIN
  FOR y IN SELECT DISTINCT extract(year FROM session)::integer
           FROM minute_bars_unpartitioned ORDER BY 1 LOOP
    EXECUTE format('CREATE TABLE %I PARTITION OF minute_bars FOR VALUES FROM (%L) TO (%L)',
                   'minute_bars_y' || lpad(y::text, 4, '0'), make_date(y, 1, 1),
                   make_date(y + 1, 1, 1));
  END LOOP;
END $$;

INSERT INTO minute_bars SELECT * FROM minute_bars_unpartitioned;

DROP TABLE minute_bars_unpartitioned;
