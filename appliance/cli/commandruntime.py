"""The Runtime of an ``appliance`` command, with the config the rule in
``configsync`` gives it (which config, which environment), said on stderr
when the file on disk is not what runs."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import click

from appliance.config.loader import default_config_path, load_config
from appliance.core.errors import ApplianceError, ConfigError

log = logging.getLogger("appliance.cli")


def _config_path(ctx) -> Path:
    return Path(ctx.obj["config"]) if ctx.obj.get("config") else default_config_path()


def _file_config(ctx):
    """(the file's config or None, its errors)."""
    try:
        return load_config(_config_path(ctx)), []
    except ConfigError as e:
        return None, e.errors


def command_runtime(ctx, *, one_shot: bool = True, migrate: bool | str = False,
             service: str | None = None, broken_file_ok: bool = False, announce: bool = True,
             adopt: bool = True, on_error: Callable[[str], int] | None = None, **kw):
    """A Runtime for this command, with the config the rule in ``configsync``
    gives it: a long-running ``service`` joins the running appliance or starts
    it from the file; a one-shot command uses the running config while the
    appliance runs (saying so when the file differs), else the file, and with
    ``--use-file`` always the file. ``one_shot``: embedded servers this command
    had to start are stopped again when it ends. ``migrate``: bring the schema
    up to date first (a fresh host has none yet); ``"try"``: a failure is only
    a warning (the restore of a damaged database must still run).
    ``broken_file_ok``: an invalid file only finds the servers (status, reload).
    ``on_error``: says an error its own way and gives the exit code (else
    ``error: …`` and 1). ``adopt=False`` (with ``announce=False``): the
    command takes the running config itself (``reload``, which refuses, and
    records, a running config this environment cannot resolve)."""
    from appliance.runtime import configsync, services
    from appliance.runtime.runtime import Runtime
    path = _config_path(ctx)
    file_cfg, file_errors = _file_config(ctx)
    use_file = bool(ctx.find_root().obj.get("use_file"))
    if file_cfg is None and (use_file or not broken_file_ok) and service is None:
        if not use_file and _running_without(ctx, path, file_errors):
            pass  # an invalid file while the appliance runs: the running config is used
        else:
            for line in file_errors:
                click.echo(line, err=True)
            ctx.exit(1)
    if one_shot:  # only what this command starts (a caller's own servers stay up)
        before = services.started_here()
        ctx.call_on_close(lambda: services.stop_started_here(keep=before))
    try:
        if file_cfg is not None:
            rt = Runtime(file_cfg, **kw)
        else:
            rt = _salvaged_runtime(ctx, path, file_errors, **kw)
        ctx.call_on_close(rt.close)
        if migrate:
            _migrate(rt, migrate)
        if service is not None:
            _start_service(ctx, rt, service, file_cfg, file_errors)
        elif not use_file and announce:
            _say_which_config(ctx, rt, file_cfg, file_errors)
        elif not use_file and adopt and configsync.running(rt):
            rt.adopt_running_config()
        if service is None and announce:
            rt.pin_config()  # one command, one config
        return rt
    except ApplianceError as e:
        if on_error is not None:
            ctx.exit(on_error(e.message))
        click.echo(f"error: {e.message}", err=True)
        ctx.exit(1)


def _salvaged_runtime(ctx, path, file_errors, **kw):
    """A Runtime on the servers an invalid file still names, never starting
    one (an invalid file starts nothing); the file's errors and exit 1 when
    none answers."""
    from appliance.config.salvage import salvage_connection_settings
    from appliance.runtime import services
    from appliance.runtime.runtime import Runtime
    base = salvage_connection_settings(path)
    try:
        ep = services.resolve(base, start=False)
        rt = Runtime(base, endpoints=ep, **kw)
        rt.redis.ping()
        return rt
    except Exception:  # noqa: BLE001 - nothing to reach: the file's errors are the answer
        for line in file_errors:
            click.echo(line, err=True)
        click.echo("nothing was changed: the file does not validate (above), and no running "
                   "appliance answers with the servers it names", err=True)
        ctx.exit(1)


def _running_without(ctx, path, file_errors) -> bool:
    """Whether the appliance runs although ``path`` does not validate (its
    servers found from the file's readable connection settings)."""
    from appliance.config.salvage import salvage_connection_settings
    from appliance.runtime import configsync
    from appliance.runtime.runtime import Runtime
    rt = None
    try:
        rt = Runtime(salvage_connection_settings(path), pool_size=1)
        return configsync.running(rt)
    except Exception:  # noqa: BLE001 - not reachable: not running
        return False
    finally:
        if rt is not None:
            rt.close()


def _migrate(rt, migrate) -> None:
    from appliance.store import pool as db
    try:
        applied = db.migrate(rt.endpoints.database_url)
        if applied:
            click.echo(f"applied migrations {applied}", err=True)
    except Exception as e:  # noqa: BLE001 - say it; "try" goes on
        if migrate != "try":
            raise ApplianceError(f"database migration failed: {e}") from None
        click.echo(f"warning: could not migrate the live database ({e}); going on", err=True)


def _start_service(ctx, rt, role: str, file_cfg, file_errors) -> None:
    from appliance.runtime import configsync
    try:
        how = configsync.start_service(rt, file_cfg,
                                       join=os.environ.get("APPLIANCE_JOIN") == "1")
    except ConfigError as e:
        # the running config's errors hold the file's when a variable is
        # missing: each said once (a refused worker said it three times a try)
        for line in [*e.errors, *(f for f in dict.fromkeys(file_errors)
                                   if not any(f in x for x in e.errors))]:
            click.echo(line, err=True)
        rt.pin_config()  # refused: no later look at the running config to log again
        _refused_to_join(rt, role, e.errors)
        ctx.exit(1)
    log.info("%s %s config %s (version %d)", role, "joined the running appliance with" if
             how == "joined" else "started the appliance from its file:",
             rt.current_config().sha256[:12], rt.config_version())
    if how == "booted":
        _record_boot(rt, role)
    watcher = configsync.Watcher(rt, role).start()
    ctx.call_on_close(watcher.close)


def _refused_to_join(rt, role: str, errors: list[str]) -> None:
    """A process that cannot join the running appliance (its environment
    lost a variable the running config needs) opens ``config_invalid``: the
    others run on, and the operator learns why this one does not."""
    from appliance.alerts import rules as alerts
    from appliance.jobs.entry import open_config_invalid
    from appliance.runtime import configsync
    try:
        if not configsync.running(rt):
            return  # a cold start: the command's own error is the answer
        with rt.conn() as conn:
            opened = open_config_invalid(conn, f"The {role} process", errors,
                                         {"process": role, "pid": os.getpid()})
        alerts.announce(rt, "open", opened)
    except Exception as e:  # noqa: BLE001 - the error above is said; the alert is a bonus
        log.warning("could not open the config_invalid alert: %s", e)


def _record_boot(rt, role: str) -> None:
    """A cold start from the file, as ``appliance up`` records its own."""
    from appliance import store
    cfg = rt.current_config()
    try:
        with rt.conn() as conn:
            store.sync_symbols(conn, cfg.symbols)
            store.record_config_reload(conn, source="startup", actor=role, sha256=cfg.sha256,
                                       ok=True, error=None, diff=None)
    except Exception as e:  # noqa: BLE001 - not migrated yet: the next reload syncs
        log.warning("could not record the start-up config: %s", e)


def _say_which_config(ctx, rt, file_cfg, file_errors) -> None:
    """One-shot commands: the running config while the appliance runs, said
    on stderr when the file differs from it; else the file."""
    from appliance.runtime import configsync
    if not configsync.running(rt):
        if file_cfg is None:
            click.echo(f"warning: {_config_path(ctx)} does not validate and the appliance is "
                       f"not running; only its connection settings are used:", err=True)
            for line in file_errors:
                click.echo("  " + line, err=True)
        return
    rt.adopt_running_config()
    v = rt.config_version()
    if file_cfg is None:
        click.echo(f"warning: {_config_path(ctx)} does not validate ({len(file_errors)} "
                   f"error(s), first: {file_errors[0]}); the running config (version {v}) is "
                   f"used, unchanged", err=True)
    elif configsync.file_differs(rt, file_cfg):
        click.echo(f"warning: {file_cfg.path.name} differs from the running config (version "
                   f"{v}): run appliance reload first, or --use-file; using the running "
                   f"config", err=True)


def say_notes(diff: dict, warnings: list[str]) -> None:
    """Beside a diff (stderr): what removing symbols or a symbol's resolution
    does (``config.diff.notes``, the console says the same), then ``warnings``."""
    from appliance.config.diff import notes
    for line in [*notes(diff), *warnings]:
        click.echo(line, err=True)
