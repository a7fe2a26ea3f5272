"""The ``export`` job (daily by default): brings the Parquet dataset in
``export.out`` up to date for each of ``export.timeframes``, from
``history.start`` to today, writing only the months whose bars changed since
the last run (``appliance.export``). With ``export.out`` empty (the default)
it does nothing."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from .. import calendar as tcal
from .. import export
from ..timeframes import base_of


def run(rt, run_id, report, timeframes=None) -> dict:
    cfg = rt.config
    out = cfg["export"]["out"]
    if not out:
        return {"status": "ok", "skipped": "export.out is empty: no dataset configured"}
    today = dt.datetime.now(dt.timezone.utc).date()
    result = {"out": out, "timeframes": {}}
    written = 0
    for tf in timeframes or cfg["export"]["timeframes"]:
        res = export.export(rt.read_conn, tf, cfg.history_start(base_of(tf)), today,
                            Path(out), tz=tcal.exchange_tz(cfg["calendar"]))
        result["timeframes"][tf] = {"written": len(res["written"]), "rows": res["rows"],
                                    "unchanged": res["unchanged"],
                                    "removed": len(res["removed"])}
        written += len(res["written"])
        report({"timeframe": tf, "files_written": written})
    return {"status": "ok", "files_written": written, **result}
