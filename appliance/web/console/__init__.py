"""The HTMX ops console: server-rendered pages, one partial per hx-target, one
blueprint per feature (dashboard, symbols, jobs, backups, config, gaps,
events, auth) under the ``console`` blueprint, which carries what they share:
security headers, the template context and the "service unavailable" page.

Every page works without JavaScript (plain links, GET forms, POST forms that
redirect); htmx only enhances: panels poll for changes, filters swap the
table in place, buttons swap their result in. An htmx request
(``request.htmx``, from htmx-flask) aimed at a page's partial gets the
partial alone, any other request the full page (which includes it).

Reading needs no login unless ``server.login_for_read`` is true or
``server.read_token`` is set (checked app-wide by ``auth.gate``). Everything
that changes something is a POST that needs an admin login and the session's
CSRF token (``common.admin_post``).
"""
from __future__ import annotations

from flask import Blueprint
from htmx_flask import Htmx

from appliance.web.console import (
    backups,
    common,
    configuration,
    dashboard,
    events,
    gaps,
    jobs,
    login,
    symbols,
)

bp = Blueprint("console", __name__)
bp.before_request(common._nonce)  # noqa: SLF001
bp.after_request(common._headers)  # noqa: SLF001
bp.context_processor(common._context)  # noqa: SLF001
for _exc in common.UNAVAILABLE:
    bp.register_error_handler(_exc, common._unavailable)  # noqa: SLF001
for _feature in (dashboard, symbols, jobs, backups, configuration, gaps, events, login):
    bp.register_blueprint(_feature.bp)

#: what templates use besides the context
FILTERS = {"age": common.f_age, "duration": common.f_duration, "bytes": common.f_bytes,
           "num": common.f_num, "pct": common.f_pct, "ts": common.f_ts,
           "compactjson": common.f_json}
PANELS = dashboard.PANELS


def register(app) -> None:
    Htmx(app)
    for name, fn in FILTERS.items():
        app.add_template_filter(fn, name)
    app.jinja_env.globals["quality_class"] = common.quality_class
    app.jinja_env.globals["sort_url"] = symbols.sort_url
    app.register_blueprint(bp)
