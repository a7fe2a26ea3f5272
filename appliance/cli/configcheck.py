"""``appliance check-config``'s questions to the running appliance and to
the operator's shell."""
from __future__ import annotations

import json
import os

import click

from appliance.cli.commandruntime import say_notes
from appliance.config.diff import diff_configs
from appliance.config.loader import env_file_path, load_config, read_env_file, variable_values
from appliance.jobs.registry import active_schedules


def from_this_shell_only(cfg) -> list[str]:
    """The ``${VAR}`` of the config that this shell sets (VAR or VAR_FILE)
    while the environment file does not."""
    in_file = read_env_file(env_file_path(cfg.path))
    return sorted(name for name, value in variable_values(cfg.text, os.environ).items()
                  if value is not None and name not in in_file and f"{name}_FILE" not in in_file)


def print_diff(ctx, cfg) -> int:
    """``check-config --diff``: what a reload would change, as the running
    processes compute it (a dry run of the reload: nothing is applied)."""
    from appliance.jobs import reload as reload_mod
    from appliance.runtime import configsync, services
    from appliance.runtime.runtime import Runtime
    ctx.call_on_close(services.stop_started_here)
    try:
        rt = Runtime(cfg, pool_size=1)
        ctx.call_on_close(rt.close)
        peers = configsync.live(rt, cfg.path)
        got = rt.running_text()
    except Exception as e:  # noqa: BLE001 - nothing running is a normal answer
        click.echo(f"no running config to compare with: {e}", err=True)
        click.echo(json.dumps(None))
        return 0
    if peers:
        res = reload_mod.dry_run(rt, peers, cfg.text, os.environ)
        if not res["ok"]:
            for line in res["errors"]:
                click.echo(line, err=True)
            click.echo("the running appliance would refuse this config", err=True)
            return 1
        click.echo(json.dumps(res["diff"], indent=2, default=str))
        say_notes(res["diff"], res.get("warnings", []))
        return 0
    if got is None:
        click.echo("no running config to compare with (the appliance has not run)", err=True)
        click.echo(json.dumps(None))
        return 0
    running = load_config(cfg.path, text=got[1])
    click.echo(f"the appliance is not running; compared with the config it last ran "
               f"(version {got[0]})", err=True)
    diff = diff_configs(running, cfg)
    click.echo(json.dumps(diff, indent=2, default=str))
    say_notes(diff, [])
    return 0


def schedules_text(cfg) -> str:
    """"10 schedules" as check-config says it, with how many are off."""
    off = len(cfg["schedules"]) - len(active_schedules(cfg["schedules"]))
    return f"{len(cfg['schedules'])} schedules" + (f" ({off} off)" if off else "")
