"""Checking what a request gives before any query: unknown query parameters
and body fields are refused, dates, booleans, integers and symbols parsed
strictly, each failure a ``BadRequest`` that says which value was wrong."""
from __future__ import annotations

import datetime as dt
import json
import re

from flask import current_app, request

from appliance import store
from appliance.config.loader import SYMBOL_RE
from appliance.core.adjustment import BadMode, resolve
from appliance.web.errors import BadRequest

DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def query_args(allowed: set[str]) -> dict:
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        allowed_txt = ", ".join(sorted(allowed)) or "none"
        raise BadRequest(f"unknown query parameter(s): {', '.join(unknown)[:200]}; allowed: "
                         f"{allowed_txt}", "unknown_field")
    for k in allowed:
        if len(request.args.getlist(k)) > 1:
            raise BadRequest(f"query parameter {k} is given more than once", "bad_request")
    return request.args


def date_arg(args, name: str, default: dt.date | None) -> dt.date | None:
    v = args.get(name)
    if v is None:
        return default
    try:
        if not DATE_RE.match(v):
            raise ValueError
        return dt.date.fromisoformat(v)
    except ValueError:
        raise BadRequest(f"{name}={v[:40]!r} is not a date (YYYY-MM-DD)", "bad_date") from None


def bool_arg(args, name: str, default):
    v = args.get(name)
    if v is None:
        return default
    if v == "true":
        return True
    if v == "false":
        return False
    raise BadRequest(f"{name}={v[:40]!r} must be true or false", "bad_boolean")


def adjust_arg(args) -> str:
    """The adjustment mode: ``adjust`` (none, splits or total) or the older
    ``adjusted`` (true = splits, false = none); both given must agree."""
    adjusted = bool_arg(args, "adjusted", None)
    try:
        return resolve(args.get("adjust"), adjusted)
    except BadMode as e:
        raise BadRequest(str(e), "bad_adjust") from None


def int_arg(args, name: str, default: int | None, lo: int, hi: int) -> int | None:
    v = args.get(name)
    if v is None:
        return default
    try:
        if not re.fullmatch(r"[+-]?[0-9]{1,19}", v):
            raise ValueError
        n = int(v)
    except ValueError:
        raise BadRequest(f"{name}={v[:40]!r} is not an integer", "bad_integer") from None
    if not lo <= n <= hi:
        raise BadRequest(f"{name}={n} must be between {lo} and {hi}", "out_of_range")
    return n


def symbol_arg(symbol) -> str:
    if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol):
        shown = symbol[:40] if isinstance(symbol, str) else symbol
        raise BadRequest(f"{shown!r} is not a valid symbol (an upper-case letter, then up to 14 "
                         f"upper-case letters, digits, '.' or '-')", "bad_symbol")
    return symbol


def json_body(allowed: set[str]) -> dict:
    raw = request.get_data(cache=True)
    if not raw or not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("the request body is not valid JSON", "bad_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", "bad_json")
    unknown = sorted(set(body) - allowed)
    if unknown:
        allowed_txt = ", ".join(sorted(allowed)) or "none"
        raise BadRequest(f"unknown field(s): {', '.join(map(str, unknown))[:200]}; allowed: "
                         f"{allowed_txt}", "unknown_field")
    return body


def known_symbol(conn, symbol: str) -> bool:
    """Whether ``symbol`` is configured in the running config or has stored data."""
    if any(s.symbol == symbol for s in current_app.config["RUNTIME"].config.symbols):
        return True
    return store.symbol_known(conn, symbol)
