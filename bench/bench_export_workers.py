"""``appliance export`` of a small year with different month writers, side by
side (issue 27): each variant is ``WORKERS:SAVE_EVERY_S`` (``export.WORKERS``
months written at once, the manifest saved at most every ``SAVE_EVERY_S``
seconds); the variants run alternately, each into an empty directory, and the
best and median of each are printed with the bars a second they make.

Stores N symbols x 2024 of regular-session 1m bars as ``bench_export.py``
does (its database, dropped at the end).

    .venv/bin/python bench/bench_export_workers.py [--symbols 5] [--rounds 20] [2:0 3:2 ...]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_api import _drop_db  # noqa: E402
from bench_export import DB, stored_year  # noqa: E402
from bench_intraday import YEAR_END, YEAR_START, say  # noqa: E402

from appliance.ops import export  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("variants", nargs="*", default=["2:0", "3:2"])
    a = ap.parse_args()
    variants = [(int(v.split(":")[0]), float(v.split(":")[1])) for v in a.variants]
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-workers-"))
    times: dict[tuple[int, float], list[float]] = {v: [] for v in variants}
    try:
        _, rt, _, n = stored_year(DB, a.symbols, tmp)
        for _ in range(a.rounds):
            for workers, save_every in variants:
                export.SAVE_EVERY_S = save_every
                t = time.perf_counter()
                export.export(rt.read_conn, "1m", YEAR_START, YEAR_END, tmp / "ds",
                              tz="America/New_York", workers=workers)
                times[(workers, save_every)].append(time.perf_counter() - t)
                shutil.rmtree(tmp / "ds")
        rt.close()
    finally:
        _drop_db(DB)
        shutil.rmtree(tmp, ignore_errors=True)
    for (workers, save_every), ts in times.items():
        best, med = min(ts), statistics.median(ts)
        say(f"{workers} writers, manifest every {save_every:g} s: best {best * 1000:.0f} ms "
            f"({n / best:,.0f} bars/s), median {med * 1000:.0f} ms ({n / med:,.0f} bars/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
