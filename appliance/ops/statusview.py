"""``appliance status``: the operator's terminal view (the old monitor.sh).

Health, open alerts, jobs, backups and data freshness, from the same
computation as /health and /api/v1/status. Rich text on a terminal, plain
text when piped, ``--json`` for scripts, ``--watch`` to refresh in place.
Exit code: 0 healthy, 1 degraded, 2 unhealthy (cron- and Nagios-friendly).

Besides what /health computes, the view asks the web server itself
(``GET /health`` on ``server.bind``): a web server that does not answer is the
guide's "API not responding" and makes the status unhealthy, which /health
cannot say about itself.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import signal
import sys
import time

import requests

from appliance.alerts import health as health_mod

WEB_TIMEOUT_S = 2.0


def web_url(cfg) -> str:
    host, _, port = cfg["server"]["bind"].rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/health"


def web_probe(cfg, timeout: float = WEB_TIMEOUT_S) -> dict:
    """Does the web server answer /health? (any JSON answer counts, also a 503)"""
    url = web_url(cfg)
    try:
        r = requests.get(url, timeout=timeout)
        body = r.json()
        if not isinstance(body, dict) or "status" not in body:
            raise ValueError(f"HTTP {r.status_code} without a health body")
        return {"status": "ok", "url": url, "http_status": r.status_code,
                "reported": body["status"], "replica": body.get("replica")}
    except Exception as e:  # noqa: BLE001 - any failure is "not answering"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {"status": "error", "url": url, "error": f"{e.__class__.__name__}: {msg}"[:300]}


def snapshot(rt) -> dict:
    with cf.ThreadPoolExecutor(max_workers=1) as ex:
        web_fut = ex.submit(web_probe, rt.config)
        h = health_mod.compute(rt)
        st = health_mod.status_body(rt, h)
        web = web_fut.result()
    # the replica as the web server sees it (it resolved read_url in the
    # appliance's environment), else as this command does
    st["replica"] = web.pop("replica", None) or h.replica
    st["web"] = web
    order = ("healthy", "degraded", "unhealthy")
    if web.get("reported") in order and order.index(web["reported"]) > order.index(st["status"]):
        st["status"] = web["reported"]
        st["reasons"] = [f"the web server reports {web['reported']}", *st["reasons"]]
    if st["replica"].get("state") in ("lagging", "down") and st["status"] == "healthy":
        st["status"] = "degraded"
    if web["status"] != "ok":
        st["status"] = "unhealthy"
        st["reasons"] = [f"web server not answering at {web['url']}: {web['error']}",
                         *st["reasons"]]
    # the severity follows what the status became here
    if st["status"] == "unhealthy":
        st["severity"] = "critical"
    elif st["status"] == "degraded" and st.get("severity") == "ok":
        st["severity"] = "warning"
    return st


def exit_code(st: dict) -> int:
    """As a Nagios check reads it: 0 ok, 1 warning, 2 critical (unhealthy,
    or degraded by a critical alert: a dead worker pages as critical)."""
    return {"ok": 0, "warning": 1}.get(st.get("severity") or "", 2)


def unreachable(message: str, *, as_json: bool) -> int:
    """What ``status`` says when it cannot even find the servers (an
    embedded PostgreSQL or Redis that is not running: ``status`` never
    starts one, it would hide the outage it is asked about); exit 2."""
    if as_json:
        print(json.dumps({"status": "unhealthy", "severity": "critical", "database": "error",
                          "reasons": [message]}, indent=2))
    else:
        print("Market Data Appliance: UNHEALTHY (critical)")
        print(f"  {message}")
    return 2


def _age(ts) -> str:
    if not ts:
        return "-"
    if isinstance(ts, str):
        ts = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    s = (dt.datetime.now(dt.UTC) - ts).total_seconds()
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s / n:.1f}{unit} ago"
    return f"{s:.0f}s ago"


def replica_line(r: dict) -> tuple[str, str]:
    """The ``Replica`` line: off, or its state, lag and whether it serves reads."""
    if not r.get("configured"):
        return ("", "Replica    off (every read on the primary)")
    lag = r.get("lag_seconds")
    text = (f"Replica    {r.get('state')}"
            + (f", lag {lag:.1f} s" if lag is not None else "")
            + (", serving reads" if r.get("serving_reads") else ", reads on the primary")
            + (f": {r['reason']}" if r.get("reason") else ""))
    return ("" if r.get("state") == "ok" else "bold yellow", text)


def render_lines(st: dict) -> list[tuple[str, str]]:
    """(style, text) lines; style is a rich style name or ''."""
    colour = {"healthy": "bold green", "degraded": "bold yellow", "unhealthy": "bold red"}
    sev = st.get("severity")
    out = [(colour.get(st["status"], ""), f"Market Data Appliance: {st['status'].upper()}"
            + (f" ({sev})" if sev and sev != "ok" else "")
            + f"   provider {st.get('provider')}   {st.get('timestamp')}")]
    for r in st.get("reasons", []):
        out.append(("yellow", f"  - {r}"))
    w = st.get("web") or {}
    if w:
        out.append(("" if w.get("status") == "ok" else "bold red",
                    f"Web        {'answering' if w.get('status') == 'ok' else 'NOT ANSWERING'} "
                    f"at {w.get('url')}"))
    d = st["database"]
    if d.get("status") == "ok":
        behind = d.get("latest_data_sessions_behind")
        out.append(("", f"Data       {d['symbols_available']} symbols, {d['total_records']:,} "
                        f"candles, validation {d['validation_rate_pct']}%, gaps "
                        f"{d['gaps_flagged']} ({d['gaps_flagged_pct']}%)"))
        out.append(("", f"Freshness  latest {d.get('latest_data') or '-'}"
                        + (f" ({behind} session(s) behind)" if behind is not None else "")))
    else:
        out.append(("bold red", f"Database   ERROR: {d.get('error')}"))
    out.append(replica_line(st.get("replica") or {}))
    ff = st.get("flat_files")
    if ff is not None:
        out.append(("", "Flat files " + ("; ".join(
            f"{tf} newest {v['newest_day']} ({v['files']} files, ingested "
            f"{_age(v['ingested_at'])})" for tf, v in sorted(ff.items())) or "none ingested yet")))
    sch = st.get("scheduler", {})
    out.append(("", f"Scheduler  {'running' if sch.get('running') else 'STOPPED'}, worker "
                    f"{'alive' if sch.get('worker_alive') else 'DOWN'}"))
    for job, j in sorted((sch.get("jobs") or {}).items()):
        last = j.get("last_run") or {}
        nxt = j.get("next_run")
        out.append(("", f"  {job:<19} last {last.get('status') or '-':<8} "
                        f"{_age(last.get('finished_at') or last.get('started_at')):<12} "
                        f"next {str(nxt)[:16] if nxt else ('off' if j.get('schedule') == 'off' else '-')}"))
    b = st.get("backups") or {}
    lb = b.get("latest")
    rtst = b.get("last_restore_test") or {}
    # the latest backup's own restore test, and the last test of any backup:
    # a test that passed for an older archive says nothing of the newest one
    out.append(("", f"Backups    latest {lb['filename'] if lb else 'none'}"
                    + (f" ({_age(lb['created_at'])}), its restore test "
                       f"{lb.get('restore_test_status') or 'not run yet'}" if lb else "")))
    if b.get("drive_error"):
        out.append(("bold red", f"           {b['drive_error']}: its archives cannot be "
                                f"read, tested or restored until it is"))
    if rtst:
        out.append(("" if rtst.get("status") == "passed" else "bold red",
                    f"           last restore test {rtst.get('status')} for "
                    f"{rtst.get('filename')} ({_age(rtst.get('at'))})"))
    alerts = st.get("alerts") or []
    out.append(("bold" if alerts else "", f"Alerts     {len(alerts)} open"))
    for a in alerts:
        out.append(("red" if a["severity"] == "critical" else "yellow",
                    f"  [{a['severity']}] {a['key']}: {a['message'][:160]}"))
    return out


def run_status(rt, *, as_json: bool = False, watch: bool = False, interval: float = 5.0) -> int:
    """``appliance status`` of the running appliance (the runtime has its
    running config; the file on disk only finds the servers)."""
    try:
        rt.open(wait=False)
        if as_json:
            st = snapshot(rt)
            print(json.dumps(st, default=str, indent=2))
            return exit_code(st)
        tty = sys.stdout.isatty()
        if not watch:
            st = snapshot(rt)
            _print(render_lines(st), tty)
            return exit_code(st)
        return _watch(rt, interval, tty)
    finally:
        rt.close()


def _print(lines, tty: bool) -> None:
    if tty:
        from rich.console import Console
        c = Console()
        for style, text in lines:
            c.print(text, style=style or None, markup=False, highlight=False)
    else:
        for _, text in lines:
            print(text)


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def _watch(rt, interval: float, tty: bool) -> int:
    code = 2
    # SIGTERM/SIGHUP end the watch like Ctrl-C does, so that rich's Live
    # restores the terminal (the cursor it hides) on the way out
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        if tty:
            from rich.live import Live
            from rich.text import Text
            with Live(refresh_per_second=4, screen=False) as live:
                while True:
                    st = snapshot(rt)
                    code = exit_code(st)
                    t = Text()
                    for style, text in render_lines(st):
                        t.append(text + "\n", style=style or None)
                    live.update(t)
                    time.sleep(interval)
        while True:
            st = snapshot(rt)
            code = exit_code(st)
            _print(render_lines(st), False)
            print("", flush=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        return code
