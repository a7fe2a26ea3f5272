"""OPERATIONS.md's daily, weekly and monthly sections, walked as written on an
appliance fed by the loopback Polygon fake: every `appliance …` command runs
(exit code as documented) and every `curl` answers what its `jq` looks at."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config.loader import DEFAULTS
from appliance.ingest.backfill import run_backfill
from appliance.jobs import runs
from appliance.ops.backups import run_backup
from appliance.runtime.runtime import Runtime
from tests.fakes.polygon_fake import PolygonFake, make_truth

ROOT = Path(__file__).resolve().parents[2]
QUIET = {job: "0 0 1 1 *" for job in DEFAULTS["schedules"]}
SECTIONS = ("## Daily", "## Weekly", "## Monthly")


def _section(title: str) -> str:
    text = (ROOT / "OPERATIONS.md").read_text()
    return text.split(title + "\n", 1)[1].split("\n## ", 1)[0]


def _steps(title: str) -> list[str]:
    """The shell lines of a section's ```bash blocks, comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", _section(title), re.S):
        out += [ln.split("  #")[0].strip() for ln in block.splitlines() if ln.strip()]
    return out


def _jq_path(expr: str):
    """A jq filter of the docs (`.`, `.a`, `.a[0:3]`, `.a[0].b`) as a Python getter."""
    def get(doc):
        cur = doc
        for name, sl in re.findall(r"\.([a-z_]*)(\[[0-9:]+\])?", expr):
            if name:
                assert isinstance(cur, dict) and name in cur, f"{expr}: no {name!r} in {cur!r:.200}"
                cur = cur[name]
            if sl:
                a, _, b = sl[1:-1].partition(":")
                cur = cur[int(a):int(b)] if _ else cur[int(a)]
        return cur
    return get


@pytest.mark.parametrize("title", SECTIONS)
def test_the_runbook_sections_run_as_written(title, config_factory):
    start, end = dt.date(2025, 9, 2), dt.date(2025, 10, 31)
    truth = make_truth(["AAPL", "MSFT"], start, end, seed=9)
    with PolygonFake(truth.bars, truth.splits) as fake:
        path = config_factory(
            provider={"name": "polygon",
                      "polygon": {"api_key": "test-key", "base_url": fake.base_url,
                                  "requests_per_minute": 6000, "timeout_seconds": 2,
                                  "max_retries": 2, "retry_backoff_seconds": 0.01}},
            symbols=["AAPL", "MSFT"], schedules=QUIET,
            history={"start": start.isoformat(), "lookback_sessions": 5})
        rt = Runtime.from_path(path)
        rt.open()
        try:
            assert runs.execute(rt, "backfill", runs.manual_slot(), run_backfill,
                                params={"end": end.isoformat()})["status"] == "ok"
            assert runs.execute(rt, "backup", runs.manual_slot(), run_backup,
                                params={})["status"] == "ok"
            from appliance.web import create_app
            client = create_app(runtime=rt).test_client()
            steps = _steps(title)
            assert steps, f"{title} has no commands"
            for line in steps:
                if line.startswith("appliance "):
                    p = subprocess.run([sys.executable, "-m", "appliance.cli.main", "--config",
                                        str(path), *shlex.split(line)[1:]], text=True,
                                       capture_output=True, timeout=300,
                                       env={**os.environ, "APPLIANCE_CONFIG": str(path)})
                    out = p.stdout + p.stderr
                    if line.startswith("appliance status"):
                        # "exit 0 healthy, 1 degraded, 2 unhealthy" (no web server nor
                        # scheduler runs here: not healthy, and it says so)
                        word = {0: "HEALTHY", 1: "DEGRADED", 2: "UNHEALTHY"}[p.returncode]
                        assert f"Market Data Appliance: {word}" in out, out
                    else:
                        assert p.returncode == 0, f"{line}: exit {p.returncode}\n{out}"
                    if line == "appliance restore-test latest":
                        assert json.loads(p.stdout)["status"] == "ok"
                    if line.startswith("appliance backups"):
                        assert "market_data_" in out
                elif line.startswith("curl "):
                    url = re.search(r"https?://127\.0\.0\.1:8000(/[^\s\"']*)", line).group(1)
                    r = client.get(url)
                    assert r.status_code in (200, 503 if url == "/health" else 200), (line, r)
                    jq = re.search(r"jq '([^']*)'", line)
                    if jq:
                        _jq_path(jq.group(1))(r.get_json())
                elif line.startswith(("tail ", "journalctl ")):
                    continue  # the log files of a running `up` or systemd host
                else:
                    pytest.fail(f"{title}: a step this walk cannot run: {line!r}")
        finally:
            rt.close()
