"""One YAML, one truth: what a reload says is running is what runs, in every
process and every command (issue "one YAML, one truth").

The appliance runs for real here (``appliance up``: web, worker, scheduler as
processes with their own environment); the operator's commands run as
subprocesses with the operator's shell, which is not the appliance's."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from appliance.config.loader import appliance_env, load_config
from appliance.config.salvage import salvage_connection_settings
from appliance.runtime.runtime import Runtime
from tests.security.helpers import csrf_of
from tests.support import free_port, wait_until

TOKEN_A = "rotate-me-" + "a" * 30
TOKEN_B = "rotated-to-" + "b" * 30
TOKEN_C = "from-a-file-" + "c" * 30
POLY_KEY = "test-key"


def _shell_env(**extra) -> dict:
    """A fresh shell's environment: nothing of the appliance's own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("APPLIANCE_", "POLYGON_"))}
    env.update(extra)
    return env


def _cli(path: Path, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config", str(path), *args],
                          capture_output=True, text=True, env=env or _shell_env(),
                          timeout=timeout)


class Up:
    """``appliance up`` started from a shell with ``env``; stopped with Ctrl-C."""

    def __init__(self, path: Path, env: dict):
        self.path = path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli.main", "--config", str(path), "up",
             "--no-initial-backfill"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, start_new_session=True)
        bind = load_config(path, env=appliance_env(path, base=env))["server"]["bind"]
        self.base = f"http://{bind}"

    def health(self) -> dict:
        try:
            return requests.get(self.base + "/health", timeout=5).json()
        except (requests.RequestException, ValueError):
            return {}

    def wait_ready(self):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("appliance up exited:\n" + self.proc.stdout.read()[-3000:])
            h = self.health()
            return h if h.get("worker_alive") and h.get("scheduler_running") else None
        return wait_until(ready, 120, "appliance up: web, worker and scheduler")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return self.proc.stdout.read() if self.proc.stdout else ""


@pytest.fixture
def appliance(config_factory, request):
    """Starts ``appliance up`` on a config with ``overrides``; the env of the
    shell that started it is ``env`` (default: nothing of the appliance's)."""
    started: list[Up] = []

    def start(env: dict | None = None, **overrides) -> Up:
        port = free_port()
        server = {"bind": f"127.0.0.1:{port}", "workers": 1,
                  **overrides.pop("server", {})}
        path = config_factory(server=server,
                              schedules={"alerts": "0 0 1 1 *", "backfill": "0 0 1 1 *"},
                              alerts={"scheduler_heartbeat_max_seconds": 60}, **overrides)
        up = Up(path, env or _shell_env())
        started.append(up)
        up.wait_ready()
        return up

    yield start
    for up in started:
        up.stop()


def _edit(path: Path, fn) -> None:
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _runtime(path: Path) -> Runtime:
    # the test's own view of the servers (the file may not validate any more)
    rt = Runtime(salvage_connection_settings(path, env=appliance_env(path, base=_shell_env())))
    rt.open()
    return rt


def _run_job(up: Up, token: str, job: str = "alerts") -> requests.Response:
    return requests.post(f"{up.base}/api/v1/jobs/{job}/run", json={},
                         headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _run_status(rt: Runtime, run_id: int) -> str | None:
    with rt.conn() as c:
        row = c.execute("SELECT status FROM job_runs WHERE id = %s", (run_id,)).fetchone()
    return row[0] if row else None


# --------------------------------------------------------------------------- finding 2

def test_a_key_only_in_the_operators_shell_is_refused_and_jobs_go_on(appliance):
    import datetime as dt

    from tests.fakes.polygon_fake import PolygonFake, make_truth
    truth = make_truth(["AAPL", "MSFT"], dt.date(2024, 1, 2), dt.date(2024, 3, 28))
    with PolygonFake(truth.bars, truth.splits, api_key=POLY_KEY) as fake:
        up = appliance(provider={"name": "demo",
                                 "polygon": {"api_key": "${POLYGON_API_KEY:-}",
                                             "base_url": fake.base_url,
                                             "requests_per_minute": 6000}},
                       history={"start": "2024-01-02", "lookback_sessions": 5})
        res = _cli(up.path, "backfill", "--end", "2024-03-28")  # the demo's history first
        assert res.returncode == 0, res.stdout + res.stderr
        _switch_with_the_key_in_the_shell_only(up)
        _switch_with_the_key_in_appliance_env(up, fake, truth)


def _switch_with_the_key_in_the_shell_only(up: Up) -> None:
    _edit(up.path, lambda d: d["provider"].update(name="polygon"))
    # check-config validates in the shell's environment: it passes, and says
    # where the key comes from (the yaml's own steps: check-config && reload)
    res = _cli(up.path, "check-config", env=_shell_env(POLYGON_API_KEY=POLY_KEY))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "note: POLYGON_API_KEY is set in this shell but not in" in res.stderr, res.stderr
    # the README's steps as an operator types them: export in the shell, reload
    res = _cli(up.path, "reload", env=_shell_env(POLYGON_API_KEY=POLY_KEY))
    assert res.returncode == 1, res.stdout + res.stderr
    assert ("POLYGON_API_KEY is set in your shell but not in the appliance's environment: "
            "put it in appliance.env") in res.stderr, res.stderr
    assert "reload refused; the running config is unchanged" in res.stderr
    # (/health serves a probe up to a second old)
    h = wait_until(lambda: (lambda h: h if h.get("config_last_reload_successful") is False
                            else None)(up.health()), 5, "/health after the refusal")
    assert h["provider"] == "demo"
    # the processes kept the config they run: a job queued now runs and is recorded
    rt = _runtime(up.path)
    try:
        r = _run_job(up, "test-admin-token-0123456789")
        assert r.status_code == 202, r.text
        rid = r.json()["job_id"]
        wait_until(lambda: _run_status(rt, rid) in ("ok", "failed"), 60, "the alerts run")
        assert _run_status(rt, rid) == "ok"
    finally:
        rt.close()


def _switch_with_the_key_in_appliance_env(up: Up, fake, truth) -> None:
    # put where the appliance reads it, the same reload applies, everywhere
    (up.path.parent / "appliance.env").write_text(f"POLYGON_API_KEY={POLY_KEY}\n")
    res = _cli(up.path, "check-config", env=_shell_env(POLYGON_API_KEY=POLY_KEY))
    assert res.returncode == 0 and "note:" not in res.stderr, res.stdout + res.stderr
    res = _cli(up.path, "reload")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "reloaded: config" in res.stdout
    queued = re.search(r"queued backfill run (\d+) \(follow it", res.stdout)
    assert queued, res.stdout  # the reload says the backfill it queued
    h = wait_until(lambda: (lambda h: h if h.get("provider") == "polygon" else None)(
        up.health()), 5, "/health with the new provider")  # a probe up to a second old
    assert h["config_last_reload_successful"] is True
    # the reload queued the replacement of the demo history by the vendor's
    rt = _runtime(up.path)
    try:
        def replaced():
            with rt.conn() as c:
                return c.execute("""SELECT status FROM job_runs WHERE job = 'backfill'
                                    AND trigger = 'reload' ORDER BY id DESC LIMIT 1""").fetchone()
        wait_until(lambda: (replaced() or ("",))[0] in ("ok", "failed", "partial"), 120,
                   "the backfill the reload queued")
        with rt.conn() as c:
            assert c.execute("""SELECT max(id) FROM job_runs WHERE job = 'backfill'
                                AND trigger = 'reload'""").fetchone()[0] == int(queued[1])
        assert replaced()[0] == "ok"
        with rt.conn() as c:
            sources = dict(c.execute("SELECT source, count(*) FROM market_data GROUP BY 1"))
            closes = dict(c.execute(
                """SELECT (ts AT TIME ZONE 'America/New_York')::date, close FROM market_data
                   WHERE symbol = 'AAPL'"""))
        assert set(sources) == {"polygon"}, sources
        assert closes == {r[0]: r[4] for r in truth.rows("AAPL")}
    finally:
        rt.close()
    body = requests.get(up.base + "/api/v1/symbols", timeout=10).json()
    assert {s["symbol"]: s["source"] for s in body["symbols"]} == {"AAPL": "polygon",
                                                                   "MSFT": "polygon"}


# --------------------------------------------------------------------------- finding 3

def test_rotating_the_admin_token_in_appliance_env_or_a_file_takes_effect(appliance, tmp_path):
    (tmp_path / "appliance.env").write_text(f"APPLIANCE_ADMIN_TOKEN={TOKEN_A}\n")
    up = appliance(server={"admin_token": "${APPLIANCE_ADMIN_TOKEN}"})
    http = requests.Session()
    tok = csrf_of(http.get(up.base + "/login").text)
    r = http.post(up.base + "/login", data={"token": TOKEN_A, "csrf_token": tok,
                                             "next": "/dashboard"}, allow_redirects=False)
    assert r.status_code == 303
    assert "Log out" in http.get(up.base + "/dashboard").text
    assert _run_job(up, TOKEN_A).status_code == 202

    (tmp_path / "appliance.env").write_text(f"APPLIANCE_ADMIN_TOKEN={TOKEN_B}\n")
    res = _cli(up.path, "reload")
    assert res.returncode == 0, res.stdout + res.stderr
    diff = json.loads(res.stdout[:res.stdout.rindex("}") + 1])
    assert diff["changed"]["server.admin_token"] == {"old": "********", "new": "********",
                                                     "secret": True}
    assert TOKEN_A not in res.stdout + res.stderr and TOKEN_B not in res.stdout + res.stderr
    # the reload returned once every process runs it: the old token is refused at once
    assert _run_job(up, TOKEN_A).status_code == 401
    assert _run_job(up, TOKEN_B).status_code == 202
    assert "Log out" not in http.get(up.base + "/dashboard").text

    # the same through APPLIANCE_ADMIN_TOKEN_FILE
    secret = tmp_path / "admin.token"
    secret.write_text(TOKEN_C + "\n")
    secret.chmod(0o600)
    (tmp_path / "appliance.env").write_text(f"APPLIANCE_ADMIN_TOKEN_FILE={secret}\n")
    res = _cli(up.path, "reload")
    assert res.returncode == 0, res.stdout + res.stderr
    assert _run_job(up, TOKEN_B).status_code == 401
    assert _run_job(up, TOKEN_C).status_code == 202


def test_a_misspelt_variable_in_appliance_env_is_named_and_an_emptied_token_warned(appliance,
                                                                                  tmp_path):
    """A typo in a variable's name in appliance.env left server.admin_token
    empty: the reload went through without a word, admin was off, and an
    admin call then got the read gate's 401, which pointed at the read token.
    A short token in the file made the reload fail before it was asked (and
    recorded) as a reload."""
    env = tmp_path / "appliance.env"
    env.write_text(f"APPLIANCE_ADMIN_TOKEN={TOKEN_A}\nAPPLIANCE_READ_TOKEN={READ_Y}\n")
    up = appliance(server={"admin_token": "${APPLIANCE_ADMIN_TOKEN:-}",
                           "read_token": "${APPLIANCE_READ_TOKEN:-}"})
    assert _run_job(up, TOKEN_A).status_code == 202

    env.write_text(f"APPLIANCE_ADMN_TOKEN={TOKEN_B}\nAPPLIANCE_READ_TOKEN={READ_Y}\n")
    typo = ("warning: appliance.env sets APPLIANCE_ADMN_TOKEN, which appliance.yaml does not "
            "use: did you mean APPLIANCE_ADMIN_TOKEN?")
    res = _cli(up.path, "check-config")
    assert res.returncode == 0 and typo in res.stderr, res.stderr
    res = _cli(up.path, "reload")
    assert res.returncode == 0, res.stdout + res.stderr
    assert typo in res.stderr
    assert ("warning: server.admin_token is now empty (its variable is unset or empty in "
            "appliance.env): admin calls and the console's buttons are refused") in res.stderr
    assert "APPLIANCE_READ_TOKEN, which" not in res.stderr  # a variable in use is no warning
    assert TOKEN_B not in res.stdout + res.stderr
    r = _run_job(up, TOKEN_A)  # admin off: said as such, not as the read gate's 401
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled", r.text

    env.write_text(f"APPLIANCE_ADMIN_TOKEN=short-token-123\nAPPLIANCE_READ_TOKEN={READ_Y}\n")
    res = _cli(up.path, "reload")
    assert res.returncode == 1
    assert "$.server.admin_token: the token is 15 characters" in res.stderr
    assert res.stderr.rstrip().endswith("reload refused; the running config is unchanged")
    rt = _runtime(up.path)
    try:
        with rt.conn() as c:
            row = c.execute("SELECT ok, error FROM config_reloads ORDER BY id DESC "
                            "LIMIT 1").fetchone()
    finally:
        rt.close()
    assert row[0] is False and "the token is 15 characters" in row[1]


# --------------------------------------------------------------------------- findings 6, 7

def test_commands_say_when_the_file_is_not_what_runs(appliance):
    up = appliance(database={"read_url": "${APPLIANCE_DATABASE_READ_URL:-}"},
                   env=_shell_env(APPLIANCE_DATABASE_READ_URL="postgresql://u@127.0.0.1:9/x"))
    # an edit not yet reloaded: the command uses the running config and says so
    _edit(up.path, lambda d: d.update(symbols=["AAPL", "MSFT", "NVDA"]))
    res = _cli(up.path, "backfill", "--enqueue")
    assert res.returncode == 0, res.stderr
    assert "appliance.yaml differs from the running config (version" in res.stderr
    assert "run appliance reload first, or --use-file" in res.stderr
    # a typo while the appliance runs: status reports the running appliance,
    # warns about the file, and its exit code is the appliance's health
    up.path.write_text(up.path.read_text() + "wokers: 2\n")
    res = _cli(up.path, "status", "--json")
    st = json.loads(res.stdout)
    assert "does not validate" in res.stderr and "wokers" in res.stderr
    assert res.returncode == {"ok": 0, "warning": 1, "critical": 2}[st["severity"]]
    # read_url is set in the appliance's environment only: the replica it
    # reads from is down, and status says so as /health does (not "off")
    assert up.health()["replica"]["state"] == "down"
    assert st["replica"]["state"] == "down" and st["status"] != "healthy"


# --------------------------------------------------------------------------- finding 4

def test_keys_read_at_start_apply_on_reload(config_factory, runtime):
    from appliance.jobs.reload import reload_config
    from appliance.web import create_app
    from tests.integration.test_console import login
    app = create_app(runtime=runtime)
    app.config["TESTING"] = True
    c = app.test_client()
    login(c)
    assert "Log out" in c.get("/dashboard").get_data(as_text=True)
    config_factory(server={"secret_key": "a-new-secret-key-" + "k" * 20,
                           "max_request_bytes": 1024, "trusted_proxy_hops": 1,
                           "secure_cookies": True,
                           # a proxy in front closes anonymous reads unless allowed: the
                           # dashboard must stay readable to show who is logged in
                           "anonymous_reads": True})
    res = reload_config(runtime, source="cli")
    assert res["ok"] and not res["diff"]["restart_required"], res
    # a session from before the secret-key rotation has ended
    page = c.get("/dashboard")
    assert page.status_code == 200 and "Log out" not in page.get_data(as_text=True)
    # the new body limit holds
    r = c.post("/api/v1/jobs/alerts/run", data=b"x" * 2000,
               headers={"Authorization": "Bearer test-admin-token-0123456789",
                        "Content-Type": "application/json"})
    assert r.status_code == 413 and "1024" in r.get_json()["error"]["message"]
    # the proxy's scheme is trusted now (one hop): HSTS on a request it says is https
    r = c.get("/health", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "1.2.3.4"})
    assert r.headers.get("Strict-Transport-Security")


# --------------------------------------------------------------------------- finding 5

def test_a_short_token_is_refused_by_reload_and_by_up(config_factory, runtime, client,
                                                      admin_headers):
    path = config_factory(server={"admin_token": "abc"})
    r = client.post("/api/v1/config/reload", headers=admin_headers)
    assert r.status_code == 422
    assert "the token is 3 characters; at least 24 are required" in r.get_json()["error"]["message"]
    assert client.post("/api/v1/jobs/alerts/run", json={},
                       headers={"Authorization": "Bearer abc"}).status_code == 401
    res = _cli(path, "up", timeout=60)
    assert res.returncode == 1
    assert "$.server.admin_token: the token is 3 characters" in res.stderr
    assert "abc" not in res.stderr.replace("characters", "")


# --------------------------------------------------------------------------- a value in the shell

READ_X = "shell-read-token-" + "x" * 30
READ_Y = "env-file-read-token-" + "y" * 30


def test_a_value_in_the_shell_the_processes_lack_is_reported_by_reload_and_diff(appliance,
                                                                                  tmp_path):
    """A variable with a default (``${VAR:-}``) is valid without the shell's
    value, so nothing refuses it: the reload and the diff say that the
    shell's value is not what the appliance uses (OPERATIONS.md, "Rotating
    tokens and keys")."""
    up = appliance(server={"read_token": "${APPLIANCE_READ_TOKEN:-}"})
    shell = _shell_env(APPLIANCE_READ_TOKEN=READ_X)
    res = _cli(up.path, "reload", env=shell)
    assert res.returncode == 0, res.stdout + res.stderr
    assert ("warning: APPLIANCE_READ_TOKEN is set in your shell, but the appliance's processes "
            "do not have it and use the default; your shell's value is not used") in res.stderr
    assert res.stderr.rstrip().endswith("then reload again"), res.stderr  # the last line
    assert "swapped in" not in res.stderr  # the services' log line, not the command's
    assert READ_X not in res.stdout + res.stderr
    assert requests.get(up.base + "/api/v1/symbols", timeout=10).status_code == 200  # still open

    (tmp_path / "appliance.env").write_text(f"APPLIANCE_READ_TOKEN={READ_Y}\n")
    res = _cli(up.path, "check-config", "--diff", env=shell)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["changed"]["server.read_token"]["secret"] is True
    assert "APPLIANCE_READ_TOKEN is set in your shell, but the appliance's processes have " \
           "another value" in res.stderr
    res = _cli(up.path, "reload", env=shell)
    assert res.returncode == 0 and "have another value" in res.stderr, res.stderr
    assert requests.get(up.base + "/api/v1/symbols", timeout=10).status_code == 401
    assert requests.get(up.base + "/api/v1/symbols", timeout=10,
                        headers={"Authorization": f"Bearer {READ_Y}"}).status_code == 200

    # the shell holding the appliance's own value (appliance.env sourced): nothing to say
    res = _cli(up.path, "reload", env=_shell_env(APPLIANCE_READ_TOKEN=READ_Y))
    assert res.returncode == 0 and "warning" not in res.stderr, res.stderr
    # a removed symbol: its data stays, and the diff says so
    _edit(up.path, lambda d: d.update(symbols=["AAPL"]))
    res = _cli(up.path, "check-config", "--diff")
    assert json.loads(res.stdout)["symbols_removed"] == ["MSFT"]
    assert "symbols removed: MSFT: no longer fetched; their data is kept" in res.stderr


def test_a_process_whose_environment_lost_a_variable_does_not_run_on_defaults(appliance,
                                                                              tmp_path):
    """appliance.env loses a variable the running config needs: a process
    started then (a worker, a command) refuses with the variable's name
    instead of running on the broken file's defaults (the default symbols,
    a relative backup path, reads without a token)."""
    (tmp_path / "appliance.env").write_text(f"APPLIANCE_READ_TOKEN={READ_Y}\n")
    up = appliance(server={"read_token": "${APPLIANCE_READ_TOKEN}"})
    assert requests.get(up.base + "/api/v1/symbols", timeout=10).status_code == 401
    (tmp_path / "appliance.env").write_text("# the line was lost\n")
    for args in (("worker", "--burst"), ("backfill", "--enqueue")):
        res = _cli(up.path, *args, timeout=60)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        assert "does not validate in this process's environment" in res.stderr, res.stderr
        assert "APPLIANCE_READ_TOKEN" in res.stderr
        assert "joined the running appliance" not in res.stderr
        # said once: the file's own error is inside the running config's, and
        # the refused process looks at the running config no more
        assert res.stderr.count("APPLIANCE_READ_TOKEN is not set") == 1, res.stderr
        assert "no longer validates here" not in res.stderr, res.stderr
    rt = _runtime(up.path)
    try:
        with rt.conn() as c:
            assert c.execute("SELECT count(*) FROM job_runs WHERE job = 'backfill'"
                             ).fetchone()[0] == 0  # nothing queued on other settings
    finally:
        rt.close()
    # the processes already running keep the config they validated
    assert requests.get(up.base + "/api/v1/symbols", timeout=10).status_code == 401


@pytest.mark.slow
def test_a_worker_that_cannot_start_again_leaves_the_rest_running_and_opens_the_alert(
        appliance, tmp_path):
    """The worker of ``appliance up`` restarted (here: killed) after
    appliance.env lost a variable: it refused five times, and ``up`` then
    stopped everything, web server and scheduler included, and no alert said
    why. Now the rest runs on, config_invalid names the worker and the
    variable, and the worker comes back once the file is fixed."""
    import psutil
    env = tmp_path / "appliance.env"
    env.write_text(f"APPLIANCE_READ_TOKEN={READ_Y}\n")
    up = appliance(server={"read_token": "${APPLIANCE_READ_TOKEN}"})
    read = {"Authorization": f"Bearer {READ_Y}"}
    time.sleep(11)  # the worker has come up (lived START_FAST_S)
    worker = next(p for p in psutil.Process(up.proc.pid).children()
                  if "worker" in p.cmdline())
    env.write_text("# the line was lost\n")
    worker.kill()
    rt = _runtime(up.path)
    try:
        def failures():
            with rt.conn() as c:
                return c.execute("SELECT count(*) FROM events WHERE kind = 'process' AND "
                                 "message LIKE 'worker exited with code 1 %%'").fetchone()[0]
        wait_until(lambda: failures() >= 5, 150, "five failed starts of the worker", step=1)
        time.sleep(2)
        assert up.proc.poll() is None, "appliance up gave up"
        assert requests.get(up.base + "/api/v1/symbols", headers=read,
                            timeout=10).status_code == 200  # the web server runs on
        with rt.conn() as c:
            msg = c.execute("SELECT message FROM alerts WHERE key = 'config_invalid' AND "
                            "resolved_at IS NULL").fetchone()
        assert msg and msg[0].startswith("The worker process could not load the config"), msg
        assert "APPLIANCE_READ_TOKEN" in msg[0]
        env.write_text(f"APPLIANCE_READ_TOKEN={READ_Y}\n")
        wait_until(lambda: any("worker" in p.cmdline() and p.is_running()
                               and time.time() - p.create_time() > 12
                               for p in psutil.Process(up.proc.pid).children()),
                   120, "the worker to start again and stay up")
    finally:
        rt.close()
    out = up.stop()
    assert "worker could not start again 5 times in a row; the rest of the appliance runs on" \
        in out, out[-3000:]
    assert "a process would not start" not in out


def test_a_reload_of_a_file_that_is_not_yaml_names_the_line_while_the_appliance_runs(appliance):
    up = appliance()
    good = up.path.read_text()
    up.path.write_text(good + 'extra: "unterminated\n')
    res = _cli(up.path, "reload")
    assert res.returncode == 1
    assert f"{up.path}:" in res.stderr and "extra" not in res.stdout
    assert "reload refused; the running config is unchanged" in res.stderr, res.stderr
    assert "not reachable" not in res.stderr
    up.path.write_text(good)
    # recorded as a refused reload (/health serves a probe up to a second old)
    wait_until(lambda: up.health().get("config_last_reload_successful") is False, 5,
               "/health after the refusal")


# --------------------------------------------------------------------------- finding 8

def test_check_config_reports_every_problem_at_once(tmp_path):
    p = tmp_path / "appliance.yaml"
    p.write_text("symbols: [AAPL, MSFT, AAPL]\nserver:\n  wokers: 2\n"
                 "schedules:\n  backfill: '61 * * * *'\n")
    res = _cli(p, "check-config")
    assert res.returncode == 1
    assert "at $.server.wokers: unknown key 'wokers'" in res.stdout
    assert "invalid cron expression '61 * * * *'" in res.stdout
    assert "duplicate symbol 'AAPL'" in res.stdout
    assert "3 error(s)" in res.stderr


def test_check_config_diff_prints_only_json(config_factory, runtime):
    from appliance.jobs.reload import reload_config
    assert reload_config(runtime, source="startup")["ok"]
    path = config_factory(symbols=["AAPL", "MSFT", "NVDA"])
    res = _cli(path, "check-config", "--diff")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["symbols_added"] == ["NVDA"]
    assert "swapped in" not in res.stdout + res.stderr


# --------------------------------------------------------------------------- jobs never vanish

def test_a_job_that_cannot_load_its_config_is_recorded_failed_with_an_alert(config_factory,
                                                                            database_url):
    path = config_factory()
    rt = _runtime(path)
    try:
        with rt.conn() as c:
            from appliance.jobs import runs
            rid = runs.claim(c, "backfill", runs.manual_slot(), trigger="manual", params={})
        # the file broken since, and no running appliance to take a config from
        path.write_text(path.read_text().replace("provider:\n  name: demo",
                                                 "provider:\n  name: polygon"))
        code = ("from appliance.jobs.entry import run_job\n"
                f"run_job('backfill', {{}}, run_id={rid})\n")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=_shell_env(APPLIANCE_CONFIG=str(path)), timeout=60)
        assert p.returncode != 0
        with rt.conn() as c:
            status, error = c.execute("SELECT status, error FROM job_runs WHERE id = %s",
                                      (rid,)).fetchone()
            alert = c.execute("""SELECT severity, message FROM alerts WHERE key = 'config_invalid'
                                 AND status = 'open'""").fetchone()
        assert status == "failed" and "could not load its config" in error
        assert "provider is polygon but the API key is empty" in error
        assert alert is not None and alert[0] == "critical"
        # it names the job, once, and the error once (it repeated itself)
        assert alert[1].startswith("The job ") and alert[1].count("could not load") == 1, alert
        # fixed: the next job that loads its config resolves the alert
        path.write_text(path.read_text().replace("provider:\n  name: polygon",
                                                 "provider:\n  name: demo"))
        p = subprocess.run([sys.executable, "-c", "from appliance.jobs.entry import run_job\n"
                            "run_job('alerts', {})\n"], capture_output=True, text=True,
                           env=_shell_env(APPLIANCE_CONFIG=str(path)), timeout=60)
        assert p.returncode == 0, p.stderr[-2000:]
        with rt.conn() as c:
            assert c.execute("""SELECT count(*) FROM alerts WHERE key = 'config_invalid'
                                AND status = 'open'""").fetchone()[0] == 0
    finally:
        rt.close()


def test_a_backfill_of_a_symbol_not_configured_says_it_is_fetched_once(config_factory, runtime):
    """A typo (ZZZZ for ZZZ) or a one-off: the backfill runs, and says that
    the schedule will not keep that symbol up to date."""
    path = config_factory()
    res = _cli(path, "backfill", "ZZZZ", "AAPL", "--enqueue")
    assert res.returncode == 0, res.stderr
    assert "warning: ZZZZ not in symbols: of" in res.stderr, res.stderr
    assert "fetched this once, not kept up to date" in res.stderr
    assert "AAPL" not in res.stderr.split("warning:", 1)[1].split("\n", 1)[0]
