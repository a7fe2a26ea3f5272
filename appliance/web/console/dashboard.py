"""The dashboard: health badge, cards and open alerts, polled for changes."""
from __future__ import annotations

import hashlib
import logging

from flask import Blueprint, Response, redirect, render_template, request, url_for

from appliance import store
from appliance.alerts import health as health_mod
from appliance.alerts import rules as alerts
from appliance.web.console.common import _actor, admin_post, is_htmx, rt

log = logging.getLogger("appliance.console")

bp = Blueprint("dashboard", __name__)


def badge_level(h: dict, cfg) -> tuple[str, str, list[str]]:
    """(css class, text, reasons) from the health snapshot: the text is
    /health's status, the colour its severity (red for anything critical)."""
    text = {"healthy": "Healthy", "degraded": "Degraded", "unhealthy": "Unhealthy"}[h.status]
    cls = {"critical": "unhealthy", "warning": "degraded", "ok": "healthy"}[h.severity]
    if h.severity == "critical" and h.status == "degraded":
        text = "Degraded · critical"
    return cls, text, list(h.reasons)


def dashboard_data() -> dict:
    r = rt()
    cfg = r.config
    h = health_mod.compute(r)
    sb = health_mod.status_body(r, h)
    cls, text, reasons = badge_level(h, cfg)
    return {"h": h, "sb": sb, "snap": h.db, "cfg": cfg, "badge_class": cls,
            "badge_text": text, "reasons": reasons,
            "alerts": sb.get("alerts") or [],
            # firing, not open yet: a dead worker shows before worker_down opens
            "pending": h.db.get("pending_alerts", []),
            "configured_symbols": len(cfg.active_symbols)}


#: dashboard panels, in page order: id -> partial template
PANELS = {
    "dash-banner": "partials/demo_banner.html",
    "dash-badge": "partials/dash_badge.html",
    "card-symbols": "partials/card_symbols.html",
    "card-records": "partials/card_records.html",
    "card-validation": "partials/card_validation.html",
    "card-latest": "partials/card_latest.html",
    "card-gaps": "partials/card_gaps.html",
    "card-scheduler": "partials/card_scheduler.html",
    "card-backup": "partials/card_backup.html",
    "card-restore": "partials/card_restore.html",
    "dash-alerts": "partials/dash_alerts.html",
}


def _digest(html: str) -> str:
    return hashlib.blake2s(html.encode("utf-8"), digest_size=4).hexdigest()


def render_panels(data: dict) -> dict[str, str]:
    return {pid: render_template(tpl, oob=False, **data) for pid, tpl in PANELS.items()}


def poll_url(digests: dict[str, str], refresh: int) -> str:
    return url_for("console.dashboard.dashboard_update",
                   d=".".join(digests[p] for p in PANELS), r=str(refresh))


@bp.get("/")
@bp.get("/dashboard")
def dashboard():
    data = dashboard_data()
    panels = render_panels(data)
    digests = {k: _digest(v) for k, v in panels.items()}
    refresh = int(data["cfg"]["dashboard"]["refresh_seconds"])
    return render_template("dashboard.html", panels=panels,
                           poll_url=poll_url(digests, refresh), **data)


@bp.get("/dashboard/update")
def dashboard_update():
    """The panels that changed since the digests in ``d``, as out-of-band swaps
    (and the poller itself with the new digests); 204 when nothing changed."""
    data = dashboard_data()
    panels = render_panels(data)
    digests = {k: _digest(v) for k, v in panels.items()}
    refresh = int(data["cfg"]["dashboard"]["refresh_seconds"])
    old = (request.args.get("d") or "").split(".")
    old_refresh = request.args.get("r")
    changed = [p for i, p in enumerate(PANELS)
               if i >= len(old) or old[i] != digests[p]]
    if not changed and old_refresh == str(refresh):
        return Response(status=204)
    if not is_htmx():
        return redirect(url_for("console.dashboard.dashboard"))
    # the same partials, marked for an out-of-band swap (each takes ``oob``)
    html = [render_template(PANELS[p], oob=True, **data) for p in changed]
    html.append(render_template("partials/dash_poller.html", oob=True,
                                poll_url=poll_url(digests, refresh), refresh_seconds=refresh))
    if old_refresh != str(refresh):  # the header says how often, and which provider
        html.append(render_template("partials/dash_refresh.html", oob=True, **data))
    return "\n".join(html)


@bp.post("/alerts/<int:alert_id>/ack")
@admin_post
def ack_alert(alert_id: int):
    with rt().conn() as conn:
        if alerts.acknowledge(conn, alert_id, _actor()):
            store.add_event(conn, "info", "alert", f"alert {alert_id} acknowledged",
                            {"alert_id": alert_id, "by": _actor()})
    if is_htmx():
        data = dashboard_data()
        return render_template("partials/dash_alerts.html", oob=False, **data)
    return redirect(url_for("console.dashboard.dashboard"), code=303)
