"""The provider interface every vendor module implements. The candles it
returns are the domain types of ``appliance.core.candles``."""
from __future__ import annotations

import datetime as dt
from typing import Protocol

from appliance.core.candles import Bars, Dividend, Split
from appliance.core.errors import ProviderAuthError


def require_api_key(vendor: str, key: str | None) -> str:
    """``key``, or ProviderAuthError saying where to set it when it is empty."""
    if not key:
        raise ProviderAuthError(f"provider.{vendor}.api_key is empty: set "
                                f"{vendor.upper()}_API_KEY (or provider.{vendor}.api_key in the "
                                f"config file)")
    return key


class Provider(Protocol):
    """What every vendor module offers."""

    name: str
    #: True when ``grouped_daily`` exists (one request for all symbols of a session).
    supports_grouped: bool

    def daily_bars(self, symbol: str, start: dt.date, end: dt.date) -> Bars:
        """Raw (unadjusted) daily bars, both ends inclusive. Raises ProviderError."""

    def splits(self, symbol: str, start: dt.date | None = None,
               end: dt.date | None = None) -> list[Split]:
        """Splits of ``symbol``, deduplicated, sorted by date."""

    def dividends(self, symbol: str, start: dt.date | None = None,
                  end: dt.date | None = None) -> list[Dividend]:
        """Cash dividends of ``symbol``, sorted by ex-date (only vendors that
        publish them: Polygon and the demo)."""

    def grouped_daily(self, session: dt.date) -> dict[str, Bars]:
        """All symbols' bars for one session (only when ``supports_grouped``)."""
