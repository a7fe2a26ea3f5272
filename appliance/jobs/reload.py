"""Reloading appliance.yaml without a restart.

``reload_config`` validates the whole file with the same function as
``check-config``, in the environment of every running process (configsync
states the rule); only a config every process accepts is published, and the
reload returns once each process runs it. Restart-only keys keep their value
until the next restart and the reload says so. Every attempt is recorded in
``config_reloads`` with its diff or its errors. Effects: the symbols table
follows the config (removed symbols keep their data), added symbols are
backfilled right away, and the scheduler re-registers changed schedules when
it sees the new version.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
from pathlib import Path

from appliance import store
from appliance.alerts import rules as alerts
from appliance.config import variables
from appliance.config.diff import diff_configs, diff_is_empty
from appliance.config.loader import Config, SymbolSpec, load_config
from appliance.config.salvage import salvage_connection_settings
from appliance.core.errors import ConfigError
from appliance.ingest import demodata
from appliance.jobs.queue import enqueue
from appliance.runtime import configsync, services
from appliance.runtime.runtime import Runtime

log = logging.getLogger("appliance.reload")
_lock = threading.Lock()


def running_config(rt) -> Config:
    """The config every process runs now (the last one accepted)."""
    rt.adopt_running_config()
    return rt.config


def _file_text(path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        load_config(path)  # raises the ConfigError that names the problem
        raise


def reload_config(rt, *, source: str, actor: str | None = None,
                  text: str | bytes | None = None, caller_env=None) -> dict:
    """Returns ``{"ok": True, "diff", "sha256", "version", "backfill_run_id",
    "restart_required_since"}`` or ``{"ok": False, "errors": [...], "status": 422|504}``.
    Never raises for a bad file. While processes of the appliance run, each
    one validates the new config in its own environment (configsync); with
    none running, it is validated here. ``caller_env``: the environment of
    the command that asked (a CLI's shell), for the hints of a refusal and
    the ``warnings`` of a reload (a variable its shell sets that the
    processes do not have, ``configsync.shell_warnings``)."""
    with _lock:
        try:
            old = running_config(rt)
        except ConfigError as e:  # the asker's environment no longer resolves the running config
            return _refuse(rt, source, actor, e.errors, None)
        try:
            if text is None:
                text = _file_text(old.path)
            elif isinstance(text, bytes):
                text = text.decode("utf-8")
        except ConfigError as e:
            return _refuse(rt, source, actor, e.errors, None)
        except UnicodeDecodeError:
            return _refuse(rt, source, actor, [f"{old.path}:1: at $: not valid UTF-8"], None)
        peers = configsync.live(rt, old.path)
        warnings: list[str] = []
        if peers:
            res = _agreed_by(rt, peers, text, caller_env)
            if not res["ok"]:
                return _refuse(rt, source, actor, res["errors"], None, status=res["status"])
            diff, symbols, warnings = res["diff"], res["symbols"], res["warnings"]
            sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
            version = rt.publish_text(text)
            behind = configsync.confirmations(rt, peers, version)
            if behind:
                msg = (f"config {sha[:12]} was published (version {version}) but "
                       f"{', '.join(behind)} did not confirm it within "
                       f"{configsync.ANSWER_TIMEOUT_S:.0f} s")
                return _refuse(rt, source, actor, [msg], diff, status=504, published=True)
        else:
            try:
                new = load_config(old.path, text=text)
            except ConfigError as e:
                return _refuse(rt, source, actor, e.errors, None)
            why = configsync.read_url_refusal(rt, new)
            if why:
                return _refuse(rt, source, actor, [why], None)
            diff, symbols, sha = diff_configs(old, new), new.symbols, new.sha256
            version = rt.publish_config(new)
        # before the shell's warnings, whose line is the last the operator reads
        warnings = variables.emptied(diff) + variables.unused(text, old.path) + warnings
        return {**_applied(rt, source, actor, diff, symbols, sha, version),
                "warnings": warnings, "running": bool(peers)}


def _agreed_by(rt, peers, text: str, caller_env) -> dict:
    """Propose ``text`` to the running processes; every one must accept it."""
    cid = configsync.propose(rt, text)
    try:
        answers, silent = configsync.collect(rt, cid, peers)
    finally:
        configsync.withdraw(rt, cid)
    errors: dict[str, list[str]] = {}
    for ident, a in answers.items():
        for e in a.get("errors") or []:
            errors.setdefault(e, []).append(ident)
    if errors or silent:
        lines = [e if len(who) == len(peers) else f"{e} [in {', '.join(who)}]"
                 for e, who in errors.items()]
        lines += [f"{ident} did not answer within {configsync.ANSWER_TIMEOUT_S:.0f} s; "
                  f"nothing was reloaded" for ident in silent]
        lines += configsync.hints(list(errors), caller_env or {})
        return {"ok": False, "errors": lines, "status": 422 if errors else 504}
    first = answers[sorted(answers)[0]]
    symbols = [SymbolSpec(s, dt.date.fromisoformat(since), active, tuple(tfs))
               for s, since, active, tfs in first["symbols"]]
    return {"ok": True, "diff": first["diff"], "symbols": symbols,
            "warnings": configsync.shell_warnings(text, cid, answers, caller_env)}


def dry_run(rt, peers, text: str, caller_env) -> dict:
    """What the running processes say of ``text``, nothing applied."""
    res = _agreed_by(rt, peers, text, caller_env)
    if res["ok"]:
        res["warnings"] = (variables.emptied(res["diff"]) + variables.unused(text, rt.config.path)
                           + res["warnings"])
    return res


def preview(rt, caller_env=None) -> dict:
    """What a reload of the file would do, nothing applied: ``{"ok", "diff",
    "sha256"}`` or ``{"ok": False, "errors"}``; judged by the running
    processes when there are any, else here."""
    old = running_config(rt)
    try:
        text = _file_text(old.path)
        peers = configsync.live(rt, old.path)
        if peers:
            res = dry_run(rt, peers, text, caller_env)
        else:
            res = {"ok": True, "diff": diff_configs(old, load_config(old.path, text=text))}
    except ConfigError as e:
        return {"ok": False, "errors": e.errors}
    if res["ok"]:
        res["sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return res


def _refuse(rt, source, actor, errors, diff, *, status: int = 422,
            published: bool = False) -> dict:
    _record(rt, source, actor, None, published, "\n".join(errors), diff)
    return {"ok": False, "errors": errors, "status": status, "diff": diff}


def _applied(rt, source, actor, diff, symbols, sha, version) -> dict:
    backfill_run = None
    with rt.conn() as conn:
        sync = store.sync_symbols(conn, symbols)
    # Without a published baseline (no `appliance up`, nothing reloaded yet) the
    # diff compares the file with itself; the symbols table knows better.
    for key, syms in (("symbols_added", sync["added"]), ("symbols_removed", sync["removed"])):
        diff[key] += [s for s in syms if s not in diff[key]]
    # new symbols, an earlier `since`, a resolution added (timeframes: [1m, 1d]),
    # a resolution's history.start moved earlier (its symbols)
    earlier = {tf for tf, c in diff.get("history_start_changed", {}).items()
               if c["new"] < c["old"]}
    added = sorted(set(diff["symbols_added"]) | set(sync["added"]) |
                   {s for s, c in diff.get("symbols_since_changed", {}).items()
                    if c["new"] < c["old"]} |
                   {s for s, c in diff.get("symbols_timeframes_changed", {}).items()
                    if set(c["new"]) - set(c["old"])} |
                   {s.symbol for s in symbols if s.active and earlier & set(s.timeframes)})
    if "provider.name" in diff["changed"]:
        # away from demo: the demo history is replaced by the vendor's (demodata)
        added = _with_demo_replacement(rt, diff["changed"]["provider.name"]["new"],
                                       [s.symbol for s in symbols if s.active], added)
    if added:
        try:
            backfill_run = enqueue(rt, "backfill", {"symbols": added}, trigger="reload")
        except Exception as e:  # noqa: BLE001 - the reload itself succeeded
            log.warning("could not queue the backfill of added symbols: %s", e)
    since = configsync.mark_restart_required(rt) if diff["restart_required"] else None
    with rt.conn() as conn:  # every process accepted it: jobs load it again
        resolved = alerts.resolve_now(conn, "config_invalid")
    alerts.announce(rt, "resolved", resolved)
    _record(rt, source, actor, sha, True, None, diff)
    summary = ("no changes" if diff_is_empty(diff) else
               f"+{len(diff['symbols_added'])}/-{len(diff['symbols_removed'])} symbols, "
               f"{len(diff['changed'])} setting(s) changed")
    if diff["restart_required"]:
        summary += f"; restart required for {', '.join(diff['restart_required'])}"
    with rt.conn() as conn:
        store.add_event(conn, "warning" if since else "info", "reload",
                        f"config reloaded from {source}: {summary}",
                        {"sha256": sha, "version": version,
                         "symbols_removed_keep_data": diff["symbols_removed"],
                         "restart_required": diff["restart_required"]})
    return {"ok": True, "diff": diff, "sha256": sha, "version": version,
            "backfill_run_id": backfill_run, "restart_required_since": since}


def _with_demo_replacement(rt, provider: str, active: list[str], added: list[str]) -> list[str]:
    """``added`` and the symbols still holding demo bars that the new real
    vendor replaces (``demodata.symbols_to_replace``): one backfill does both."""
    with rt.conn() as conn:
        return sorted(set(added) | set(demodata.symbols_to_replace(conn, provider, active)))


def _record(rt, source, actor, sha, ok, error, diff) -> None:
    try:
        with rt.conn() as conn:
            store.record_config_reload(conn, source=source, actor=actor, sha256=sha, ok=ok,
                                       error=error, diff=diff)
            if not ok:
                store.add_event(conn, "error", "reload", f"config reload from {source} refused: "
                                + (error or "").splitlines()[0], {"errors": error})
    except Exception:  # recording must not turn a refusal into a crash
        log.exception("could not record the reload attempt")


def record_refused_from_broken_file(path, errors: list[str], *, source: str,
                                   actor: str | None = None) -> bool:
    """Record a refused reload when the file cannot even be loaded (so there is
    no config to find the database with). The endpoints are salvaged from the
    broken file when its connection settings are readable, else from the
    defaults (the embedded servers in ./var beside it). Best effort: returns
    False when the database cannot be reached; never starts a server."""
    try:
        cfg = salvage_connection_settings(path)
        ep = services.resolve(cfg, start=False)
        rt = Runtime(cfg, endpoints=ep, pool_size=1)
        try:
            _record(rt, source, actor, None, False, "\n".join(errors), None)
        finally:
            rt.close()
        return True
    except Exception as e:  # noqa: BLE001 - recording is a courtesy here
        log.info("could not record the refused reload: %s", e)
        return False
