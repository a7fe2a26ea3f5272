"""Shared pieces of the reliability scenarios: real processes, loopback fakes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import free_port, wait_until  # noqa: F401 - re-exported for the scenarios

ADMIN = {"Authorization": "Bearer test-admin-token-0123456789"}


def cli(config: Path, *args, **kw) -> subprocess.Popen:
    env = dict(os.environ)
    env["APPLIANCE_CONFIG"] = str(config)
    return subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config", str(config),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True, **kw)


def kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(timeout=30)


def stored_rows(conn, symbol: str) -> list[tuple]:
    return conn.execute(
        """SELECT (ts AT TIME ZONE 'America/New_York')::date, open, high, low, close, volume,
                  vwap, trades FROM market_data WHERE symbol = %s ORDER BY ts""",
        (symbol,)).fetchall()


def assert_store_equals_truth(conn, truth, symbols) -> int:
    """Every candle exactly as the vendor published it, no duplicates; returns the count."""
    dupes = conn.execute("""SELECT count(*) FROM (SELECT symbol, ts FROM market_data
                            GROUP BY 1, 2 HAVING count(*) > 1) d""").fetchone()[0]
    assert dupes == 0, f"{dupes} duplicated candles"
    total = 0
    for sym in symbols:
        got, want = stored_rows(conn, sym), truth.rows(sym)
        assert got == want, f"{sym}: {len(got)} stored vs {len(want)} published, first " \
                            f"difference at {next((a, b) for a, b in zip(got + [None] * 9, want, strict=False) if a != b)}"  # noqa: E501
        total += len(got)
    return total


def polygon_config(config_factory, fake, symbols, start, **over):
    poly = {"api_key": "test-key", "base_url": fake.base_url, "requests_per_minute": 100000,
            "timeout_seconds": 0.5, "max_retries": 8, "retry_backoff_seconds": 0.01,
            "max_retry_seconds": 30}
    poly.update(over.pop("polygon", {}))
    return config_factory(provider={"name": "polygon", "polygon": poly}, symbols=list(symbols),
                          history={"start": start.isoformat(), "lookback_sessions": 5}, **over)
