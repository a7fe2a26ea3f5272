"""Vendor providers behind one interface (see ``base.Provider``).

``make_provider(cfg["provider"])`` builds the configured one; ``name``
overrides ``provider.name`` (e.g. the second source of the spot-check).
"""
from __future__ import annotations

from collections.abc import Mapping

from appliance.config.loader import DEFAULTS
from appliance.core.candles import Bars, Split
from appliance.core.errors import ConfigError
from appliance.providers.base import Provider, require_api_key
from appliance.providers.csvdir import CsvProvider
from appliance.providers.demo import DemoProvider
from appliance.providers.http import shared_limiter
from appliance.providers.polygon import PolygonProvider
from appliance.providers.ratelimit import GlobalRateLimiter
from appliance.providers.tiingo import TiingoProvider
from appliance.providers.yahoo import YahooProvider

NAMES = ("polygon", "yahoo", "tiingo", "csv", "demo")

__all__ = ["Bars", "Provider", "Split", "NAMES", "make_provider", "settings"]


def settings(name: str, section: Mapping | None = None) -> dict:
    """The ``provider.<name>`` section: ``section`` over the config defaults,
    the one home of every vendor default. ``csv`` gets none: its default path
    is relative, and means something only once the loader has resolved it
    against the config file's folder."""
    base = DEFAULTS["provider"][name] if name in NAMES and name != "csv" else {}
    return {**base, **dict(section or {})}


def _limiter(vendor: str, key: str, sub: Mapping, redis):
    """Shared by every process when there is a Redis, else by this process."""
    if redis is not None:
        return GlobalRateLimiter(redis, vendor, key, sub["requests_per_minute"])
    return shared_limiter(vendor, key, sub["requests_per_minute"])


def make_provider(provider_cfg: Mapping | None, name: str | None = None, stats=None,
                  redis=None) -> Provider:
    """Build a provider from the ``provider:`` config section. With ``redis``
    (a client), a keyed vendor's rate limit is shared by every process that
    uses that Redis (``ratelimit.GlobalRateLimiter``).

    Missing sub-sections use the defaults. Raises ``ProviderAuthError`` when a
    keyed vendor has an empty key and ``ConfigError`` for an unknown name or a
    CSV provider without a path."""
    cfg = dict(provider_cfg or {})
    name = (name or cfg.get("name") or "demo").lower()
    return _build(name, settings(name, cfg.get(name)), stats, redis)


def _build(name: str, sub: dict, stats, redis=None) -> Provider:
    if name == "polygon":

        key = require_api_key("polygon", sub["api_key"])
        return PolygonProvider(sub, stats=stats,
                               limiter=_limiter("polygon", key, sub, redis))
    if name == "yahoo":

        return YahooProvider(sub, stats=stats)
    if name == "tiingo":

        key = require_api_key("tiingo", sub["api_key"])
        return TiingoProvider(sub, stats=stats, limiter=_limiter("tiingo", key, sub, redis))
    if name == "csv":

        if not sub.get("path"):
            raise ConfigError(["provider.csv.path: required when provider.name is csv"])
        return CsvProvider(sub["path"])
    if name == "demo":

        return DemoProvider(seed=sub["seed"], calendar=sub.get("calendar", "XNYS"),
                            universe=sub.get("universe"))
    raise ConfigError([f"provider.name: unknown provider {name!r} (one of {', '.join(NAMES)})"])
