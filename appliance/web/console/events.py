"""The event log."""
from __future__ import annotations

import logging

from flask import Blueprint, request

from appliance import store
from appliance.web.console.common import EVENT_LEVELS, page, rt

log = logging.getLogger("appliance.console")

bp = Blueprint("events", __name__)
@bp.get("/events")
def events_page():
    level = request.args.get("level") if request.args.get("level") in EVENT_LEVELS else ""
    kind = (request.args.get("kind") or "")[:40]
    q = (request.args.get("q") or "")[:200]
    with rt().read_conn() as conn:
        rows = store.recent_events(conn, level=level or None, kind=kind or None, q=q or None,
                                   limit=300)
        kinds = store.event_kinds(conn)
    return page("events.html", "partials/events_table.html", "events-table", rows=rows,
                args={"level": level, "kind": kind, "q": q}, kinds=kinds, levels=EVENT_LEVELS)
