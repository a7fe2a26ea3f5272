-- Cash dividends, and the one home of the adjustment factor.
--
-- A dividend is keyed by (symbol, ex-dividend date, type): the vendor's
-- types CD (regular cash), SC (special cash), LT and ST (long- and short-term
-- capital gains) are kept apart. Every field the vendor sent is kept as sent
-- in `vendor`; the typed columns are read from it. A dividend that cannot be
-- applied (no cash amount, zero or negative cash, two different amounts sent
-- for one key) says why in `problem` and never enters a factor.
CREATE TABLE dividends (
  symbol            text             NOT NULL,
  ex_dividend_date  date             NOT NULL,
  dividend_type     text             NOT NULL CHECK (dividend_type IN ('CD', 'SC', 'LT', 'ST')),
  cash_amount       double precision,
  currency          text,
  declaration_date  date,
  record_date       date,
  pay_date          date,
  frequency         integer,
  vendor_id         text,
  vendor            jsonb            NOT NULL DEFAULT '{}',
  problem           text,
  source            text             NOT NULL,
  fetched_at        timestamptz      NOT NULL DEFAULT now(),
  PRIMARY KEY (symbol, ex_dividend_date, dividend_type)
);

-- A stored dividend the vendor later sent with other values: old and new
-- vendor records (like `revisions` for bars).
CREATE TABLE dividend_revisions (
  id                bigserial PRIMARY KEY,
  symbol            text        NOT NULL,
  ex_dividend_date  date        NOT NULL,
  dividend_type     text        NOT NULL,
  old               jsonb       NOT NULL,
  new               jsonb       NOT NULL,
  run_id            bigint,
  revised_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dividend_revisions_symbol ON dividend_revisions (symbol, ex_dividend_date);

-- The cumulative adjustment of one symbol, as steps: a bar whose session lies
-- in `span` is adjusted by multiplying its prices by `price_factor` and
-- dividing its volume by `volume_factor` (1 outside every span: from the
-- latest event on, prices are as traded).
--
-- mode 'none': no step. 'splits': each stored split with ratio
-- r = split_from / split_to applies to the sessions before its execution
-- date. 'total': the splits, and each applicable dividend with
-- r = 1 - cash_amount / close_before_ex, where close_before_ex is the raw
-- close of the last valid daily bar before the ex-dividend date (in the
-- exchange time zone p_tz); it applies
-- to the sessions before the ex-date (an ex-date on a non-session thus takes
-- effect at the next session). Dividends move prices only, never volume.
-- A dividend with a problem, with no bar before its ex-date, or whose cash is
-- not below that close, is left out (the store raised an event for it).
--
-- Factors are multiplied from the latest event backwards, one multiplication
-- per event, no logarithms: a single 4-for-1 split gives exactly 0.25.
CREATE FUNCTION adjustment_steps(p_symbol text, p_mode text, p_tz text)
RETURNS TABLE (span daterange, price_factor double precision, volume_factor double precision)
LANGUAGE plpgsql STABLE AS $$
BEGIN
  IF p_mode IS NULL OR p_mode NOT IN ('none', 'splits', 'total') THEN
    RAISE EXCEPTION 'adjustment mode must be none, splits or total, not %', p_mode;
  END IF;
  RETURN QUERY
  WITH RECURSIVE ev AS (
    SELECT s.execution_date AS day, s.split_from / s.split_to AS pr,
           s.split_from / s.split_to AS vr
    FROM splits s
    WHERE p_mode IN ('splits', 'total') AND s.symbol = p_symbol
      AND s.split_from > 0 AND s.split_to > 0
    UNION ALL
    SELECT d.ex_dividend_date, 1.0 - d.cash_amount / c.close, 1.0::float8
    FROM dividends d
    CROSS JOIN LATERAL (
      SELECT m.close FROM market_data m
      WHERE m.symbol = d.symbol AND m.timeframe = '1d' AND m.validated
        AND m.ts < (d.ex_dividend_date::timestamp AT TIME ZONE p_tz)
      ORDER BY m.ts DESC LIMIT 1) c
    WHERE p_mode = 'total' AND d.symbol = p_symbol AND d.problem IS NULL
      AND d.cash_amount > 0 AND d.cash_amount < c.close),
  seq AS (SELECT ev.day, ev.pr, ev.vr,
                 row_number() OVER (ORDER BY ev.day DESC, ev.pr, ev.vr) AS n
          FROM ev),
  cum AS (SELECT seq.n, seq.day, seq.pr AS kp, seq.vr AS kv FROM seq WHERE seq.n = 1
          UNION ALL
          SELECT seq.n, seq.day, cum.kp * seq.pr, cum.kv * seq.vr
          FROM cum JOIN seq ON seq.n = cum.n + 1),
  per_day AS (SELECT DISTINCT ON (cum.day) cum.day, cum.kp, cum.kv
              FROM cum ORDER BY cum.day, cum.n DESC)
  SELECT daterange(lag(p.day) OVER (ORDER BY p.day), p.day), p.kp, p.kv
  FROM per_day p;
END $$;

-- The price factor of one symbol's bar of session `p_day` in mode `p_mode`
-- (from adjustment_steps, for ad hoc queries and cross-checks).
CREATE FUNCTION adjustment_factor(p_symbol text, p_day date, p_mode text, p_tz text)
RETURNS double precision LANGUAGE sql STABLE AS $$
  SELECT coalesce((SELECT s.price_factor FROM adjustment_steps(p_symbol, p_mode, p_tz) s
                   WHERE s.span @> p_day), 1.0)
$$;

-- Identity. A security is one company's listing, identified by the vendor's
-- composite FIGI where it has one, and keyed here by the symbol that names
-- its bars (its ticker in the config). `security_tickers` says which ticker
-- was in force on each date (from the vendor's ticker-change events: FB from
-- 2012-05-18, META from 2022-06-09); bars fetched under a ticker are kept only
-- for the dates it named this security, so a ticker reused by another company
-- never mixes two companies. `delisted_on` is the vendor's delisted_utc as a
-- New York date: the security traded before it, is not fetched after it, and
-- raises no staleness or gap after its last session.
CREATE TABLE securities (
  symbol          text        PRIMARY KEY,
  composite_figi  text,
  name            text,
  cik             text,
  delisted_on     date,
  source          text        NOT NULL,
  fetched_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX securities_figi ON securities (composite_figi)
  WHERE composite_figi IS NOT NULL;

CREATE TABLE security_tickers (
  symbol      text NOT NULL REFERENCES securities ON DELETE CASCADE,
  ticker      text NOT NULL,
  valid_from  date NOT NULL,
  valid_to    date,
  PRIMARY KEY (symbol, valid_from),
  CHECK (valid_to IS NULL OR valid_to > valid_from)
);
CREATE INDEX security_tickers_ticker ON security_tickers (ticker, valid_from);
