"""The yardstick for the API benchmark: a bare WSGI app that runs the same SQL
through psycopg (one pool) and returns the same JSON / CSV as
``GET /api/v1/historical/{symbol}``, without Flask, validation, auth, metrics
or streaming.

    GET /historical/AAPL?start=2025-01-02&end=2025-12-31&format=json|csv

Served by gunicorn with exactly the appliance's settings
(``appliance.web.server.gunicorn_options``) for the config given:

    .venv/bin/python bench/minimal_app.py CONFIG.yaml
"""
from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path
from urllib.parse import parse_qs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from psycopg_pool import ConnectionPool  # noqa: E402

from appliance import store  # noqa: E402

_pool: ConnectionPool | None = None


def _get_pool() -> ConnectionPool:
    global _pool
    if _pool is None:
        _pool = ConnectionPool(os.environ["MINIMAL_DATABASE_URL"], min_size=4,
                               max_size=int(os.environ.get("MINIMAL_POOL_SIZE", "10")),
                               open=True)
        _pool.wait()
    return _pool


def app(environ, start_response):
    symbol = environ["PATH_INFO"].rsplit("/", 1)[-1]
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    start, end = dt.date.fromisoformat(q["start"]), dt.date.fromisoformat(q["end"])
    fmt = q.get("format", "json")
    params = {"symbol": symbol, "tf": store.TIMEFRAME, "start": start, "end": end, "limit": None,
              "tz": "America/New_York"}
    sql = (store.historical_csv_sql if fmt == "csv" else store.historical_json_sql)(False, False)
    with _get_pool().connection() as conn:
        rows = [r[0] for r in conn.execute(sql, params).fetchall()]
    if fmt == "csv":
        body = (",".join(store.HISTORICAL_CSV_HEADER) + "\n" + "".join(rows)).encode()
        ctype = "text/csv; charset=utf-8"
    else:
        body = (f'{{"symbol": "{symbol}", "timeframe": "1d", "start_date": "{start}", '
                f'"end_date": "{end}", "adjusted": false, "count": {len(rows)}, "data": ['
                + ", ".join(rows) + "]}").encode()
        ctype = "application/json"
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def main(config_path: str) -> None:
    from gunicorn.app.base import BaseApplication

    from appliance.config.loader import load_config
    from appliance.web.server import gunicorn_options

    cfg = load_config(config_path)
    os.environ["MINIMAL_DATABASE_URL"] = cfg["database"]["url"]
    os.environ["MINIMAL_POOL_SIZE"] = str(cfg["database"]["pool_size"])
    opts = gunicorn_options(cfg)
    if os.environ.get("MINIMAL_BIND"):
        opts["bind"] = os.environ["MINIMAL_BIND"]

    class App(BaseApplication):
        def load_config(self):
            for k, v in opts.items():
                self.cfg.set(k, v)

        def load(self):
            # psycopg is imported in this master already (``store``): under
            # gevent, switch it to gevent-aware waiting as the appliance does
            if opts["worker_class"] == "gevent":
                from appliance.web.server import cooperative_psycopg
                cooperative_psycopg()
            return app

    App().run()


if __name__ == "__main__":
    main(sys.argv[1])
