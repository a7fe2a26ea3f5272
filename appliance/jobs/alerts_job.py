"""The ``alerts`` job (every minute): evaluate every alert rule."""
from __future__ import annotations


def run(rt, run_id, report, now=None) -> dict:
    import datetime as dt

    from .. import alerts
    if isinstance(now, str):
        now = dt.datetime.fromisoformat(now)
    res = alerts.evaluate(rt, now=now)
    if res.get("error"):
        return {"status": "failed", "error": res["error"]}
    return {"status": "ok", **res}
