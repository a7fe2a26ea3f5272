"""One exchange time zone: derived from the configured calendar by
``exchange_calendars``, never written down a second time."""
from __future__ import annotations

import json
from pathlib import Path

from appliance.config.loader import SCHEMA_PATH
from appliance.core import calendar as tcal

ROOT = Path(__file__).resolve().parents[2]


def test_the_time_zone_is_the_calendars_own():
    assert tcal.exchange_tz("XNYS") == "America/New_York"
    assert tcal.exchange_tz("XLON") == "Europe/London"  # derived, not a table of ours


def test_the_schema_accepts_only_the_calendars_the_product_supports():
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["properties"]["calendar"]["enum"] == ["XNYS"]


def test_the_vendors_zone_is_that_of_every_calendar_accepted():
    """Vendor dates and minutes of the day are taken in ``US_VENDOR_TZ``: it
    must be the exchange time zone of each calendar the config accepts."""
    schema = json.loads(SCHEMA_PATH.read_text())
    for cal in schema["properties"]["calendar"]["enum"]:
        assert tcal.exchange_tz(cal) == tcal.US_VENDOR_TZ, cal


def test_no_module_but_the_calendar_names_the_new_york_zone():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "appliance").rglob("*.py"))
            if p.name != "calendar.py"
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if ('"America/New_York"' in line or "'America/New_York'" in line)
            and "execution_date" not in line]  # the split factor's: moving to its own function
    assert hits == [], hits


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
