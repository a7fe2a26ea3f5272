"""The words /health, ``appliance status`` and the console use to say what to do."""
from __future__ import annotations

from appliance.alerts.health import demo_reason


def test_demo_data_of_a_symbol_no_longer_configured_is_not_promised_to_the_next_backfill():
    assert demo_reason("demo", ["AAPL"], {"AAPL"}) is None  # demo is what runs: no reason
    every = demo_reason("polygon", ["AAPL", "MSFT"], {"AAPL", "MSFT"})
    assert every is not None and "the next backfill replaces them with polygon's" in every
    one = demo_reason("polygon", ["AAPL", "DEMOX"], {"AAPL"})
    assert one is not None and "2 symbol(s)" in one
    assert "DEMOX is not in symbols: and no backfill replaces it" in one
    assert "`appliance demo-data --delete` deletes it" in one
    assert "the next backfill replaces the others with polygon's history" in one
    gone = demo_reason("polygon", ["DEMOX"], set())
    assert gone is not None and "replaces the others" not in gone
