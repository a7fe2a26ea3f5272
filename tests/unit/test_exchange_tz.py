"""One exchange time zone: derived from the configured calendar by
``exchange_calendars``, never written down a second time."""
from __future__ import annotations

import json
from pathlib import Path

from appliance import calendar as tcal
from appliance.config import SCHEMA_PATH

ROOT = Path(__file__).resolve().parents[2]


def test_the_time_zone_is_the_calendars_own():
    assert tcal.exchange_tz("XNYS") == "America/New_York"
    assert tcal.exchange_tz("XLON") == "Europe/London"  # derived, not a table of ours


def test_the_schema_accepts_only_the_calendars_the_product_supports():
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["properties"]["calendar"]["enum"] == ["XNYS"]


def test_no_module_writes_the_new_york_zone_into_sql():
    """Product SQL gets the zone as a parameter (``%(tz)s``), never a literal;
    the one line left is inside the split-adjustment factor, which moves into
    its own SQL function."""
    hits = []
    for p in sorted((ROOT / "appliance").rglob("*.py")):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if "AT TIME ZONE 'America/New_York'" in line and "execution_date" not in line:
                hits.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert hits == [], hits
