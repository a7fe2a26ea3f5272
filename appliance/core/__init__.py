"""Pure logic, no I/O: candles, the trading calendar, timeframes, quality checks, units, errors."""
