"""The second yardstick for the API benchmark: the small app anyone would write
first. Flask + psycopg (one psycopg_pool pool), the JSON built in Python with
``json.dumps``; no validation, auth, metrics or streaming. Served by gunicorn's
own command line with the appliance's settings (bench_api.py builds it), so
that it imports psycopg in the worker, after gevent has patched it.

    GET /historical/S0001?start=1946-01-02&end=1946-12-31
"""
import json
import os

from flask import Flask, Response, request
from psycopg_pool import ConnectionPool

app = Flask(__name__)
pool = ConnectionPool(os.environ["SMALL_DATABASE_URL"], min_size=4,
                      max_size=int(os.environ.get("SMALL_POOL_SIZE", "10")), open=True)
SQL = """SELECT (ts AT TIME ZONE 'America/New_York')::date, open, high, low, close, volume, vwap,
                validated, quality_score, gap_detected, gap_kind, source
         FROM market_data WHERE symbol = %s AND timeframe = '1d' AND validated
           AND ts >= (%s::date::timestamp AT TIME ZONE 'America/New_York')
           AND ts < ((%s::date + 1)::timestamp AT TIME ZONE 'America/New_York') ORDER BY ts"""
KEYS = ("time", "open", "high", "low", "close", "volume", "vwap", "validated", "quality_score",
        "gap_detected", "gap_kind", "source")


@app.get("/historical/<symbol>")
def historical(symbol):
    start, end = request.args["start"], request.args["end"]
    with pool.connection() as conn:
        rows = conn.execute(SQL, (symbol, start, end)).fetchall()
    data = [dict(zip(KEYS, (r[0].isoformat(),) + r[1:], strict=False)) for r in rows]
    body = {"symbol": symbol, "timeframe": "1d", "start_date": start, "end_date": end,
            "adjusted": False, "count": len(data), "data": data}
    return Response(json.dumps(body), mimetype="application/json")
