"""Pure logic, no I/O: candles, the trading calendar, timeframes, quality, units, errors."""
