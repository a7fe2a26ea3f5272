"""The loopback fake's minute data at benchmark scale (no database needed).

Measured in one run:
  1. ``make_minute_truth`` for N symbols x 1 year (``keep_minutes=False``:
     daily bars kept, minutes regenerated per symbol on demand): time, bars,
     peak RSS;
  2. serving: one month of one symbol's minutes per request (the vendor's
     advice), 50,000-minute pages, through HTTP on loopback: pages/s and
     bars/s;
  3. the fake's row encoder against ``json.dumps`` of the same rows as dicts
     (the daily path's way): byte-identical bodies, speed ratio.

    .venv/bin/python bench/bench_minute_fake.py [--symbols 500] [--session extended]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.minute_truth import make_minute_truth  # noqa: E402
from tests.fakes.polygon_fake import PolygonFake, _num, aggs_body  # noqa: E402
from tests.fakes.vendor_minutes import aggregate_minutes  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--session", default="extended", choices=("extended", "regular"))
    ap.add_argument("--start", default="2024-01-01")
    ap.add_argument("--end", default="2024-12-31")
    ap.add_argument("--serve-symbols", type=int, default=5)
    a = ap.parse_args()
    syms = [f"M{i:04d}" for i in range(a.symbols)]

    t0 = time.perf_counter()
    truth = make_minute_truth(syms, a.start, a.end, seed=7, session=a.session,
                              keep_minutes=False, cache_symbols=2)
    gen = time.perf_counter() - t0
    print(f"generate {a.symbols} symbols x {len(truth.sessions)} sessions ({a.session}): "
          f"{gen:.1f} s, {truth.n_minutes:,} minute bars ({truth.n_regular_minutes:,} regular), "
          f"{truth.n_minutes / gen:,.0f} bars/s, peak RSS {peak_rss_mb():.0f} MB")

    months = [(f"{a.start[:4]}-{m:02d}-01", f"{a.start[:4]}-{m:02d}-{d}")
              for m, d in zip(range(1, 13), (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31), strict=False)]
    with PolygonFake(truth.bars, truth.splits, minutes=truth.minutes, api_key=None) as f:
        t0 = time.perf_counter()
        pages = bars = 0
        for sym in syms[:a.serve_symbols]:
            for lo, hi in months:
                url = (f"{f.base_url}/v2/aggs/ticker/{sym}/range/1/minute/{lo}/{hi}"
                       "?adjusted=false&limit=50000")
                while url:
                    with urllib.request.urlopen(url) as r:
                        body = json.loads(r.read())
                    pages += 1
                    bars += body["resultsCount"]
                    url = body.get("next_url")
        dt_s = time.perf_counter() - t0
    print(f"serve {a.serve_symbols} symbols x 12 months: {pages} pages, {bars:,} bars in "
          f"{dt_s:.1f} s: {pages / dt_s:.1f} pages/s, {bars / dt_s:,.0f} bars/s "
          "(HTTP, JSON parse included)")

    mb = truth.minutes[syms[0]]
    bk = aggregate_minutes(mb.take(slice(0, 50_000)), 1)
    t0 = time.perf_counter()
    fast = aggs_body(syms[0], False, bk, "OK", "x", None)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = [{"v": _num(v), "vw": vw, "o": o, "c": c, "h": h, "l": lo, "t": t, "n": n}
            for v, vw, o, c, h, lo, t, n in zip(bk.v.tolist(), bk.vw.tolist(), bk.o.tolist(),
                                                 bk.c.tolist(), bk.h.tolist(), bk.l.tolist(),
                                                 bk.t.tolist(), bk.n.tolist(), strict=False)]
    plain = json.dumps({"ticker": syms[0], "queryCount": len(rows), "resultsCount": len(rows),
                        "adjusted": False, "results": rows, "status": "OK", "request_id": "x",
                        "count": len(rows)}, separators=(",", ":"))
    t_plain = time.perf_counter() - t0
    assert fast == plain, "the row encoder must match json.dumps byte for byte"
    print(f"encode one 50,000-bar page: row encoder {t_fast * 1000:.0f} ms vs json.dumps of "
          f"dicts {t_plain * 1000:.0f} ms: ratio {t_plain / t_fast:.2f}x (identical bytes)")
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
