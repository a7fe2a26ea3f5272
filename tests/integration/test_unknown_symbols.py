"""A ticker the vendor does not know is named: the backfill says so (event),
a ``symbol_unknown`` warning opens (dashboard, /health) and ``status`` lists
it; the other symbols are stored as usual."""
from __future__ import annotations

import datetime as dt

from appliance.alerts import health
from appliance.alerts import rules as alerts
from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from appliance.ops.statusview import render_lines, snapshot
from appliance.runtime.runtime import Runtime
from tests.fakes.polygon_fake import PolygonFake, make_truth

START, END = dt.date(2024, 1, 2), dt.date(2024, 3, 28)


def test_a_ticker_the_vendor_does_not_know_is_named_everywhere(config_factory):
    truth = make_truth(["AAPL"], START, END, seed=5)
    with PolygonFake(truth.bars, truth.splits) as fake:
        path = config_factory(
            provider={"name": "polygon",
                      "polygon": {"api_key": "test-key", "base_url": fake.base_url,
                                  "requests_per_minute": 6000, "timeout_seconds": 2,
                                  "max_retries": 2, "retry_backoff_seconds": 0.01}},
            symbols=["AAPL", "NOPEX"], history={"start": START.isoformat(),
                                                "lookback_sessions": 5})
        rt = Runtime.from_path(path)
        rt.open()
        try:
            res = runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                               params={"end": END.isoformat()})
            assert res["status"] == "partial", res
            assert "NOPEX" in res["failed"] and "does not know" in res["failed"]["NOPEX"]
            assert res["unknown_symbols"] == ["NOPEX"]
            with rt.conn() as c:
                ev = [r[0] for r in c.execute(
                    "SELECT message FROM events WHERE kind = 'symbol_unknown'")]
            assert any("NOPEX" in m for m in ev), ev
            alerts.evaluate(rt)
            h = health.compute(rt)
            assert any("NOPEX" in r for r in h.reasons), h.reasons
            assert any(a["key"] == "symbol_unknown" for a in h.db["open_alerts"])
            text = "\n".join(t for _, t in render_lines(snapshot(rt)))
            assert "NOPEX" in text
        finally:
            rt.close()
