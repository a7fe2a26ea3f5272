-- Which symbols have a session stored on a day, without reading a year's
-- primary key: a flat file's ingest asks it before it writes the day
-- (store.minutes.symbols_on). The sessions it finds go through the upsert;
-- every other session of the file is copied straight into minute_bars. One
-- entry per symbol-session (about 9,000 a day for the whole market), on
-- every partition, those created later included.
CREATE INDEX IF NOT EXISTS minute_bars_session_idx ON minute_bars (session);
