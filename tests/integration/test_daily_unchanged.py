"""``timeframe=1d`` (and no timeframe at all) answers byte for byte what the
daily endpoint answered before intraday bars existed: the golden files were
written by the code of that time (commit 9eb068b) from the same demo data,
with ``APPLIANCE_WRITE_GOLDEN=1``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs

GOLDEN = Path(__file__).with_name("golden")
QUERIES = {
    "aapl_2024q1.json": "/api/v1/historical/AAPL?start=2024-01-01&end=2024-03-31",
    "aapl_split_adjusted.json":
        "/api/v1/historical/AAPL?start=2020-08-20&end=2020-09-10&adjusted=true",
    "aapl_2024q1.csv": "/api/v1/historical/AAPL?start=2024-01-01&end=2024-03-31&format=csv",
    # a range of over FIRST_CHUNK days (read through a server-side cursor)
    "aapl_streamed.json": "/api/v1/historical/AAPL?start=2018-01-01&end=2025-06-30",
    "aapl_invalid.json":
        "/api/v1/historical/AAPL?start=2021-01-01&end=2025-06-30&include_invalid=true&limit=300",
}


@pytest.fixture
def stored(config_factory):
    from appliance.runtime.runtime import Runtime
    path = config_factory(symbols=["AAPL"], history={"start": "2020-01-02",
                                                     "lookback_sessions": 5})
    rt = Runtime.from_path(path)
    rt.open()
    res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                       params={"end": "2025-06-30"})
    assert res["status"] == "ok", res
    yield rt
    rt.close()


def test_daily_answers_are_byte_identical_to_before(stored):
    from appliance.web import create_app
    client = create_app(runtime=stored).test_client()
    write = os.environ.get("APPLIANCE_WRITE_GOLDEN") == "1"
    for name, url in QUERIES.items():
        body = client.get(url).get_data()
        if write:
            GOLDEN.mkdir(exist_ok=True)
            (GOLDEN / name).write_bytes(body)
            continue
        want = (GOLDEN / name).read_bytes()
        assert body == want, name
        sep = "&" if "?" in url else "?"
        assert client.get(url + sep + "timeframe=1d").get_data() == want, name
