-- Demo data never passes as real. A symbol's `source` in symbol_stats is
-- `demo` while any of its daily bars is still the demo provider's (it was the
-- greatest source name, so one real bar relabelled a synthetic history as
-- real), and minute_stats gets the same label for its minute bars. The
-- labels are set here once for the data already stored; every refresh of the
-- stats keeps them up to date.
ALTER TABLE minute_stats ADD COLUMN source text;

UPDATE symbol_stats st SET source = 'demo'
 WHERE source IS DISTINCT FROM 'demo'
   AND EXISTS (SELECT 1 FROM market_data m
                WHERE m.symbol = st.symbol AND m.timeframe = st.timeframe
                  AND m.source = 'demo');

UPDATE minute_stats ms SET source = (
  SELECT CASE WHEN bool_or(b.source = 'demo') THEN 'demo' ELSE max(b.source) END
    FROM minute_bars b WHERE b.symbol = ms.symbol);
