"""The docs say what the code does: every `appliance …` command in README.md
and OPERATIONS.md parses with the real CLI, every local URL is a real route,
every job, alert and config key named exists."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from appliance.cli.main import main as cli_main
from appliance.config.loader import DEFAULTS
from appliance.jobs.registry import JOBS

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "OPERATIONS.md"]


def _code_lines(path: Path) -> list[str]:
    out, inside = [], False
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if inside:
            out.append(line.strip())
    return out


def _commands(prefix: str) -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for line in _code_lines(doc):
            for part in line.split("  #")[0].split(" && "):  # each command of a chain
                if part.strip().startswith(prefix):
                    found.append((doc.name, part.strip()))
    return found


APPLIANCE_LINES = _commands("appliance ")


def test_the_docs_show_appliance_commands():
    assert len(APPLIANCE_LINES) >= 15


@pytest.mark.parametrize("doc,line", APPLIANCE_LINES, ids=[l for _, l in APPLIANCE_LINES])  # noqa: E741
def test_each_documented_command_parses_with_the_real_cli(doc, line):
    args = shlex.split(line)[1:]
    args = [a for a in args if not a.startswith("|")]
    if "|" in args:
        args = args[: args.index("|")]
    sub_name, rest = args[0], args[1:]
    ctx = click.Context(cli_main, info_name="appliance")
    sub = cli_main.get_command(ctx, sub_name)
    assert sub is not None, f"{doc}: unknown command {sub_name!r} in {line!r}"
    # raises click.UsageError on an unknown option or a missing argument
    sub.make_context(sub_name, list(rest), parent=ctx)


def _local_paths() -> list[tuple[str, str, str]]:
    out = []
    for doc in DOCS:
        for line in _code_lines(doc) + doc.read_text().splitlines():
            for m in re.finditer(r"https?://(?:localhost|127\.0\.0\.1):8000(/[^\s\"'`)<>|]*)", line):
                method = "POST" if "-X POST" in line else "GET"
                out.append((doc.name, method, m.group(1).split("?")[0]))
    return sorted(set(out))


def test_every_local_url_in_the_docs_is_a_route(app):
    adapter = app.url_map.bind("localhost")
    paths = _local_paths()
    assert len(paths) >= 8
    for doc, method, path in paths:
        try:
            adapter.match(path, method=method)
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{doc}: {method} {path} is not served: {e}")


def test_every_job_in_the_operations_table_exists():
    text = (ROOT / "OPERATIONS.md").read_text()
    table = text.split("## What runs by itself", 1)[1].split("\n---\n", 1)[0]
    jobs = re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M)
    assert set(jobs) == set(JOBS), (jobs, sorted(JOBS))


def _config_keys(text: str) -> set[str]:
    keys = set()
    for m in re.finditer(r"`((?:database|redis|server|provider|history|schedules|jobs|retention|"
                         r"backup|alerts|quality|spot_check|dashboard)\.[a-z_.]+)`", text):
        keys.add(m.group(1).rstrip("."))
    return keys


def test_every_config_key_named_in_the_docs_exists():
    for doc in DOCS:
        for key in _config_keys(doc.read_text()):
            cur = DEFAULTS
            for part in key.split("."):
                if part == "*":
                    break
                assert isinstance(cur, dict) and part in cur, f"{doc.name}: unknown key {key}"
                cur = cur[part]


def test_every_alert_in_the_runbook_is_a_rule():
    alerts = pytest.importorskip("appliance.alerts.rules")
    text = (ROOT / "OPERATIONS.md").read_text()
    table = text.split("## Alerts and responses", 1)[1].split("\n---\n", 1)[0]
    named = set()
    for cell in re.findall(r"^\| ([^|]+) \|", table, flags=re.M):
        named.update(re.findall(r"`([a-z_]+)`", cell))
    known = set(alerts.rule_keys())
    assert named and named <= known, sorted(named - known)
