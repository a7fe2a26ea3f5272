"""The ``appliance`` command.

Config path: ``--config``, else ``APPLIANCE_CONFIG``, else ``config/appliance.yaml``.
Exit codes: 0 success, 1 failure (invalid config, failed job), 2 usage errors
(click's own); ``status`` uses 0/1/2 for healthy/degraded/unhealthy.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
from pathlib import Path

import click

from appliance.cli import configcheck, jobargs, progress
from appliance.cli.commandruntime import _config_path, say_notes
from appliance.cli.commandruntime import command_runtime as _runtime
from appliance.config import variables
from appliance.config.loader import env_file_path, load_config
from appliance.core.errors import ApplianceError, ConfigError
from appliance.core.version import describe

log = logging.getLogger("appliance.cli")


def _load(ctx):
    try:
        return load_config(_config_path(ctx))
    except ConfigError as e:
        for line in e.errors:
            click.echo(line, err=True)
        ctx.exit(1)


def _fail(msg: str, code: int = 1):
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


class _Commands(click.Group):
    """The command group: a PostgreSQL or Redis that cannot be reached (a bad
    certificate, a TLS-only server asked in clear) ends any command with one
    line saying what to fix, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:
            from appliance.runtime.services import connection_problem
            msg = connection_problem(e, _config_or_none(ctx))
            if msg is None:
                raise
            _fail(msg)


def _config_or_none(ctx):
    try:
        return load_config(_config_path(ctx))
    except Exception:  # noqa: BLE001 - only for naming the CA file in a message
        return None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), envvar=None,
              help="appliance.yaml (default: $APPLIANCE_CONFIG or config/appliance.yaml)")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR")
@click.option("--use-file", is_flag=True,
              help="use appliance.yaml as it is on disk, not the running config")
@click.version_option(describe(), prog_name="appliance")
@click.pass_context
def main(ctx, config, log_level, use_file):
    """Market Data Appliance: verified OHLCV candles, backed up and served."""
    from appliance.runtime.logs import (
        setup_logging,  # not from runtime: no psycopg in the gunicorn master
    )
    setup_logging(log_level)
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    ctx.obj["use_file"] = use_file
    if config:
        os.environ["APPLIANCE_CONFIG"] = str(Path(config).resolve())


# --------------------------------------------------------------------------- config

@main.command("check-config")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--diff", "show_diff", is_flag=True,
              help="also show, as JSON on stdout, what a reload would change in the running "
                   "appliance (as its processes see it)")
@click.pass_context
def check_config(ctx, path, show_diff):
    """Validate a config file (like promtool check config): every problem in
    one run, schema and semantic. Validated in the appliance's environment
    (this shell's with appliance.env over it)."""
    t0 = time.monotonic()
    p = Path(path) if path else _config_path(ctx)
    try:
        cfg = load_config(p)
    except ConfigError as e:
        for line in e.errors:
            click.echo(line, err=show_diff)
        click.echo(f"FAILED: {p}: {len(e.errors)} error(s)", err=True)
        sys.exit(1)
    syms = cfg.symbols
    click.echo(f"SUCCESS: {p} is valid: {len(syms)} symbols, provider {cfg['provider']['name']}, "
               f"{configcheck.schedules_text(cfg)}, sha256 {cfg.sha256[:12]} "
               f"({(time.monotonic() - t0) * 1000:.0f} ms)", err=show_diff)
    if show_diff:
        sys.exit(configcheck.print_diff(ctx, cfg))
    for line in variables.unused(cfg.text, cfg.path):
        click.echo(line, err=True)
    for name in configcheck.from_this_shell_only(cfg):
        click.echo(f"note: {name} is set in this shell but not in {env_file_path(cfg.path)}: "
                   f"the appliance's processes have it only if they were started from a shell "
                   f"that had it (systemd's and the containers' are not), else the reload "
                   f"refuses or ignores it; put it in that file, or ask the running processes "
                   f"with 'appliance check-config --diff'", err=True)


@main.group("api-key")
def api_key():
    """Per-client API keys (server.api_keys in appliance.yaml)."""


@api_key.command("new")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(["read", "admin", "export"]),
              default=("read",), show_default=True, help="repeat for several scopes")
@click.option("--requests-per-minute", type=click.IntRange(1, 1_000_000), default=None,
              help="refuse this key's requests above this rate (429)")
def api_key_new(name, scopes, requests_per_minute):
    """Make a key for client NAME: prints the key once, and the YAML lines to
    paste under server.api_keys (only its sha256 is kept in the file)."""
    import hashlib
    import re
    import secrets
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        _fail("NAME: letters, digits, '.', '_' or '-' (at most 64), starting with a letter "
              "or digit", 2)
    key = "mda_" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    entry = f'    - {{name: {name}, sha256: "{digest}", scopes: [{", ".join(scopes)}]'
    if requests_per_minute:
        entry += f", requests_per_minute: {requests_per_minute}"
    entry += "}"
    click.echo(f"API key for {name} (shown only now; give it to the client):\n\n  {key}\n")
    click.echo("Paste into appliance.yaml, under its 'server:' line (the 'api_keys:' line "
               "only when the file has none yet), then run 'appliance reload':\n")
    click.echo("  api_keys:\n" + entry)
    if "export" in scopes and "read" not in scopes:
        click.echo("\nnote: export without read: wherever reading needs a credential, the "
                   "bulk endpoint refuses this key (401); add --scope read", err=True)


@main.command()
@click.argument("address")
@click.pass_context
def unlock(ctx, address):
    """End the lockout of ADDRESS (as the auth events name it); clear its failures."""
    import ipaddress

    from appliance.web.auth import unlock as unlock_addr
    try:
        address = str(ipaddress.ip_address(address.strip("[]")))
    except ValueError:
        raise click.BadParameter(f"{address!r} is not an IP address: give the address the "
                                 f"auth events name (e.g. 203.0.113.7)",
                                 param_hint="ADDRESS") from None
    rt = _runtime(ctx)
    try:
        res = unlock_addr(rt, address)
    except Exception as e:  # noqa: BLE001 - Redis or the database unreachable: say so
        _fail(f"could not unlock {address}: {e}")
    click.echo(f"{address}: " + ("lockout ended" if res["was_locked"] else "was not locked out")
               + f"; {res['failures']} failed attempt(s) cleared")


@main.command()
@click.pass_context
def reload(ctx):
    """Make appliance.yaml the running config of every process: each validates
    it in its own environment first; one refusal and nothing changes."""
    from appliance.jobs import reload as reload_mod
    # this command says which config runs; the runtime's own line is for the services' logs
    logging.getLogger("appliance.runtime").setLevel(logging.WARNING)
    rt = _runtime(ctx, broken_file_ok=True, announce=False, adopt=False)
    res = reload_mod.reload_config(rt, source="cli", actor=os.environ.get("USER"),
                                   caller_env=os.environ)
    if not res["ok"]:
        for line in res["errors"]:
            click.echo(line, err=True)
        click.echo("reload refused; the running config is unchanged"
                   if res.get("status") != 504 else "reload not confirmed", err=True)
        sys.exit(1)
    click.echo(json.dumps(res["diff"], indent=2, default=str))
    if res["diff"].get("restart_required"):
        click.echo(f"restart required: {', '.join(res['diff']['restart_required'])} keep their "
                   f"old value until the appliance restarts (systemctl restart "
                   f"market-data-api.target, or stop and start appliance up)", err=True)
    say_notes(res["diff"], [])
    how, tail = ("is running", "") if res.get("running") else (
        "published", "; no process of the appliance is running: it starts from appliance.yaml")
    click.echo(f"reloaded: config {res['sha256'][:12]} {how} (version {res['version']}){tail}")
    if res.get("backfill_run_id"):  # symbols, minute bars or history added
        _say_queued("backfill", res["backfill_run_id"])
    say_notes({}, res.get("warnings", []))  # last: the line the operator reads


# --------------------------------------------------------------------------- database

@main.command()
@click.pass_context
def migrate(ctx):
    """Apply pending database migrations."""
    from appliance.runtime import services
    from appliance.store import pool as db
    cfg = _load(ctx)
    ctx.call_on_close(services.stop_started_here)
    try:
        ep = services.resolve(cfg)
        applied = db.migrate(ep.database_url)
    except ApplianceError as e:
        _fail(e.message)
    click.echo(f"migrations applied: {applied or 'none (up to date)'}; schema version "
               f"{db.latest_version()} ({ep.describe()})")


# --------------------------------------------------------------------------- demo data

@main.command("demo-data")
@click.argument("symbols", nargs=-1)
@click.option("--delete", "delete", is_flag=True,
              help="delete the demo data (of SYMBOLS, or of every symbol holding some)")
@click.pass_context
def demo_data(ctx, symbols, delete):
    """List the symbols still holding synthetic bars of the demo provider, or
    delete them (the next backfill then fetches their whole history)."""
    from appliance.config.loader import SYMBOL_RE
    from appliance.ingest import demodata
    bad = [s for s in symbols if not SYMBOL_RE.match(s)]
    if bad:
        _fail(f"not a valid symbol: {', '.join(bad)}", 2)
    rt = _runtime(ctx, migrate=True)
    try:
        counts = demodata.delete(rt, symbols or None) if delete else \
            demodata.report(rt, symbols or None)
    except ApplianceError as e:
        _fail(e.message)
    for sym, c in counts.items():
        click.echo(f"{sym}  {c['daily_bars']} daily bar(s), {c['minute_sessions']} minute "
                   f"session(s), {c['splits']} split(s)")
    verb = "deleted" if delete else "held"
    click.echo(f"demo data {verb}: {len(counts)} symbol(s)" if counts else "no demo data stored")
    if delete and counts and not demodata.replacing(rt.config["provider"]["name"]):
        click.echo("note: provider.name is still demo: the next backfill stores demo data "
                   "again; set a real vendor and run appliance reload first", err=True)


# --------------------------------------------------------------------------- jobs

def _parse_date(_ctx, _param, value):
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


@main.command()
@click.argument("symbols", nargs=-1)
@click.option("--start", callback=_parse_date, help="first session (YYYY-MM-DD)")
@click.option("--end", callback=_parse_date, help="last session (YYYY-MM-DD), inclusive")
@click.option("--enqueue", is_flag=True, help="run on the worker instead of in this process")
@click.option("--plan", "show_plan", is_flag=True,
              help="say what would be fetched and how (flat files or REST), fetch nothing")
@click.pass_context
def backfill(ctx, symbols, start, end, enqueue, show_plan):
    """Fetch missing candles (all configured symbols, or SYMBOLS)."""
    from appliance.config.loader import SYMBOL_RE
    bad = [s for s in symbols if not SYMBOL_RE.match(s)]
    if bad:
        _fail(f"not a valid symbol: {', '.join(bad)}", 2)
    if start and end and start > end:
        _fail("--start is after --end", 2)
    rt = _runtime(ctx, migrate=True)
    jobargs.warn_unconfigured(_config_path(ctx), rt, symbols)
    params = {"symbols": list(symbols) or None, "start": start.isoformat() if start else None,
              "end": end.isoformat() if end else None}
    if show_plan:
        from appliance.ingest.backfill import describe_plan
        for line in describe_plan(rt, list(symbols) or None, start, end):
            click.echo(line)
        return
    if enqueue:
        from appliance.jobs.queue import enqueue as enq
        run_id = enq(rt, "backfill", params)
        _say_queued("backfill", run_id)
        return
    from appliance.ingest.backfill import run_backfill
    res = _run_with_progress(rt, "backfill", run_backfill, params)
    click.echo(progress.summary_line(res))
    sys.exit(0 if res.get("status") == "ok" else 1)


def _run_with_progress(rt, job: str, fn, params: dict) -> dict:
    """Run a job in this process with a progress bar on a terminal."""
    from appliance.jobs import runs
    interactive = sys.stderr.isatty()
    state = {"last": None}
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    prog = Progress(TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(),  # "0/?" before the total is known, not "0/None"
                    TextColumn("{task.fields[info]}"), console=Console(stderr=True),
                    disable=not interactive, transient=False)
    with prog, progress.logs_above(prog):
        task = prog.add_task(job, total=None, info="")

        def wrapped(rt_, run_id, report, **kw):
            def report2(data, force=False):
                report(data, force)
                line = progress.progress_line(data)
                if line is None:
                    return
                total, done, info = line
                prog.update(task, total=total, completed=done, info=info)
                if not interactive:
                    now = time.monotonic()
                    if force or state["last"] is None or now - state["last"] > 5:
                        state["last"] = now
                        click.echo(f"progress: {done}/{total} {info}", err=True)
            return fn(rt_, run_id, report2, **kw)

        try:
            return runs.execute(rt, job, runs.manual_slot(), wrapped, trigger="manual",
                                params=params)
        except ApplianceError as e:
            _fail(e.message)


@main.command("export")
@click.option("--timeframe", "timeframe", required=True,
              type=click.Choice(["1m", "5m", "15m", "30m", "1h", "4h", "1d", "1w"]))
@click.option("--start", callback=_parse_date, help="first session (default: history.start)")
@click.option("--end", callback=_parse_date, help="last session (default: today)")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="the dataset's directory (created; its manifest.json says what it holds)")
@click.pass_context
def export_cmd(ctx, timeframe, start, end, out):
    """Write the bars of the months of START..END as a Hive-partitioned Parquet
    dataset in OUT (timeframe=/year=/month=), only the months that changed."""
    from appliance.core.calendar import exchange_tz
    from appliance.ops import export as export_mod
    rt = _runtime(ctx, migrate=True)
    from appliance.core.timeframes import base_of
    start = start or rt.config.history_start(base_of(timeframe))
    end = end or dt.date.today()
    if start > end:
        _fail(f"--start ({start}) is after --end ({end})", 2)

    def on_file(key, entry):
        click.echo(f"wrote {key}/{export_mod.FILE}: {entry['rows']} bars, "
                   f"{len(entry['symbols'])} symbols, {entry['bytes']} bytes")
    try:
        res = export_mod.export(rt.read_conn, timeframe, start, end, Path(out), on_file,
                                tz=exchange_tz(rt.config["calendar"]))
    except ValueError as e:
        _fail(str(e))
    except ApplianceError as e:
        _fail(e.message)
    click.echo(f"export {timeframe} {start}..{end} to {out}: {len(res['written'])} file(s) "
               f"written ({res['rows']} bars), {res['unchanged']} unchanged, "
               f"{len(res['removed'])} removed")


@main.command("repack")
@click.option("--limit", type=click.IntRange(min=1), help="at most this many sessions")
@click.pass_context
def repack_cmd(ctx, limit):
    """Write the minute sessions stored before migrations 0013/0014/0017 again
    as packed candles (the same bars, less disk); safe to stop and rerun."""
    from appliance.ops import repack as repack_mod
    rt = _runtime(ctx, migrate=True)
    res = repack_mod.repack(rt.conn, limit,
                            on_batch=lambda n: click.echo(f"repacked {n} session(s)"))
    click.echo(f"repack: {res['sessions']} minute session(s) and their rollups written "
               f"again as packed candles")


def _say_queued(job: str, run_id: int) -> None:
    click.echo(f"queued {job} run {run_id} (follow it: the console's Jobs page, or "
               f"GET /api/v1/jobs/{run_id})")


@main.command("run")
@click.argument("job")
@click.option("--enqueue", is_flag=True, help="queue it for the worker instead")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
              help="a job parameter, e.g. -p backup=latest for restore_test")
@click.pass_context
def run_job(ctx, job, enqueue, params):
    """Run any job now, the same run the scheduler would start (JOB: backfill,
    backup, restore_test, spot_check, maintenance, disk_check, retention,
    alerts, performance_review, export); also one whose schedule is off."""
    from appliance.jobs import registry
    if job not in registry.JOBS:
        _fail(f"unknown job {job!r}; jobs: {', '.join(registry.JOBS)}", 2)
    try:
        kv = {**registry.run_now_params(job), **jobargs.job_params(job, params)}
    except ValueError as e:
        _fail(str(e), 2)
    rt = _runtime(ctx, migrate=True)
    jobargs.warn_unconfigured(_config_path(ctx), rt, kv.get("symbols") or ())
    if enqueue:
        from appliance.jobs.queue import enqueue as enq
        _say_queued(job, enq(rt, job, kv))
        return
    res = _run_with_progress(rt, job, registry.job_function(job), kv)
    click.echo(json.dumps(res, indent=2, default=str))
    sys.exit(0 if res.get("status") in ("ok", None) else 1)


# --------------------------------------------------------------------------- processes

@main.command()
@click.pass_context
def serve(ctx):
    """Run the web server (gunicorn, server.workers processes)."""
    from appliance.web.server import serve as run_server
    cfg = _load(ctx)
    run_server(cfg)


@main.command()
@click.option("--burst", is_flag=True, help="run queued jobs, then exit")
@click.option("--name", default=None, help="worker name (default: host + pid)")
@click.pass_context
def worker(ctx, burst, name):
    """Run one RQ worker for the appliance's queue."""
    from appliance.jobs.worker import run_worker
    rt = _runtime(ctx, one_shot=False, service="worker")
    sys.exit(run_worker(rt, burst=burst, name=name))


@main.command()
@click.pass_context
def scheduler(ctx):
    """Run the scheduler: cron jobs from appliance.yaml (UTC), heartbeat, catch-up."""
    from appliance.jobs.schedule import run_scheduler
    rt = _runtime(ctx, one_shot=False, service="scheduler")
    sys.exit(run_scheduler(rt))


@main.command()
@click.option("--no-initial-backfill", is_flag=True, help="skip the first-start backfill")
@click.pass_context
def up(ctx, no_initial_backfill):
    """Migrate, then run web server, worker and scheduler, supervised."""
    from appliance.cli.supervisor import run_up
    cfg = _load(ctx)
    sys.exit(run_up(cfg, initial_backfill=not no_initial_backfill))


# --------------------------------------------------------------------------- backups

@main.command()
@click.pass_context
def backup(ctx):
    """Back up the database now (pg_dump -Fc + manifest) into backup.path."""
    from appliance.ops.backups import run_backup
    rt = _runtime(ctx, migrate=True)
    res = _run_with_progress(rt, "backup", run_backup, {})
    click.echo(json.dumps(res, indent=2, default=str))
    sys.exit(0 if res.get("status") == "ok" else 1)


@main.command()
@click.option("--rescan", is_flag=True, help="rebuild the catalogue from the manifests on disk")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def backups(ctx, rescan, as_json):
    """List backups (newest first)."""
    from appliance.alerts.disks import backup_drive_missing
    from appliance.ops import backups as bk
    rt = _runtime(ctx, migrate=True)
    with rt.conn() as conn:
        if rescan:
            res = bk.rescan(conn, rt.config)
            click.echo(f"rescan: {json.dumps(res, default=str)}")
        rows = bk.list_backups(conn)
    if as_json:
        return click.echo(json.dumps(rows, indent=2, default=str))
    if why := backup_drive_missing(rt.config):  # listed from the catalogue, not readable
        click.echo(f"the backup drive is not mounted ({why}): these archives cannot be read")
    if not rows:
        click.echo("no backups in the catalogue ('appliance backup' takes one; 'appliance "
                   "backups --rescan' reads the manifests in backup.path)")
    else:
        click.echo(f"{'id':>5}  {'taken (UTC)':<16}  {'file':<32}  {'size':>14}  status")
    for r in rows:
        click.echo(f"{r['id']:>5}  {str(r.get('created_at') or '-')[:16].replace('T', ' '):<16}  "
                   f"{r['filename']:<32}  {r.get('size_bytes') or 0:>12} B  "
                   f"{r['status']:<8} restore test: {r.get('restore_test_status') or '-'}")
        if r.get("restore_test_status") == "failed":
            click.echo(f"{'':>7}why: {(r.get('restore_test_result') or {}).get('error') or '?'}")


@main.command("restore-test")
@click.argument("backup", default="latest")
@click.pass_context
def restore_test(ctx, backup):
    """Prove a backup restores: into a scratch database, compared with its manifest."""
    from appliance.ops.backups import run_restore_test, testable_backup
    rt = _runtime(ctx, migrate=True)
    with rt.conn() as conn:
        try:
            testable_backup(conn, rt.config, backup)
        except ApplianceError as e:
            _fail(e.message, 2)
    res = _run_with_progress(rt, "restore_test", run_restore_test, {"backup": backup})
    click.echo(json.dumps(res, indent=2, default=str))
    sys.exit(0 if res.get("status") == "ok" else 1)


@main.command()
@click.argument("backup")
@click.option("--yes", is_flag=True, help="really replace the live database")
@click.pass_context
def restore(ctx, backup, yes):
    """Recover the database from BACKUP (a file, an id or 'latest')."""
    from appliance.ops import backups as bk
    rt = _runtime(ctx, migrate="try")
    if not yes:
        text = bk.restore_plan_text(rt, backup)
        click.echo(text)
        cannot = text.startswith(bk.RESTORE_CANNOT)
        click.echo("\nNothing was changed." + ("" if cannot else " Run again with --yes to do it."))
        sys.exit(1 if cannot else 0)  # 0: the plan can be carried out
    try:
        res = bk.full_restore(rt, backup, progress=lambda m: click.echo(m, err=True))
    except ApplianceError as e:
        _fail(e.message)
    click.echo(json.dumps(res, indent=2, default=str))


@main.command("kept-databases")
@click.option("--drop", "drop", metavar="NAME", help="drop this kept database")
@click.option("--yes", is_flag=True, help="really drop it")
@click.pass_context
def kept_databases(ctx, drop, yes):
    """List the databases a restore kept (NAME_old_…), or drop one of them,
    on the appliance's own PostgreSQL (embedded or external)."""
    from appliance.core import units
    from appliance.ops import backups as bk
    rt = _runtime(ctx)
    try:
        kept = bk.kept_databases(rt)
        if drop is None:
            for name, size in kept:
                click.echo(f"{name}  {units.human_bytes(size)}")
            if not kept:
                click.echo("no kept databases")
            return
        if drop not in {n for n, _ in kept}:
            _fail(f"{drop!r} is not a kept database; kept: "
                  f"{', '.join(n for n, _ in kept) or 'none'}", 2)
        if not yes:
            click.echo(f"would drop {drop}; run again with --yes to do it")
            sys.exit(1)
        bk.drop_kept_database(rt, drop)
        click.echo(f"dropped {drop}")
    except ApplianceError as e:
        _fail(e.message)


# --------------------------------------------------------------------------- status

@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable")
@click.option("--watch", is_flag=True, help="refresh in place")
@click.option("--interval", default=5.0, show_default=True)
@click.pass_context
def status(ctx, as_json, watch, interval):
    """Health, alerts, jobs, backups and freshness (exit 0 ok, 1 warning, 2 critical).
    Starts no embedded server: one that is not running is the answer."""
    from appliance.ops.statusview import run_status, unreachable
    logging.getLogger("appliance.runtime").setLevel(logging.WARNING)  # its lines: the services'
    rt = _runtime(ctx, broken_file_ok=True, pool_size=2, start_servers=False,
                  on_error=lambda message: unreachable(message, as_json=as_json))
    sys.exit(run_status(rt, as_json=as_json, watch=watch, interval=interval))


if __name__ == "__main__":  # pragma: no cover
    main()
