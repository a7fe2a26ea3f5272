"""Reloading appliance.yaml without a restart.

``reload_config`` validates the whole file with the same function as
``check-config``; only a fully valid config that needs no restart is swapped
in (published through Redis to every process). Every attempt is recorded in
``config_reloads`` with its diff or its errors. Effects: the symbols table
follows the config (removed symbols keep their data), added symbols are
backfilled right away, and the scheduler re-registers changed schedules when
it sees the new version.
"""
from __future__ import annotations

import logging
import threading

from . import store
from .config import Config, load_config
from .configdiff import diff_configs, diff_is_empty
from .errors import ConfigError

log = logging.getLogger("appliance.reload")
_lock = threading.Lock()


def running_config(rt) -> Config:
    """The config every process runs now (the last one accepted)."""
    rt.adopt_running_config()
    return rt.config


def reload_config(rt, *, source: str, actor: str | None = None,
                  text: str | bytes | None = None) -> dict:
    """Returns ``{"ok": True, "diff", "sha256", "version", "backfill_run_id"}`` or
    ``{"ok": False, "errors": [...], "status": 422|409}``. Never raises for a bad file."""
    with _lock:
        old = running_config(rt)
        try:
            new = load_config(old.path, text=text)
        except ConfigError as e:
            _record(rt, source, actor, None, False, "\n".join(e.errors), None)
            return {"ok": False, "errors": e.errors, "status": 422}
        diff = diff_configs(old, new)
        if diff["restart_required"]:
            msg = (f"{old.path}: changing {', '.join(diff['restart_required'])} needs a restart "
                   f"of the appliance (systemctl restart market-data-api.target, or stop and "
                   f"start 'appliance up'); nothing was reloaded")
            _record(rt, source, actor, new.sha256, False, msg, diff)
            return {"ok": False, "errors": [msg], "status": 409, "diff": diff}
        version = rt.publish_config(new)
        backfill_run = None
        with rt.conn() as conn:
            sync = store.sync_symbols(conn, new.symbols)
        # Without a published baseline (no `appliance up`, nothing reloaded yet) the
        # diff above compares the file with itself; the symbols table knows better.
        for key, syms in (("symbols_added", sync["added"]), ("symbols_removed", sync["removed"])):
            diff[key] += [s for s in syms if s not in diff[key]]
        # new symbols, an earlier `since`, a resolution added (timeframes: [1m, 1d])
        added = sorted(set(diff["symbols_added"]) | set(sync["added"]) |
                       set(diff.get("symbols_since_changed", {})) |
                       {s for s, c in diff.get("symbols_timeframes_changed", {}).items()
                        if set(c["new"]) - set(c["old"])})
        # --- hook (demodata.py): provider.name changed, the demo history is replaced
        if "provider.name" in diff["changed"]:
            added = _with_demo_replacement(rt, new, added)
        if added:
            try:
                from .queue import enqueue
                backfill_run = enqueue(rt, "backfill", {"symbols": added}, trigger="reload")
            except Exception as e:  # noqa: BLE001 - the reload itself succeeded
                log.warning("could not queue the backfill of added symbols: %s", e)
        _record(rt, source, actor, new.sha256, True, None, diff)
        summary = ("no changes" if diff_is_empty(diff) else
                   f"+{len(diff['symbols_added'])}/-{len(diff['symbols_removed'])} symbols, "
                   f"{len(diff['changed'])} setting(s) changed")
        with rt.conn() as conn:
            store.add_event(conn, "info", "reload", f"config reloaded from {source}: {summary}",
                            {"sha256": new.sha256, "version": version,
                             "symbols_removed_keep_data": diff["symbols_removed"]})
        return {"ok": True, "diff": diff, "sha256": new.sha256, "version": version,
                "backfill_run_id": backfill_run}


def _with_demo_replacement(rt, new: Config, added: list[str]) -> list[str]:
    """``added`` and the symbols still holding demo bars that ``new``'s real
    vendor replaces (``demodata.symbols_to_replace``): one backfill does both."""
    from . import demodata
    with rt.conn() as conn:
        return sorted(set(added) | set(demodata.symbols_to_replace(conn, new)))


def _record(rt, source, actor, sha, ok, error, diff) -> None:
    try:
        with rt.conn() as conn:
            store.record_config_reload(conn, source=source, actor=actor, sha256=sha, ok=ok,
                                       error=error, diff=diff)
            if not ok:
                store.add_event(conn, "error", "reload", f"config reload from {source} refused: "
                                + (error or "").splitlines()[0], {"errors": error})
    except Exception:  # noqa: BLE001 - recording must not turn a refusal into a crash
        log.exception("could not record the reload attempt")


def record_refused_from_broken_file(path, errors: list[str], *, source: str,
                                   actor: str | None = None) -> bool:
    """Record a refused reload when the file cannot even be loaded (so there is
    no config to find the database with). The endpoints are salvaged from the
    broken file when its connection settings are readable, else from the
    defaults (the embedded servers in ./var beside it). Best effort: returns
    False when the database cannot be reached; never starts a server."""
    from .config import salvage_connection_settings
    from .runtime import Runtime
    try:
        cfg = salvage_connection_settings(path)
        from . import services
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
