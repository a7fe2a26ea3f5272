"""Market Data Appliance: a self-hosted, verified store of OHLCV candles."""

__version__ = "0.1.0"
