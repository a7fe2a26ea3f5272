"""Alert rules with a controllable clock, on real PostgreSQL and Redis."""
from __future__ import annotations

import collections
import datetime as dt
import json
import socketserver
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import pytest

from appliance.alerts import rules as alerts
from appliance.alerts.rules import evaluate_job
from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from appliance.runtime.runtime import Runtime
from tests.fakes.polygon_fake import PolygonFake, make_truth

NY = ZoneInfo("America/New_York")
T0 = dt.datetime(2026, 11, 24, 15, 0, tzinfo=dt.UTC)  # a Tuesday


def _rt(path):
    rt = Runtime.from_path(path)
    rt.open()
    return rt


def _ny(y, mo, d, h, mi=0):
    return dt.datetime(y, mo, d, h, mi, tzinfo=NY).astimezone(dt.UTC)


def _stats(rt, symbol="AAPL", *, records=100, validated=100, gaps=0, last=dt.date(2026, 11, 24)):
    with rt.conn() as conn:
        conn.execute(
            """INSERT INTO symbol_stats (symbol, first_session, last_session, records, validated,
                   gaps, expected_sessions, completeness, mean_score, quality_score)
               VALUES (%s, %s, %s, %s, %s, %s, %s, 1, 1, 1)
               ON CONFLICT (symbol) DO UPDATE SET last_session = EXCLUDED.last_session,
                 records = EXCLUDED.records, validated = EXCLUDED.validated,
                 gaps = EXCLUDED.gaps""",
            (symbol, dt.date(2026, 1, 2), last, records, validated, gaps, records))


def _beat(rt, ts: dt.datetime):
    rt.redis.set("appliance:heartbeat:scheduler", str(ts.timestamp()))
    rt.redis.set("appliance:heartbeat:worker", str(ts.timestamp()))


def _active(rt) -> dict:
    with rt.conn() as conn:
        return {k: s for k, s in conn.execute(
            "SELECT key, status FROM alerts WHERE status IN ('pending', 'open')")}


@pytest.fixture
def rt(config_factory, monkeypatch):
    # the rules' heartbeat ages are measured against the wall clock: freeze it
    # at each evaluation's `now` through the heartbeats we write ourselves
    path = config_factory(alerts={"scheduler_heartbeat_max_seconds": 60})
    r = _rt(path)
    yield r
    r.close()


def _ok_disk(path):
    return collections.namedtuple("U", "total used free")(100, 50, 50)


def _eval(rt, now, **kw):
    kw.setdefault("disk_usage", _ok_disk)
    _beat(rt, dt.datetime.now(dt.UTC))
    return alerts.evaluate(rt, now=now, notify=kw.pop("notify", True), **kw)


def test_validation_rate_alerts_open_at_their_thresholds_and_resolve(rt):
    _stats(rt, records=100, validated=40)           # 40 %: critical (for 0)
    r = _eval(rt, T0)
    assert "validation_rate_critical" in r["opened"]
    assert _active(rt).get("validation_rate_low") is None
    _stats(rt, records=100, validated=80)           # 80 %: warning, after its 300 s
    r = _eval(rt, T0 + dt.timedelta(seconds=10))
    assert "validation_rate_critical" in r["resolved"]
    assert _active(rt)["validation_rate_low"] == "pending"
    r = _eval(rt, T0 + dt.timedelta(seconds=200))
    assert _active(rt)["validation_rate_low"] == "pending"
    r = _eval(rt, T0 + dt.timedelta(seconds=311))
    assert r["opened"] == ["validation_rate_low"]
    _stats(rt, records=100, validated=100)
    r = _eval(rt, T0 + dt.timedelta(seconds=400))
    assert r["resolved"] == ["validation_rate_low"]
    assert _active(rt) == {}
    with rt.conn() as conn:
        hist = conn.execute("SELECT key, status, opened_at IS NOT NULL, resolved_at IS NOT NULL "
                            "FROM alerts ORDER BY id").fetchall()
    assert hist == [("validation_rate_critical", "resolved", True, True),
                    ("validation_rate_low", "resolved", True, True)]


def test_an_open_warning_stays_open_when_validation_gets_critical(rt):
    """It was resolved as the critical alert opened: a webhook was told
    "resolved" as things got worse."""
    _stats(rt, records=100, validated=80)
    _eval(rt, T0)
    assert _eval(rt, T0 + dt.timedelta(seconds=301))["opened"] == ["validation_rate_low"]
    _stats(rt, records=100, validated=30)
    r = _eval(rt, T0 + dt.timedelta(seconds=360))
    assert r["opened"] == ["validation_rate_critical"] and r["resolved"] == [], r
    assert _active(rt) == {"validation_rate_low": "open", "validation_rate_critical": "open"}
    _stats(rt, records=100, validated=100)
    r = _eval(rt, T0 + dt.timedelta(seconds=420))
    assert sorted(r["resolved"]) == ["validation_rate_critical", "validation_rate_low"]


def test_a_flapping_condition_never_opens(rt):
    _stats(rt, records=100, validated=80)
    _eval(rt, T0)
    assert _active(rt)["validation_rate_low"] == "pending"
    _stats(rt, records=100, validated=100)
    _eval(rt, T0 + dt.timedelta(seconds=60))
    assert _active(rt) == {}
    with rt.conn() as conn:
        assert conn.execute("SELECT count(*) FROM alerts").fetchone()[0] == 0


@pytest.mark.parametrize("stored,now", [
    (dt.date(2026, 11, 27), _ny(2026, 11, 30, 8)),   # Monday morning after Thanksgiving Friday
    (dt.date(2026, 11, 25), _ny(2026, 11, 27, 10)),  # the day after Thanksgiving, before close
    (dt.date(2025, 6, 18), _ny(2025, 6, 20, 9)),     # Juneteenth (Thursday) is no session
    (dt.date(2025, 4, 17), _ny(2025, 4, 21, 9)),     # Good Friday is no session
    (dt.date(2026, 11, 20), _ny(2026, 11, 22, 12)),  # a Sunday
])
def test_weekends_and_exchange_holidays_are_never_stale(rt, stored, now):
    _stats(rt, last=stored)
    _eval(rt, now)
    _eval(rt, now + dt.timedelta(hours=2))
    assert "data_stale" not in _active(rt)


def test_data_two_sessions_behind_is_stale_after_its_for_duration(rt):
    _stats(rt, last=dt.date(2025, 6, 16))            # Mon; Tue and Wed are complete by Fri
    now = _ny(2025, 6, 20, 9)
    _eval(rt, now)
    assert _active(rt)["data_stale"] == "pending"
    r = _eval(rt, now + dt.timedelta(seconds=601))
    assert r["opened"] == ["data_stale"]
    with rt.conn() as conn:
        msg = conn.execute("SELECT message FROM alerts WHERE key = 'data_stale'").fetchone()[0]
    assert "2 trading session(s) behind" in msg
    _stats(rt, last=dt.date(2025, 6, 18))
    assert _eval(rt, now + dt.timedelta(seconds=700))["resolved"] == ["data_stale"]


def test_scheduler_stopped_opens_after_120_s_and_resolves_with_a_heartbeat(rt):
    _stats(rt)
    rt.redis.delete("appliance:heartbeat:scheduler")
    r = alerts.evaluate(rt, now=T0, disk_usage=_ok_disk)
    assert _active(rt)["scheduler_stopped"] == "pending"
    r = alerts.evaluate(rt, now=T0 + dt.timedelta(seconds=121), disk_usage=_ok_disk)
    assert "scheduler_stopped" in r["opened"]
    r = _eval(rt, T0 + dt.timedelta(seconds=180))
    assert "scheduler_stopped" in r["resolved"]


def test_disk_alerts_follow_free_space(rt):
    _stats(rt)
    low = lambda p: collections.namedtuple("U", "total used free")(1000, 900, 100)  # 10 % free  # noqa: E731
    r = _eval(rt, T0, disk_usage=low)
    assert {"disk_low_data", "disk_low_backup"} <= set(r["opened"])
    r = _eval(rt, T0 + dt.timedelta(seconds=60))
    assert {"disk_low_data", "disk_low_backup"} <= set(r["resolved"])


def test_a_nearly_full_backup_filesystem_opens_the_disk_alert(config_factory, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mnt / "filler").write_bytes(b"x" * 900_000)
        rt = _rt(config_factory(backup={"path": str(mnt), "min_free_pct": 1}))
        try:
            _stats(rt)
            _beat(rt, dt.datetime.now(dt.UTC))
            r = alerts.evaluate(rt, now=T0)
            assert "disk_low_backup" in r["opened"]
            with rt.conn() as conn:
                msg = conn.execute("SELECT message FROM alerts WHERE key = 'disk_low_backup'"
                                   ).fetchone()[0]
            assert str(mnt) in msg
        finally:
            rt.close()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_failed_restore_test_and_a_vendor_auth_error_open_criticals(rt):
    _stats(rt)
    with rt.conn() as conn:
        conn.execute("""INSERT INTO backups (filename, path, status, restore_test_status,
                          restore_test_at, restore_test_result)
                        VALUES ('market_data_20261122_030000.dump', '/x', 'ok', 'failed', now(),
                                '{"error": "row count market_data: manifest 10, restored 9"}')""")
        conn.execute("""INSERT INTO events (level, kind, message)
                        VALUES ('error', 'vendor', 'Unknown API Key')""")
    r = _eval(rt, T0)
    assert {"restore_test_failed", "vendor_auth"} <= set(r["opened"])
    with rt.conn() as conn:
        sev = dict(conn.execute("SELECT key, severity FROM alerts"))
        msg = conn.execute("SELECT message FROM alerts WHERE key = 'vendor_auth'").fetchone()[0]
    assert sev["restore_test_failed"] == sev["vendor_auth"] == "critical"
    assert "Unknown API Key" in msg
    with rt.conn() as conn:  # a backfill that worked clears the auth alert
        conn.execute("""INSERT INTO job_runs (job, slot, status, started_at, finished_at)
                        VALUES ('backfill', 'x', 'ok', now(), now() + interval '1 second')""")
    assert "vendor_auth" in _eval(rt, T0 + dt.timedelta(seconds=60))["resolved"]


def test_a_spot_check_mismatch_opens_with_the_pairs_listed(rt):
    _stats(rt)
    result = {"mismatch_pct": 5.0, "pairs": [
        {"symbol": "AAPL", "session": "2026-10-01", "diff_pct": 3.2, "verdict": "mismatch"},
        {"symbol": "MSFT", "session": "2026-10-02", "diff_pct": 0.0, "verdict": "match"}]}
    with rt.conn() as conn:
        conn.execute("""INSERT INTO job_runs (job, slot, status, result, started_at, finished_at)
                        VALUES ('spot_check', 'x', 'ok', %s, now(), now())""",
                     (json.dumps(result),))
    r = _eval(rt, T0)
    assert "spot_check_mismatch" in r["opened"]
    with rt.conn() as conn:
        msg = conn.execute("SELECT message FROM alerts WHERE key = 'spot_check_mismatch'"
                           ).fetchone()[0]
    assert "AAPL 2026-10-01 (3.2%)" in msg and "MSFT" not in msg


def test_repeatedly_failing_jobs_open_an_alert(rt):
    _stats(rt)
    with rt.conn() as conn:
        for i in range(3):
            conn.execute("""INSERT INTO job_runs (job, slot, status, created_at)
                            VALUES ('backfill', %s, 'failed', now() + %s * interval '1 s')""",
                         (f"s{i}", i))
    r = _eval(rt, T0)
    assert "job_failing" in r["opened"]


class _Hook(BaseHTTPRequestHandler):
    got: list = []

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        type(self).got.append(json.loads(self.rfile.read(n)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


class _SMTP(socketserver.StreamRequestHandler):
    mails: list = []

    def handle(self):
        w = lambda s: self.wfile.write((s + "\r\n").encode())  # noqa: E731
        w("220 localhost ESMTP test")
        data, in_data = [], False
        for raw in self.rfile:
            line = raw.decode().rstrip("\r\n")
            if in_data:
                if line == ".":
                    in_data = False
                    type(self).mails.append("\n".join(data))
                    data = []
                    w("250 OK")
                else:
                    data.append(line)
                continue
            cmd = line.split(" ", 1)[0].upper()
            if cmd in ("EHLO", "HELO"):
                w("250 localhost")
            elif cmd == "DATA":
                in_data = True
                w("354 go ahead")
            elif cmd == "QUIT":
                w("221 bye")
                return
            else:
                w("250 OK")


def test_webhook_and_email_receive_open_and_resolve(config_factory):
    _Hook.got, _SMTP.mails = [], []
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTP)
    for srv in (hook, smtp):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        rt = _rt(config_factory(alerts={
            "webhook": {"url": f"http://127.0.0.1:{hook.server_address[1]}/hook"},
            "email": {"smtp_host": "127.0.0.1", "smtp_port": smtp.server_address[1],
                      "starttls": False, "from": "appliance@example.org",
                      "to": ["ops@example.org"]}}))
        try:
            _stats(rt, records=100, validated=10)
            _eval(rt, T0)
            _stats(rt, records=100, validated=100)
            _eval(rt, T0 + dt.timedelta(seconds=60))
        finally:
            rt.close()
    finally:
        hook.shutdown()
        smtp.shutdown()
    events = [(m["event"], m["key"]) for m in _Hook.got]
    assert events == [("open", "validation_rate_critical"), ("resolved", "validation_rate_critical")]
    assert len(_SMTP.mails) == 2
    assert "Subject: [CRITICAL] validation_rate_critical opened" in _SMTP.mails[0]
    assert "Subject: [CRITICAL] validation_rate_critical resolved" in _SMTP.mails[1]


def test_a_failed_backup_is_told_to_the_webhook_when_it_opens_and_when_it_resolves(
        config_factory, tmp_path):
    """backup_failed is opened by the backup itself, not by the rules: it
    told nobody (no webhook, no e-mail, no event) until backup_failing, days
    later."""
    from appliance.core.errors import BackupError
    from appliance.ops.backups import run_backup
    _Hook.got = []
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{hook.server_address[1]}/hook"
    try:
        path = config_factory(alerts={"webhook": {"url": url}},
                              backup={"path": str(tmp_path / "notadir" / "backups"),
                                      "min_free_pct": 1})
        rt = _rt(path)
        # after the config was validated (which refuses a file in the way)
        (tmp_path / "notadir").write_text("a file where the backup folder should be")
        try:
            with pytest.raises(BackupError):
                runs.execute(rt, "backup", runs.manual_slot(), run_backup)
            with pytest.raises(BackupError):  # still failing: told once
                runs.execute(rt, "backup", runs.manual_slot(), run_backup)
            config_factory(alerts={"webhook": {"url": url}},
                           backup={"path": str(tmp_path / "backups"), "min_free_pct": 1})
            rt.close()
            rt = _rt(path)
            assert runs.execute(rt, "backup", runs.manual_slot(), run_backup)["status"] == "ok"
            with rt.conn() as conn:
                ev = [r[0] for r in conn.execute(
                    "SELECT message FROM events WHERE kind = 'alert' ORDER BY id")]
        finally:
            rt.close()
    finally:
        hook.shutdown()
    assert [(m["event"], m["key"]) for m in _Hook.got] == [("open", "backup_failed"),
                                                          ("resolved", "backup_failed")]
    assert "backup failed: " in _Hook.got[0]["message"]
    assert [e.split(":")[0] for e in ev] == ["alert backup_failed opened",
                                            "alert backup_failed resolved"], ev


def test_a_failing_notifier_never_blocks_the_rules(config_factory):
    rt = _rt(config_factory(alerts={"webhook": {"url": "http://127.0.0.1:9/nothing",
                                                "timeout_seconds": 1}}))
    try:
        _stats(rt, records=100, validated=10)
        r = _eval(rt, T0)
        assert "validation_rate_critical" in r["opened"]
        with rt.conn() as conn:
            ev = conn.execute("SELECT message FROM events WHERE message LIKE 'webhook%'"
                              ).fetchall()
        assert ev
    finally:
        rt.close()


# --------------------------------------------------------------------------- every other rule

def test_no_worker_alive_opens_after_120_s_and_resolves_with_a_heartbeat(rt):
    _stats(rt)
    now = str(dt.datetime.now(dt.UTC).timestamp())
    rt.redis.set("appliance:heartbeat:scheduler", now)
    rt.redis.delete("appliance:heartbeat:worker")
    alerts.evaluate(rt, now=T0, disk_usage=_ok_disk)
    assert _active(rt) == {"worker_down": "pending"}
    alerts.evaluate(rt, now=T0 + dt.timedelta(seconds=100), disk_usage=_ok_disk)
    assert _active(rt) == {"worker_down": "pending"}
    r = alerts.evaluate(rt, now=T0 + dt.timedelta(seconds=121), disk_usage=_ok_disk)
    assert r["opened"] == ["worker_down"]
    r = _eval(rt, T0 + dt.timedelta(seconds=130))
    assert r["resolved"] == ["worker_down"]


def test_repeatedly_failing_jobs_resolve_when_the_job_succeeds_again(rt):
    _stats(rt)
    with rt.conn() as conn:
        for i in range(2):
            conn.execute("""INSERT INTO job_runs (job, slot, status, created_at)
                            VALUES ('backfill', %s, 'failed', now() + %s * interval '1 s')""",
                         (f"s{i}", i))
    assert "job_failing" not in _eval(rt, T0)["opened"]  # two failures are not "repeatedly"
    with rt.conn() as conn:
        conn.execute("""INSERT INTO job_runs (job, slot, status, created_at)
                        VALUES ('backfill', 's2', 'failed', now() + interval '2 s')""")
    r = _eval(rt, T0 + dt.timedelta(seconds=60))
    assert r["opened"] == ["job_failing"]
    with rt.conn() as conn:
        msg = conn.execute("SELECT message FROM alerts WHERE key = 'job_failing'").fetchone()[0]
        conn.execute("""INSERT INTO job_runs (job, slot, status, created_at)
                        VALUES ('backfill', 's3', 'ok', now() + interval '3 s')""")
    assert "the last 3 runs of backfill failed" in msg and "Response:" in msg
    assert _eval(rt, T0 + dt.timedelta(seconds=120))["resolved"] == ["job_failing"]


def test_a_job_turned_off_raises_no_job_failing(rt, config_factory):
    """OPERATIONS.md, the spot-check on a host without internet: its monthly
    run fails and opens job_failing (a rare job: its first failure counts);
    ``spot_check: off`` and a reload resolve it, and runs by hand that fail
    do not open it again."""
    from appliance.jobs.reload import reload_config
    _stats(rt)
    with rt.conn() as conn:
        conn.execute("""INSERT INTO job_runs (job, slot, status, created_at)
                        VALUES ('spot_check', '2026-11-02T05:00Z', 'failed', now())""")
    r = _eval(rt, T0)
    assert r["opened"] == ["job_failing"]
    config_factory(alerts={"scheduler_heartbeat_max_seconds": 60},
                   schedules={"spot_check": False})
    assert reload_config(rt, source="cli")["ok"]
    assert _eval(rt, T0 + dt.timedelta(seconds=60))["resolved"] == ["job_failing"]
    with rt.conn() as conn:
        for i in range(4):
            conn.execute("""INSERT INTO job_runs (job, slot, status, created_at)
                            VALUES ('spot_check', %s, 'failed', now() + %s * interval '1 s')""",
                         (f"manual-{i}", i + 1))
    assert "job_failing" not in _eval(rt, T0 + dt.timedelta(seconds=120))["opened"]
    assert "job_failing" not in _active(rt)


def _backup(rt, name, created_at, status="ok"):
    with rt.conn() as conn:
        conn.execute("""INSERT INTO backups (filename, path, created_at, status)
                        VALUES (%s, '/b/' || %s, %s, %s)""", (name, name, created_at, status))


def _failed_backup_run(rt, slot, at):
    with rt.conn() as conn:
        conn.execute("""INSERT INTO job_runs (job, slot, status, created_at, started_at,
                                              finished_at, error)
                        VALUES ('backup', %s, 'failed', %s, %s, %s, 'backup path not mounted')""",
                     (slot, at, at, at))


def test_an_old_backup_opens_backup_stale_and_backups_failing_for_a_week_open_a_critical(rt):
    _stats(rt)
    _backup(rt, "b1.dump", T0 - dt.timedelta(days=7))
    assert "backup_stale" not in _eval(rt, T0)["opened"]     # 7 days: within 8
    _failed_backup_run(rt, "w1", T0 - dt.timedelta(days=5))   # failing for 6 days: not yet
    r = _eval(rt, T0 + dt.timedelta(days=1, seconds=1))
    assert r["opened"] == ["backup_stale"]
    assert "backup_failing" not in _active(rt)
    r = _eval(rt, T0 + dt.timedelta(days=2))                  # exactly 7 days: not more
    assert r["opened"] == []
    r = _eval(rt, T0 + dt.timedelta(days=2, seconds=1))       # more than a week
    assert r["opened"] == ["backup_failing"]
    with rt.conn() as conn:
        sev = dict(conn.execute("SELECT key, severity FROM alerts"))
        msg = conn.execute("SELECT message FROM alerts WHERE key = 'backup_stale'").fetchone()[0]
    assert sev == {"backup_stale": "warning", "backup_failing": "critical"}
    assert "the newest good backup is 9.0 days old (allowed: 8)" in msg
    _backup(rt, "b2.dump", T0 + dt.timedelta(days=2, seconds=30))  # a good backup again
    r = _eval(rt, T0 + dt.timedelta(days=2, seconds=60))
    assert sorted(r["resolved"]) == ["backup_failing", "backup_stale"]


def test_gaps_above_their_threshold_open_and_resolve(rt):
    _stats(rt, records=1000, validated=1000, gaps=51)          # 5.1 % > 5 %
    r = _eval(rt, T0)
    assert r["opened"] == ["gaps_high"]
    _stats(rt, records=1000, validated=1000, gaps=50)          # 5 %: at the limit, fine
    assert _eval(rt, T0 + dt.timedelta(seconds=60))["resolved"] == ["gaps_high"]


def _count_429(rt, n):
    with rt.conn() as conn:
        conn.execute("""INSERT INTO vendor_requests (provider, kind, label, count)
                        VALUES ('polygon', 'request', '429', %s)
                        ON CONFLICT (provider, kind, label)
                        DO UPDATE SET count = vendor_requests.count + EXCLUDED.count""", (n,))


def test_sustained_rate_limiting_opens_over_an_hour_and_resolves_when_it_stops(rt):
    _stats(rt)
    _count_429(rt, 500)                                        # old, before the first sample
    assert _eval(rt, T0)["opened"] == []
    _count_429(rt, 15)
    _eval(rt, T0 + dt.timedelta(minutes=30))                   # no hour of samples yet
    _count_429(rt, 10)
    r = _eval(rt, T0 + dt.timedelta(minutes=61))               # 25 in the last hour > 20
    assert r["opened"] == ["vendor_rate_limited"]
    with rt.conn() as conn:
        msg = conn.execute("SELECT message FROM alerts WHERE key = 'vendor_rate_limited'"
                           ).fetchone()[0]
    assert "25 rate-limited (429) vendor answers in the last hour" in msg
    r = _eval(rt, T0 + dt.timedelta(minutes=125))              # none since T0+61m
    assert r["resolved"] == ["vendor_rate_limited"]


def test_a_for_seconds_override_delays_even_a_critical(config_factory):
    r = _rt(config_factory(alerts={"for_seconds": {"validation_rate_critical": 90,
                                                   "disk_low_data": 30}}))
    try:
        _stats(r, records=100, validated=10)
        low = lambda p: collections.namedtuple("U", "total used free")(1000, 990, 10)  # noqa: E731
        _eval(r, T0, disk_usage=low)
        assert _active(r)["validation_rate_critical"] == "pending"
        assert _active(r)["disk_low_data"] == "pending"
        res = _eval(r, T0 + dt.timedelta(seconds=30), disk_usage=low)
        assert "disk_low_data" in res["opened"] and "validation_rate_critical" in res["pending"]
        res = _eval(r, T0 + dt.timedelta(seconds=90), disk_usage=low)
        assert res["opened"] == ["validation_rate_critical"]
    finally:
        r.close()


def test_acknowledging_marks_an_open_alert_once(rt):
    _stats(rt, records=100, validated=10)
    _eval(rt, T0)
    with rt.conn() as conn:
        aid = conn.execute("SELECT id FROM alerts WHERE key = 'validation_rate_critical'"
                           ).fetchone()[0]
        assert alerts.acknowledge(conn, aid, "ops")
        assert not alerts.acknowledge(conn, aid, "someone else")
        row = conn.execute("SELECT status, acknowledged_by, acknowledged_at IS NOT NULL "
                           "FROM alerts WHERE id = %s", (aid,)).fetchone()
    assert row == ("open", "ops", True)   # acknowledged, still open until the cause is gone
    _stats(rt, records=100, validated=100)
    assert _eval(rt, T0 + dt.timedelta(seconds=60))["resolved"] == ["validation_rate_critical"]
    with rt.conn() as conn:
        assert not alerts.acknowledge(conn, aid, "late")       # resolved: nothing to acknowledge


def test_every_rule_has_a_severity_a_for_duration_and_response_steps():
    keys = [r.key for r in alerts.RULES]
    assert len(keys) == len(set(keys))
    for r in alerts.RULES:
        assert r.severity in ("warning", "critical")
        assert r.for_seconds >= 0 and r.response and r.summary
    assert set(alerts.rule_keys()) >= {
        "validation_rate_low", "validation_rate_critical", "data_stale", "scheduler_stopped",
        "worker_down", "job_failing", "backup_stale", "backup_failing", "restore_test_failed",
        "disk_low_data", "disk_low_backup", "gaps_high", "spot_check_mismatch", "vendor_auth",
        "vendor_rate_limited"}


# --------------------------------------------------------------------------- where alerts show

def test_an_open_alert_shows_in_health_the_api_and_metrics(config_factory):
    from appliance.web import create_app
    r = _rt(config_factory())
    try:
        _stats(r, records=100, validated=10)
        _eval(r, T0)
        client = create_app(runtime=r).test_client()
        health = client.get("/health").get_json()
        assert "critical alert: validation_rate_critical" in health["reasons"]
        assert health["status"] == "degraded"
        api = client.get("/api/v1/alerts").get_json()
        assert [a["key"] for a in api["alerts"]] == ["validation_rate_critical"]
        assert "Response:" in api["alerts"][0]["message"]
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'appliance_alerts_open{key="validation_rate_critical",severity="critical"} 1.0' \
            in metrics
        _stats(r, records=100, validated=100)
        _eval(r, T0 + dt.timedelta(seconds=60))
        assert client.get("/api/v1/alerts").get_json()["alerts"] == []
        resolved = client.get("/api/v1/alerts?status=resolved").get_json()["alerts"]
        assert [a["key"] for a in resolved] == ["validation_rate_critical"]
    finally:
        r.close()


def test_the_alerts_job_evaluates_the_rules_and_records_its_run(rt):
    _stats(rt, records=100, validated=10)
    _beat(rt, dt.datetime.now(dt.UTC))
    res = runs.execute(rt, "alerts", runs.manual_slot(), evaluate_job,
                       params={"now": T0.isoformat()})
    assert res["status"] == "ok" and "validation_rate_critical" in res["opened"]
    with rt.conn() as conn:
        run = runs.get(conn, res["run_id"])
    assert run["status"] == "ok" and "validation_rate_critical" in run["result"]["opened"]


def test_a_backfill_refused_by_the_vendor_opens_vendor_auth_until_one_succeeds(config_factory):
    truth = make_truth(["AAPL"], dt.date(2024, 1, 2), dt.date(2024, 1, 31), seed=3)
    with PolygonFake(truth.bars, truth.splits, api_key="right-key") as poly:
        def runtime_with(key):
            return _rt(config_factory(
                provider={"name": "polygon",
                          "polygon": {"api_key": key, "base_url": poly.base_url,
                                      "requests_per_minute": 6000,
                                      "retry_backoff_seconds": 0.01}},
                symbols=["AAPL"], history={"start": "2024-01-02", "lookback_sessions": 5}))
        r = runtime_with("wrong-key")
        try:
            res = runs.execute(r, "backfill", runs.manual_slot(), run_backfill,
                               params={"end": "2024-01-31"})
            assert res["status"] == "failed", res
            opened = _eval(r, T0)["opened"]
            assert "vendor_auth" in opened
            with r.conn() as conn:
                sev, msg = conn.execute("SELECT severity, message FROM alerts "
                                        "WHERE key = 'vendor_auth'").fetchone()
            assert sev == "critical" and "Unknown API Key" in msg
        finally:
            r.close()
        r = runtime_with("right-key")   # the operator fixed the key
        try:
            res = runs.execute(r, "backfill", runs.manual_slot(), run_backfill,
                               params={"end": "2024-01-31"})
            assert res["status"] == "ok", res
            assert "vendor_auth" in _eval(r, T0 + dt.timedelta(seconds=60))["resolved"]
        finally:
            r.close()


def test_the_watchdog_opens_scheduler_and_worker_alerts_when_nothing_runs_the_alerts_job(
        config_factory):
    from tests.support import wait_until
    r = _rt(config_factory(alerts={"for_seconds": {"scheduler_stopped": 0, "worker_down": 0}}))
    try:
        _stats(r)
        # no scheduler, no worker: the every-minute alerts job cannot run
        assert alerts.last_evaluation_age(r) is None
        thread, stop = alerts.start_watchdog(r, interval=0.2,
                                             disk_usage=_ok_disk)
        try:
            wait_until(lambda: {"scheduler_stopped", "worker_down"} <= set(
                k for k, s in _active(r).items() if s == "open"), 30, "the watchdog's alerts")
        finally:
            stop.set()
            thread.join(timeout=10)
        assert not thread.is_alive()
        assert alerts.last_evaluation_age(r) is not None
    finally:
        r.close()


def test_the_watchdog_stays_idle_while_the_alerts_job_evaluates(rt):
    _stats(rt)
    _eval(rt, T0)   # as the every-minute job does
    age = alerts.last_evaluation_age(rt)
    assert age is not None and age < 1.1 * 60   # within 1.1 intervals: the watchdog waits
