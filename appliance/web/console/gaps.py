"""Flagged gaps and missing sessions."""
from __future__ import annotations

import logging

from flask import Blueprint, request

from appliance import store
from appliance.config.loader import SYMBOL_RE
from appliance.core.quality import GAP_KINDS
from appliance.web.bars import exchange_tz
from appliance.web.console.common import _date_arg, _float_arg, page, rt

log = logging.getLogger("appliance.console")

bp = Blueprint("gaps", __name__)
@bp.get("/gaps")
def gaps_page():
    kind = request.args.get("kind") if request.args.get("kind") in GAP_KINDS else ""
    sym = (request.args.get("symbol") or "").strip().upper()
    sym = sym if SYMBOL_RE.match(sym) else ""
    since, until = _date_arg("since"), _date_arg("until")
    min_jump = _float_arg("min_jump")
    with rt().read_conn() as conn:
        rows = store.gaps(conn, symbol=sym or None, kind=kind or None, since=since, until=until,
                          limit=1000, tz=exchange_tz())
    if min_jump is not None:
        rows = [r for r in rows if r["jump_pct"] is not None and abs(r["jump_pct"]) >= min_jump]
    args = {"kind": kind, "symbol": sym, "since": since.isoformat() if since else "",
            "until": until.isoformat() if until else "",
            "min_jump": "" if min_jump is None else f"{min_jump:g}"}
    counts = {k: sum(1 for r in rows if r["kind"] == k) for k in GAP_KINDS}
    unexplained = sum(1 for r in rows if r["kind"] == "jump")
    return page("gaps.html", "partials/gaps_table.html", "gaps-table", rows=rows, args=args,
                counts=counts, unexplained=unexplained, kinds=GAP_KINDS)
