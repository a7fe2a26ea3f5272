"""Vendor providers behind one interface (see ``base.Provider``).

``make_provider(cfg["provider"])`` builds the configured one; ``name``
overrides ``provider.name`` (e.g. the second source of the spot-check).
"""
from __future__ import annotations

from typing import Mapping

from ..errors import ConfigError, ProviderAuthError
from ..candles import Bars, Split
from .base import Provider

NAMES = ("polygon", "yahoo", "tiingo", "csv", "demo")

__all__ = ["Bars", "Provider", "Split", "NAMES", "make_provider"]


def make_provider(provider_cfg: Mapping | None, name: str | None = None, stats=None) -> Provider:
    """Build a provider from the ``provider:`` config section.

    Missing sub-sections use the defaults. Raises ``ProviderAuthError`` when a
    keyed vendor has an empty key and ``ConfigError`` for an unknown name or a
    CSV provider without a path."""
    cfg = dict(provider_cfg or {})
    name = (name or cfg.get("name") or "demo").lower()
    sub = dict(cfg.get(name) or {})
    provider = _build(name, sub, stats)
    client = getattr(provider, "client", None)
    if client is not None and sub.get("retry_backoff_seconds"):
        client.backoff_base = float(sub["retry_backoff_seconds"])
    return provider


def _build(name: str, sub: dict, stats) -> Provider:
    if name == "polygon":
        from .http import shared_limiter
        from .polygon import PolygonProvider

        key = sub.get("api_key") or ""
        if not key:
            raise ProviderAuthError("provider.polygon.api_key is empty: set POLYGON_API_KEY "
                                    "(or provider.polygon.api_key in the config file)")
        rpm = sub.get("requests_per_minute", 5)
        return PolygonProvider(
            key, base_url=sub.get("base_url") or "https://api.polygon.io",
            requests_per_minute=rpm, timeout_seconds=sub.get("timeout_seconds", 30),
            max_retries=sub.get("max_retries", 5), auth=sub.get("auth") or "query",
            stats=stats, max_retry_seconds=sub.get("max_retry_seconds", 120),
            limiter=shared_limiter("polygon", key, rpm))
    if name == "yahoo":
        from .yahoo import YahooProvider

        return YahooProvider(
            base_url=sub.get("base_url") or "https://query1.finance.yahoo.com",
            requests_per_minute=sub.get("requests_per_minute", 60),
            timeout_seconds=sub.get("timeout_seconds", 30), max_retries=sub.get("max_retries", 5),
            stats=stats, max_retry_seconds=sub.get("max_retry_seconds", 120))
    if name == "tiingo":
        from .http import shared_limiter
        from .tiingo import TiingoProvider

        key = sub.get("api_key") or ""
        if not key:
            raise ProviderAuthError("provider.tiingo.api_key is empty: set TIINGO_API_KEY "
                                    "(or provider.tiingo.api_key in the config file)")
        rpm = sub.get("requests_per_minute", 50)
        return TiingoProvider(
            key, base_url=sub.get("base_url") or "https://api.tiingo.com",
            requests_per_minute=rpm, timeout_seconds=sub.get("timeout_seconds", 30),
            max_retries=sub.get("max_retries", 5), stats=stats,
            max_retry_seconds=sub.get("max_retry_seconds", 120),
            limiter=shared_limiter("tiingo", key, rpm))
    if name == "csv":
        from .csvdir import CsvProvider

        if not sub.get("path"):
            raise ConfigError(["provider.csv.path: required when provider.name is csv"])
        return CsvProvider(sub["path"])
    if name == "demo":
        from .demo import DemoProvider

        return DemoProvider(seed=sub.get("seed", 42), calendar=sub.get("calendar", "XNYS"),
                            universe=sub.get("universe"))
    raise ConfigError([f"provider.name: unknown provider {name!r} (one of {', '.join(NAMES)})"])
