"""``adjust=total`` against ``adjust=splits`` (issue 28), side by side in one run.

One symbol with a year (2024) of daily bars and of regular-session one-minute
bars (the fakes' truths, stored through ``store.write_bars`` and
``intraday.write``), one 4-for-1 split, four quarterly dividends and a special
one. Then, in alternating rounds (the mode asked first alternates too), the
same requests through the appliance's own app (Flask test client, the body
read whole):

  * ``/api/v1/historical/{symbol}`` of the year of daily bars, JSON;
  * the year of 1m bars, JSON, every page (50,000 bars a page);
  * the year of 1m bars, Parquet, every page.

Reported: the median seconds per request of each mode and the ratio
total/splits (the issue's budget: at most 1.2). The answers of both modes are
checked to have the same number of bars.

Uses the PostgreSQL at $APPLIANCE_BENCH_DATABASE_URL (default the local
server on 5432); creates and drops its own database.

    .venv/bin/python bench/bench_adjust.py [--rounds 15]
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_api import _drop_db, _fresh_db  # noqa: E402
from bench_intraday import YEAR_END, YEAR_START, month_parts, say, write_config  # noqa: E402

from appliance import calendar as tcal  # noqa: E402
from appliance import intraday, quality, store  # noqa: E402
from appliance.core.candles import Dividend  # noqa: E402
from tests.fakes.minute_truth import make_minute_truth  # noqa: E402
from tests.fakes.polygon_fake import make_truth  # noqa: E402

DB = "appliance_bench_adjust"
SYM = "M0000"
TOKEN = "bench-admin-token-0123456789"
SPLIT = dt.date(2024, 6, 10)


def load(url: str, cfg) -> dict:
    daily = make_truth([SYM], YEAR_START, YEAR_END, seed=28, split_date=SPLIT)
    minutes = make_minute_truth([SYM], YEAR_START, YEAR_END, seed=7, session="regular",
                                missing=0, split_symbols=[SYM], split_date=SPLIT.isoformat(),
                                split_to=4.0)
    bars = daily.bars[SYM]
    with psycopg.connect(url) as conn:
        checked = quality.validate(bars, tcal.sessions("XNYS", YEAR_START, YEAR_END), YEAR_END,
                                   splits=daily.splits)
        store.write_bars(conn, bars, checked, issues_of=quality.issues_of, tz="America/New_York")
        store.save_splits(conn, daily.splits, "bench")
        divs = [Dividend(SYM, dt.date(2024, m, 14), "CD", 0.5) for m in (3, 6, 9, 12)]
        divs.append(Dividend(SYM, dt.date(2024, 11, 20), "SC", 3.0))
        store.dividends.save_dividends(conn, divs, "bench")
        conn.commit()
        n1m = 0
        for p in month_parts(minutes.minutes[SYM].to_candles("polygon")):
            intraday.write(conn, cfg, p)
            conn.commit()
            n1m += len(p)
    return {"1d": len(bars), "1m": n1m, "splits": len(daily.splits), "dividends": len(divs)}


def _get_all(client, url: str, fmt: str) -> int:
    rows = 0
    while url:
        r = client.get(url + ("" if fmt == "json" else f"&format={fmt}"),
                       headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.get_data(as_text=True)[:300]
        data = r.get_data()
        if fmt == "json":
            d = json.loads(data)
            rows += len(d["data"])
            url = d.get("next")
        else:
            rows += pq.read_table(io.BytesIO(data)).num_rows
            link = r.headers.get("Link")
            url = link[1:link.index(">")].replace(f"&format={fmt}", "") if link else None
    return rows


CASES = {
    "1d_json": ("/api/v1/historical/{s}?start=2024-01-01&end=2024-12-31&adjust={m}", "json"),
    "1m_json": ("/api/v1/historical/{s}?timeframe=1m&start=2024-01-01&end=2024-12-31"
                "&adjust={m}", "json"),
    "1m_parquet": ("/api/v1/historical/{s}?timeframe=1m&start=2024-01-01&end=2024-12-31"
                   "&adjust={m}", "parquet"),
}


def bench(client, rounds: int) -> dict:
    times = {c: {"splits": [], "total": []} for c in CASES}
    rows = {}
    for case, (tmpl, fmt) in CASES.items():
        for i in range(rounds):
            order = ("splits", "total") if i % 2 == 0 else ("total", "splits")
            for mode in order:
                t = time.perf_counter()
                n = _get_all(client, tmpl.format(s=SYM, m=mode), fmt)
                times[case][mode].append(time.perf_counter() - t)
                assert rows.setdefault(case, n) == n, (case, mode, n)
    out = {}
    for case, t in times.items():
        s, tt = statistics.median(t["splits"]), statistics.median(t["total"])
        out[case] = {"bars": rows[case], "splits_ms": round(s * 1000, 1),
                     "total_ms": round(tt * 1000, 1), "ratio_total_to_splits": round(tt / s, 3)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-adjust-"))
    from appliance.runtime.runtime import Runtime
    from appliance.web import create_app
    url = _fresh_db(DB)
    try:
        path = write_config(tmp / "appliance.yaml", url, "http://127.0.0.1:9", [SYM])
        cfg = yaml.safe_load(path.read_text())
        cfg["server"] = {"admin_token": TOKEN, "secret_key": "bench"}
        path.write_text(yaml.safe_dump(cfg))
        rt = Runtime.from_path(path)
        rt.open()
        t = time.perf_counter()
        counts = load(url, rt.config)
        say(f"stored {counts} ({time.perf_counter() - t:.0f} s)")
        client = create_app(runtime=rt).test_client()
        _get_all(client, CASES["1m_json"][0].format(s=SYM, m="total"), "json")  # warm up
        out = {"stored": counts, "rounds": a.rounds, "cases": bench(client, a.rounds)}
        print(json.dumps(out, indent=1))
        rt.close()
    finally:
        _drop_db(DB)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
