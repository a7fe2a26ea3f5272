"""Reloading appliance.yaml: valid changes reach every process and take effect
(added symbols backfilled, schedules re-registered), invalid ones change nothing
and say where the error is; restart-only keys are refused."""
from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys

import pytest
import yaml
from rq.job import Job

from appliance.config.loader import DEFAULTS, load_config
from appliance.ingest.backfill import run_backfill
from appliance.jobs import entry, registry, runs, schedule
from appliance.jobs import reload as reload_mod
from appliance.runtime.runtime import K_CONFIG_VERSION, Runtime
from tests.support import wait_until

QUIET = {job: "0 0 1 1 *" for job in DEFAULTS["schedules"]}
BASE = dict(schedules={**QUIET, "backfill": "0 2 * * *"}, symbols=["AAPL", "MSFT"],
            history={"start": "2026-11-02"})


def cli(path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "--config", str(path), *args],
                            env={**os.environ, "APPLIANCE_LOG_LEVEL": "INFO"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(path, *args, timeout: float = 60) -> tuple[int, str, str]:
    p = cli(path, *args)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


@pytest.fixture
def config_path(config_factory):
    return config_factory(**BASE)


def _reloads(rt) -> list[tuple]:
    with rt.conn() as conn:
        return conn.execute("SELECT source, ok, error, diff, sha256 FROM config_reloads ORDER BY id"
                            ).fetchall()


def _counts(rt) -> dict:
    with rt.conn() as conn:
        return dict(conn.execute("SELECT symbol, count(*) FROM market_data GROUP BY symbol"
                                 ).fetchall())


def _line_of(path, needle: str, nth: int = 1) -> int:
    hits = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if needle in line]
    return hits[nth - 1]


# --------------------------------------------------------------------------- valid reloads

def test_a_reload_adds_a_symbol_that_then_gets_backfilled(runtime, config_factory):
    path = runtime.config.path
    assert schedule.ensure_baseline(runtime)  # what a starting scheduler (or `up`) does
    assert not schedule.ensure_baseline(runtime)
    config_factory(**{**BASE, "symbols": ["AAPL", "MSFT", "NVDA"]})
    code, out, err = run_cli(path, "reload")
    assert code == 0, err
    assert "NVDA" in out and "reloaded" in out
    # nothing of the appliance runs here: the command does not claim it does
    assert "no process of the appliance is running: it starts from appliance.yaml" in out, out

    (source, ok, error, diff, sha), = _reloads(runtime)[1:]
    assert (source, ok, error) == ("cli", True, None)
    assert diff["symbols_added"] == ["NVDA"] and diff["symbols_removed"] == []
    # every process follows: this one (another Runtime) swaps the config in
    wait_until(lambda: runtime.config.sha256 == sha, 15, "the running config to swap")
    assert [s.symbol for s in runtime.config.symbols] == ["AAPL", "MSFT", "NVDA"]
    with runtime.conn() as conn:
        queued = [r for r in runs.recent(conn, job="backfill") if r["trigger"] == "reload"]
    assert len(queued) == 1 and queued[0]["params"]["symbols"] == ["NVDA"]

    code, out, err = run_cli(path, "worker", "--burst")
    assert code == 0, err
    with runtime.conn() as conn:
        done = runs.get(conn, queued[0]["id"])
        active = conn.execute("SELECT active FROM symbols WHERE symbol = 'NVDA'").fetchone()
    assert done["status"] == "ok", done
    assert _counts(runtime).get("NVDA", 0) > 0
    assert active == (True,)


def test_a_history_start_moved_earlier_queues_the_backfill_of_its_symbols(runtime,
                                                                         config_factory):
    """Moving only the 1m start earlier queued nothing: the months before it
    waited for the nightly backfill. A later start fetches nothing new."""
    schedule.ensure_baseline(runtime)
    syms = ["AAPL", {"symbol": "MSFT", "timeframes": ["1m", "1d"]}]
    config_factory(**{**BASE, "symbols": syms,
                      "history": {"start": {"1d": "2026-11-02", "1m": "2026-11-16"}}})
    assert run_cli(runtime.config.path, "reload")[0] == 0

    def queued():
        with runtime.conn() as conn:
            return [r["params"]["symbols"] for r in runs.recent(conn, job="backfill")
                    if r["trigger"] == "reload"]
    before = queued()
    config_factory(**{**BASE, "symbols": syms,
                      "history": {"start": {"1d": "2026-11-02", "1m": "2026-11-09"}}})
    code, out, err = run_cli(runtime.config.path, "reload")
    assert code == 0, err
    assert '"1m": {' in out and '"new": "2026-11-09"' in out, out
    assert queued()[: len(queued()) - len(before)] == [["MSFT"]]
    config_factory(**{**BASE, "symbols": syms,
                      "history": {"start": {"1d": "2026-11-09", "1m": "2026-11-09"}}})
    n = len(queued())
    code, out, err = run_cli(runtime.config.path, "reload")
    assert code == 0, err
    assert len(queued()) == n, out  # later: nothing to fetch
    # a resolution taken away: said, nothing queued, nothing deleted
    config_factory(**{**BASE, "symbols": ["AAPL", "MSFT"],
                      "history": {"start": {"1d": "2026-11-09", "1m": "2026-11-09"}}})
    code, out, err = run_cli(runtime.config.path, "reload")
    assert code == 0 and len(queued()) == n, err
    assert ("resolutions removed (MSFT: 1m): no longer fetched; the bars stored are kept "
            "and still served") in err, err


def test_a_removed_symbol_stops_being_fetched_but_keeps_its_data(runtime, config_factory, client,
                                                                 admin_headers):
    schedule.ensure_baseline(runtime)
    assert runs.execute(runtime, "backfill", runs.manual_slot(), run_backfill)["status"] == "ok"
    before = _counts(runtime)
    assert before["MSFT"] > 0
    config_factory(**{**BASE, "symbols": ["AAPL"]})
    r = client.post("/api/v1/config/reload", headers=admin_headers)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["diff"]["symbols_removed"] == ["MSFT"]
    assert body["backfill_job_id"] is None
    assert _counts(runtime) == before  # nothing deleted
    with runtime.conn() as conn:
        msft = conn.execute("SELECT active FROM symbols WHERE symbol = 'MSFT'").fetchone()
        ev = conn.execute("""SELECT details FROM events WHERE kind = 'reload'
                             ORDER BY id DESC LIMIT 1""").fetchone()[0]
    assert msft == (False,)
    assert ev["symbols_removed_keep_data"] == ["MSFT"]
    assert list(runtime.config.active_symbols) == ["AAPL"]
    # the next backfill fetches AAPL only
    res = runs.execute(runtime, "backfill", runs.manual_slot(), run_backfill)
    assert res["status"] == "ok"
    assert _counts(runtime)["MSFT"] == before["MSFT"]


def test_a_reload_during_a_run_applies_from_the_next_run(runtime, config_factory, monkeypatch):
    seen = {}

    def probe(rt, run_id, report):
        seen["before"] = [s.symbol for s in rt.config.symbols]
        config_factory(**{**BASE, "symbols": ["AAPL", "MSFT", "SPY"]})
        other = Runtime.from_path(runtime.config.path)
        assert reload_mod.reload_config(other, source="cli")["ok"]
        other.close()
        rt.check_interval = 0.0  # every read of rt.config now looks for a newer config
        seen["after"] = [s.symbol for s in rt.config.symbols]
        return {"status": "ok"}

    monkeypatch.setitem(registry.JOBS, "probe",
                        registry.Job("probe", f"{__name__}:_probe", "* * * * *", "test probe",
                                     "appliance.jobs.registry:JobResult"))
    monkeypatch.setattr(sys.modules[__name__], "_probe", probe, raising=False)
    monkeypatch.setenv("APPLIANCE_CONFIG", str(runtime.config.path))
    monkeypatch.setattr(entry, "_rt", None)
    res = entry.run_job("probe", {}, slot=runs.manual_slot())
    assert res["status"] == "ok"
    assert seen["before"] == seen["after"] == ["AAPL", "MSFT"]
    # the process itself moved on; the next run sees the new symbols
    wait_until(lambda: [s.symbol for s in entry.runtime().config.symbols]
               == ["AAPL", "MSFT", "SPY"], 15, "the process to take the reloaded config")
    entry.runtime().close()


def test_a_running_scheduler_re_registers_a_changed_schedule_after_an_api_reload(
        runtime, config_factory, client, admin_headers, procs):
    p = cli(runtime.config.path, "scheduler")
    procs.append(p)

    def cron():
        try:
            return Job.fetch("appliance-cron-backfill", connection=runtime.redis
                             ).meta.get("cron_string")
        except Exception:  # noqa: BLE001 - not registered yet
            return None

    wait_until(lambda: cron() == "0 2 * * *", 30, "the backfill cron job")
    config_factory(**{**BASE, "schedules": {**QUIET, "backfill": "15 4 * * 1-5"}})
    r = client.post("/api/v1/config/reload", headers=admin_headers)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["diff"]["schedules_changed"] == {
        "backfill": {"old": "0 2 * * *", "new": "15 4 * * 1-5"}}
    wait_until(lambda: cron() == "15 4 * * 1-5", 30, "the re-registered cron job")
    score = runtime.redis.zscore("rq:scheduler:scheduled_jobs", "appliance-cron-backfill")
    nxt = dt.datetime.fromtimestamp(score, dt.UTC)
    assert (nxt.hour, nxt.minute, nxt.weekday() < 5) == (4, 15, True)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
    assert "schedules reconciled" in err


# --------------------------------------------------------------------------- refused reloads

def _break_cron(path):
    data = yaml.safe_load(path.read_text())
    data["schedules"]["backfill"] = "61 2 * * *"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return _line_of(path, "backfill: 61 2"), "invalid cron expression"


def _duplicate_symbol(path):
    data = yaml.safe_load(path.read_text())
    data["symbols"] = ["AAPL", "MSFT", "AAPL"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return _line_of(path, "- AAPL", 2), "duplicate symbol 'AAPL'"


def _yaml_syntax(path):
    path.write_text(path.read_text().replace("symbols:\n", "symbols: [AAPL\n"))
    return None, "YAML syntax error"


@pytest.mark.parametrize("breaker", [_break_cron, _duplicate_symbol, _yaml_syntax],
                         ids=["bad-cron", "duplicate-symbol", "yaml-syntax"])
def test_an_invalid_reload_changes_nothing_and_reports_the_line(runtime, client, admin_headers,
                                                                breaker):
    path = runtime.config.path
    assert reload_mod.reload_config(runtime, source="startup")["ok"]  # a published config
    sha, version = runtime.config.sha256, int(runtime.redis.get(K_CONFIG_VERSION))
    line, message = breaker(path)

    r = client.post("/api/v1/config/reload", headers=admin_headers)
    assert r.status_code == 422
    err = r.get_json()["error"]
    assert err["code"] == "config_invalid"
    text = "\n".join(err["errors"])
    assert message in text
    m = re.search(re.escape(str(path)) + r":(\d+): at \$", text)
    assert m, text
    if line is not None:
        assert int(m.group(1)) == line

    code, out, err = run_cli(path, "reload")
    assert code == 1
    assert re.search(re.escape(str(path)) + r":\d+: ", err) and message in err

    assert runtime.config.sha256 == sha
    assert int(runtime.redis.get(K_CONFIG_VERSION)) == version
    rows = _reloads(runtime)
    # (the CLI cannot reach the database through a file it cannot read, so only
    # the API's attempt is on record)
    assert [(s, ok) for s, ok, *_ in rows][:2] == [("startup", True), ("api", False)]
    assert message in rows[1][2]
    with runtime.conn() as conn:
        assert conn.execute("""SELECT count(*) FROM events WHERE kind = 'reload'
                               AND level = 'error'""").fetchone()[0] >= 1


def test_a_restart_only_change_waits_for_a_restart_and_says_so(runtime, config_factory, client,
                                                              admin_headers):
    runtime.publish_config(runtime.config, boot=True)  # a cold start: the file's values in force
    config_factory(**{**BASE, "server": {"bind": "127.0.0.1:18998"}, "symbols": ["AAPL", "SPY"]})
    r = client.post("/api/v1/config/reload", headers=admin_headers)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["restart_required"] == ["server.bind"] and body["restart_required_since"]
    assert "server.bind" not in body["diff"]["changed"]  # not shown as changed: not in force
    # the live keys apply; the restart-only one keeps its value until a restart
    assert [s.symbol for s in runtime.config.symbols] == ["AAPL", "SPY"]
    assert runtime.config["server"]["bind"] == "127.0.0.1:18999"
    h = client.get("/health").get_json()
    assert h["restart_required"]["keys"] == ["server.bind"]
    assert any("restart required since" in x for x in h["reasons"])
    page = client.get("/config").get_data(as_text=True)
    assert 'id="restart-required"' in page and "server.bind" in page
    (_, ok, _error, diff, _), = _reloads(runtime)[-1:]
    assert ok is True and diff["restart_required"] == ["server.bind"]
    # the next cold start takes the file: the new value is in force, nothing pending
    runtime.publish_config(load_config(runtime.config.path), boot=True)
    assert runtime.config["server"]["bind"] == "127.0.0.1:18998"
    from tests.support import wait_until  # /health serves a probe up to a second old
    wait_until(lambda: client.get("/health").get_json()["restart_required"] is None, 5,
               "/health without a pending restart")


def test_check_config_diff_shows_what_a_reload_would_change_without_applying_it(
        runtime, config_factory):
    assert reload_mod.reload_config(runtime, source="startup")["ok"]
    version = int(runtime.redis.get(K_CONFIG_VERSION))
    # check-config refuses tokens shorter than 24 characters (the suite's is 16)
    config_factory(**{**BASE, "symbols": ["AAPL", "MSFT", "NVDA"],
                      "schedules": {**QUIET, "backfill": "0 3 * * *"},
                      "server": {"admin_token": "test-admin-token-long-enough"}})
    code, out, err = run_cli(runtime.config.path, "check-config", "--diff")
    assert code == 0, out + err
    assert '"symbols_added": [\n    "NVDA"' in out
    assert '"backfill": {' in out and '"new": "0 3 * * *"' in out
    assert int(runtime.redis.get(K_CONFIG_VERSION)) == version
    assert [s.symbol for s in runtime.config.symbols] == ["AAPL", "MSFT"]


def test_a_cli_reload_of_a_broken_file_is_refused_and_recorded(runtime, config_factory):
    path = config_factory()
    good = path.read_text()
    path.write_text(good + "schedules:\n  backfill: \"61 * * * *\"\n")
    code, out, err = run_cli(path, "reload")
    assert code == 1
    assert f"{path}:" in err and "invalid cron expression '61 * * * *'" in err
    rows = _reloads(runtime)
    assert rows, "the refused attempt was not recorded"
    source, ok, error, _, _ = rows[-1]
    assert (source, ok) == ("cli", False)
    assert "invalid cron expression '61 * * * *'" in error
