"""The running config, and Check and Reload of appliance.yaml."""
from __future__ import annotations

import datetime as dt
import logging

import yaml
from flask import Blueprint, Response, render_template

from appliance import store
from appliance.config import diff as diff_mod
from appliance.jobs import reload as reload_mod
from appliance.web import auth
from appliance.web.console.common import _actor, admin_post, f_json, is_htmx, rt

log = logging.getLogger("appliance.console")

bp = Blueprint("config", __name__)


def _config_ctx() -> dict:
    r = rt()
    cfg = r.config
    with r.conn() as conn:
        reloads = store.config_reloads(conn, limit=10)
    text = yaml.safe_dump(cfg.masked(), sort_keys=False, default_flow_style=False,
                          allow_unicode=True)
    keys = auth.key_stats(r)
    api_keys = [{"name": k["name"], "scopes": list(k.get("scopes") or ["read"]),
                 "requests_per_minute": k.get("requests_per_minute"), **keys.get(k["name"], {})}
                for k in cfg["server"].get("api_keys") or ()]
    for k in api_keys:
        if k.get("last_used"):
            k["last_used"] = dt.datetime.fromtimestamp(k["last_used"], dt.UTC)
    return {"cfg": cfg, "yaml_text": text, "reloads": reloads, "version": r.config_version(),
            "api_keys": api_keys, "restart_required": r.restart_required()}


@bp.get("/config")
def config_page():
    return render_template("config.html", **_config_ctx())


def _diff_lines(diff: dict) -> list[tuple[str, str]]:
    """(css class, text) lines of a config diff; values are already masked."""
    out = []
    for s in diff.get("symbols_added") or []:
        out.append(("add", f"+ symbols: {s}"))
    for s in diff.get("symbols_removed") or []:
        out.append(("del", f"- symbols: {s} (its data is kept)"))
    for s, ch in (diff.get("symbols_since_changed") or {}).items():
        out.append(("del", f"- {s}.since: {ch.get('old')}"))
        out.append(("add", f"+ {s}.since: {ch.get('new')}"))
    for s, ch in (diff.get("symbols_timeframes_changed") or {}).items():
        out.append(("del", f"- {s}.timeframes: {', '.join(ch.get('old') or [])}"))
        out.append(("add", f"+ {s}.timeframes: {', '.join(ch.get('new') or [])}"))
    for k, ch in (diff.get("changed") or {}).items():
        out.append(("hunk", f"@ {k}"))
        out.append(("del", f"- {k}: {f_json(ch.get('old'))}"))
        out.append(("add", f"+ {k}: {f_json(ch.get('new'))}"))
    for k in diff.get("restart_required") or []:
        out.append(("meta", f"! {k} needs a restart: its old value stays in force until then"))
    return out


@bp.post("/config/check")
@admin_post
def config_check():
    res = reload_mod.preview(rt())  # as every running process sees it; nothing applied
    if not res["ok"]:
        ctx = {"ok": False, "errors": list(res["errors"]), "action": "check"}
    else:
        ctx = {"ok": True, "action": "check", "sha256": res["sha256"],
               "diff_lines": _diff_lines(res["diff"]), "restart": res["diff"]["restart_required"],
               "notes": diff_mod.notes(res["diff"])}
    if is_htmx():
        return render_template("partials/config_result.html", res=ctx)
    return render_template("config.html", result=ctx, **_config_ctx()), (200 if ctx["ok"] else 422)


@bp.post("/config/reload")
@admin_post
def config_reload():
    res = reload_mod.reload_config(rt(), source="console", actor=_actor())
    if res["ok"]:
        ctx = {"ok": True, "action": "reload", "sha256": res["sha256"],
               "diff_lines": _diff_lines(res["diff"]), "version": res["version"],
               "backfill_run_id": res.get("backfill_run_id"),
               "restart": res["diff"]["restart_required"], "notes": diff_mod.notes(res["diff"])}
    else:
        ctx = {"ok": False, "action": "reload", "errors": list(res["errors"]),
               "diff_lines": _diff_lines(res.get("diff") or {})}
    if is_htmx():
        resp = Response(render_template("partials/config_result.html", res=ctx))
        if res["ok"]:
            resp.headers["HX-Trigger"] = "config-reloaded"
        return resp
    return render_template("config.html", result=ctx, **_config_ctx()), \
        (200 if res["ok"] else res.get("status", 422))


@bp.get("/config/running")
def config_running():
    """The running-config panel (refreshed after a reload)."""
    return render_template("partials/config_running.html", **_config_ctx())
