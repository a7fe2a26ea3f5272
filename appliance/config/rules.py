"""The config checks JSON Schema cannot express (cron syntax, dates not in
the future, duplicate symbols, thresholds in the right order, credentials for
the chosen vendor), and the clear messages for ``history.start`` and for a
key in the wrong section."""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from croniter import croniter

from appliance.jobs.registry import is_off

#: a parsed config document (YAML mapping) and a path in it
Doc = dict[str, Any]
ConfigPath = tuple[str | int, ...]


class Reporter(Protocol):
    """Where a check reports a problem."""

    def err(self, path: ConfigPath, message: str) -> None: ...


class Ctx(Reporter, Protocol):
    """``config.loader``'s context: also reports a path only once."""

    def err_once(self, path: ConfigPath, message: str) -> None: ...


def history_start_errors(e: Any, ctx: Ctx, validator: Any,
                         friendly: Callable[..., str]) -> None:
    """``history.start`` is a date or one date per resolution: its schema
    errors reported against the form used."""
    path = ("history", "start")
    sub = validator.evolve(schema=e.schema["oneOf"][0 if isinstance(e.instance, str)
                                                      else 1])
    inner = list(sub.iter_errors(e.instance)) if isinstance(e.instance, (str, dict)) \
        else []
    for se in inner:
        if se.validator == "additionalProperties":
            for extra in sorted(k for k in e.instance if k not in ("1d", "1m")):
                ctx.err(path + (extra,), f"unknown key {extra!r}: history.start is a "
                                         f"date or a mapping of 1d/1m to dates")
        else:
            ctx.err(path + tuple(se.absolute_path), friendly(se))
    if not inner:
        ctx.err(path, "expected a date (YYYY-MM-DD) or {1d: date, 1m: date}")


#: Tokens that guard the appliance: shorter ones are refused.
TOKEN_PATHS = (("server", "admin_token"), ("server", "read_token"), ("server", "metrics_token"))
MIN_TOKEN_LENGTH = 24


def semantic_checks(d: Doc, ctx: Ctx, base: Path) -> None:
    """Checks JSON Schema cannot express; then paths made absolute (relative
    ones are relative to the config file's folder ``base``). Each check runs
    even when the schema found errors elsewhere, so that one run reports every
    problem; a check whose input the schema already refused (a wrong type)
    is skipped, as the schema's message says it."""
    once = _Once(ctx)
    for check in (_cron_checks, _date_checks, _symbol_checks, _value_checks, _token_checks,
                  _provider_checks, _tls_checks, _universe_checks):
        try:
            check(d, once)
        except (TypeError, KeyError, AttributeError, ValueError, IndexError):
            continue
    try:
        _absolutize_paths(d, ctx, base)
    except (TypeError, KeyError, AttributeError, ValueError):
        pass


class _Once:
    """The checks' view of the context: a path the schema already reported
    is not reported again."""

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx

    def err(self, path: ConfigPath, message: str) -> None:
        self._ctx.err_once(path, message)


def _token_checks(d: Doc, ctx: Reporter) -> None:
    """The same rule for check-config, reload, up and the units: a guessable
    token is refused (its value is never shown)."""
    for p in TOKEN_PATHS:
        v = d[p[0]].get(p[1]) or ""
        if isinstance(v, str) and v and len(v) < MIN_TOKEN_LENGTH:
            ctx.err(p, f"the token is {len(v)} characters; at least {MIN_TOKEN_LENGTH} are "
                       f"required (e.g. openssl rand -hex 32)")


def _cron_checks(d: Doc, ctx: Reporter) -> None:

    for job, expr in d["schedules"].items():
        if job == "alerts" and is_off(expr):
            ctx.err(("schedules", job), ALERTS_ALWAYS)
            continue
        if not isinstance(expr, str) or is_off(expr):
            continue
        fields = expr.split()
        if len(fields) != 5:
            ctx.err(("schedules", job), f"invalid cron expression {expr!r}: {len(fields)} "
                                        f"field(s), expected five: {CRON_FIELDS}, in UTC"
                                        + (", or off" if len(fields) == 1 and job != "alerts"
                                           else ""))
        elif not croniter.is_valid(expr):
            ctx.err(("schedules", job), f"invalid cron expression {expr!r}: {_bad_field(fields)} "
                                        f"(five fields: {CRON_FIELDS}, in UTC)")


CRON_FIELDS = "minute hour day-of-month month day-of-week"
ALERTS_ALWAYS = ("the alerts job cannot be turned off: it raises every other alert (give it a "
                 "cron expression, e.g. '* * * * *')")


def not_a_schedule(path: tuple[object, ...], value: object) -> str:
    """The message for a ``schedules`` value that is neither a cron string nor off."""
    alerts = path == ("schedules", "alerts")
    if alerts and value is False:
        return ALERTS_ALWAYS
    shown = ("true (YAML reads on and yes so)" if value is True
             else "an empty value" if value is None else repr(value))
    return (f"{shown} is not a schedule: expected a five-field cron expression "
            f"({CRON_FIELDS}, in UTC) in quotes" + ("" if alerts else ", or off"))


_CRON_RANGES = (("minute", "0-59"), ("hour", "0-23"), ("day-of-month", "1-31"),
                ("month", "1-12 or jan-dec"), ("day-of-week", "0-7 or sun-sat"))


def _bad_field(fields: list[str]) -> str:
    """Which field of an invalid five-field cron expression is wrong."""
    bad = [f"the {name} field {fields[i]!r} is not valid ({rng})"
           for i, (name, rng) in enumerate(_CRON_RANGES)
           if not croniter.is_valid(" ".join(f if j == i else "*" for j, f in enumerate(fields)))]
    return "; ".join(bad) or "its fields do not combine into any time"


def _check_date(ctx: Reporter, path: ConfigPath, value: object) -> dt.date | None:
    if not isinstance(value, str):
        return None
    try:
        d_ = dt.date.fromisoformat(value)
    except ValueError:
        ctx.err(path, f"{value!r} is not a valid date (YYYY-MM-DD)")
        return None
    if d_ > dt.date.today():
        ctx.err(path, f"{value} is in the future")
    if d_.year < 1900:
        ctx.err(path, f"{value} is before 1900")
    return d_


def _date_checks(d: Doc, ctx: Reporter) -> None:
    start = d["history"]["start"]
    if isinstance(start, str):
        _check_date(ctx, ("history", "start"), start)
    elif isinstance(start, dict):
        for tf, value in start.items():
            _check_date(ctx, ("history", "start", tf), value)


def _universe_checks(d: Doc, ctx: Reporter) -> None:
    """The universe's patterns compile; its starts are dates; it needs the
    flat files (the whole market comes from them) with their credentials."""
    u = d["universe"]
    for key in ("include", "exclude"):
        for i, pat in enumerate(u.get(key) or ()):
            if pat.startswith("glob:"):  # a shell pattern: every one is valid
                continue
            try:
                re.compile(pat)
            except re.error as e:
                ctx.err(("universe", key, i), f"{pat!r} is not a regular expression: {e}")
    for key in ("daily_start", "minute_start"):
        if u.get(key):
            _check_date(ctx, ("universe", key), u[key])
    ff = d["provider"]["polygon"]["flat_files"]
    if u.get("enabled") and not ff.get("enabled"):
        ctx.err(("universe", "enabled"), "the universe comes from the vendor's flat files: set "
                                         "provider.polygon.flat_files.enabled: true")
    if ff.get("enabled"):
        for key, var in (("access_key_id", "POLYGON_S3_ACCESS_KEY_ID"),
                         ("secret_access_key", "POLYGON_S3_SECRET_ACCESS_KEY")):
            if not ff.get(key):
                ctx.err(("provider", "polygon", "flat_files", key),
                        f"flat files are enabled but {key} is empty: set {var} (or {var}_FILE) "
                        f"in the appliance's environment (appliance.env beside the config); "
                        f"it is the S3 key from the vendor's dashboard, not the REST API key")


def _symbol_checks(d: Doc, ctx: Reporter) -> None:
    if not d["symbols"] and not d["universe"].get("enabled"):
        ctx.err(("symbols",), "[] should be non-empty: list at least one symbol, or turn on "
                              "the universe (universe.enabled, from the vendor's flat files)")
    seen: dict[str, int] = {}
    for i, item in enumerate(d["symbols"]):
        sym = item if isinstance(item, str) else item.get("symbol") \
            if isinstance(item, dict) else None
        if not isinstance(sym, str):
            continue
        if sym in seen:
            ctx.err(("symbols", i), f"duplicate symbol {sym!r} (first at $.symbols[{seen[sym]}])")
        else:
            seen[sym] = i
        if isinstance(item, dict) and item.get("since"):
            _check_date(ctx, ("symbols", i, "since"), item["since"])


def _value_checks(d: Doc, ctx: Reporter) -> None:
    a = d["alerts"]
    if a["validation_rate_warn_pct"] <= a["validation_rate_critical_pct"]:
        ctx.err(("alerts", "validation_rate_warn_pct"),
                f"validation_rate_warn_pct ({a['validation_rate_warn_pct']}) must be above "
                f"validation_rate_critical_pct ({a['validation_rate_critical_pct']})")
    g = d["quality"]["grid"]
    if g["green"] <= g["yellow"]:
        ctx.err(("quality", "grid", "green"),
                f"grid.green ({g['green']}) must be above grid.yellow ({g['yellow']})")
    s = d["spot_check"]
    if s["match_pct"] > s["mismatch_pct"]:
        ctx.err(("spot_check", "match_pct"), "match_pct must not be above mismatch_pct")
    host, _, port = d["server"]["bind"].rpartition(":")
    if not 0 < int(port) < 65536:
        ctx.err(("server", "bind"), f"port {port} out of range 1-65535")
    for url_key in ("database", "redis"):
        url = d[url_key]["url"]
        schemes = (("postgresql://", "postgres://") if url_key == "database"
                   else ("redis://", "rediss://", "unix://"))
        if url and not url.startswith(schemes):
            ctx.err((url_key, "url"), f"expected a URL starting with {' or '.join(schemes)}")
    read_url = d["database"]["read_url"]
    if read_url and not read_url.startswith(("postgresql://", "postgres://")):
        ctx.err(("database", "read_url"), "expected a URL starting with postgresql:// or "
                                          "postgres:// (empty: no replica)")


def _provider_checks(d: Doc, ctx: Reporter) -> None:
    prov = d["provider"]
    if prov["name"] == "polygon" and not prov["polygon"]["api_key"]:
        ctx.err(("provider", "polygon", "api_key"),
                "provider is polygon but the API key is empty: set POLYGON_API_KEY "
                "(or POLYGON_API_KEY_FILE) in the appliance's environment (appliance.env "
                "beside the config)")
    if d["spot_check"]["source"] == "tiingo" and not prov["tiingo"]["api_key"]:
        ctx.err(("provider", "tiingo", "api_key"),
                "spot_check.source is tiingo but provider.tiingo.api_key is empty")
    if d["alerts"]["email"]["smtp_host"] and not d["alerts"]["email"]["to"]:
        ctx.err(("alerts", "email", "to"), "smtp_host is set but no recipients in 'to'")
    _credential_checks(d, ctx)


def _credential_checks(d: Doc, ctx: Reporter) -> None:
    """API keys are one name and one key each; SMTP AUTH never in clear."""
    names: dict[str, int] = {}
    digests: dict[str, int] = {}
    for i, k in enumerate(d["server"].get("api_keys") or ()):
        name, digest = k.get("name"), str(k.get("sha256", "")).lower()
        if name in names:
            ctx.err(("server", "api_keys", i, "name"),
                    f"duplicate API key name {name!r} (first at $.server.api_keys[{names[name]}])")
        else:
            names[name] = i
        if digest in digests:
            ctx.err(("server", "api_keys", i, "sha256"),
                    f"the same key as $.server.api_keys[{digests[digest]}] (two names for one "
                    f"key: give each client its own, appliance api-key new NAME)")
        else:
            digests[digest] = i
    em = d["alerts"]["email"]
    if em["smtp_host"] and em["username"] and not em["starttls"] \
            and not is_loopback_host(em["smtp_host"]):
        ctx.err(("alerts", "email", "starttls"),
                "starttls is false but a username is set: the login would cross the network "
                "in clear; set starttls: true (or leave username empty)")


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (brackets allowed)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: the files a connection URL may name for TLS: PostgreSQL's (libpq's
#: parameters) and Redis's (``rediss://`` query parameters of redis-py)
PG_TLS_FILES = {"sslrootcert": "the CA certificate the server's certificate is checked against",
                "sslcert": "the client certificate", "sslkey": "the client certificate's key",
                "sslcrl": "the certificate revocation list"}
REDIS_TLS_FILES = {"ssl_ca_certs": "the CA certificate the server's certificate is checked "
                                   "against",
                   "ssl_certfile": "the client certificate",
                   "ssl_keyfile": "the client certificate's key"}
PG_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _tls_checks(d: Doc, ctx: Reporter) -> None:
    """The TLS settings in the database and Redis URLs: a known ``sslmode``,
    ``rediss://`` when Redis TLS files are named, and every certificate or
    key file they name readable by this process (else the first connection
    fails with a less clear message, or, for Redis, none at all)."""
    urls: list[tuple[tuple[str, ...], str | None]] = [(("database", "url"), d["database"]["url"]),
            (("database", "read_url"), d["database"]["read_url"]),
            (("redis", "url"), d["redis"]["url"])]
    for path, url in urls:
        if not url or "?" not in url:
            continue
        query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
        is_pg = path[0] == "database"
        files = PG_TLS_FILES if is_pg else REDIS_TLS_FILES
        if is_pg and query.get("sslmode", "prefer") not in PG_SSLMODES:
            ctx.err(path, f"sslmode={query['sslmode']} is not one of {', '.join(PG_SSLMODES)}")
        if not is_pg and url.startswith("redis://") and set(files) & set(query):
            ctx.err(path, f"{', '.join(sorted(set(files) & set(query)))} given with redis:// "
                          f"(clear text): use rediss:// for TLS")
        for key, what in files.items():
            name = query.get(key)
            if not name or (key == "sslrootcert" and name == "system"):
                continue
            problem = _unreadable(Path(name))
            if problem:
                ctx.err(path, f"{key}={name} ({what}) {problem}")


def _unreadable(p: Path) -> str | None:
    """Why this process cannot read the file ``p``, or None."""
    if not p.is_absolute():
        return "is not an absolute path"
    if not p.exists():
        return "does not exist"
    if not p.is_file():
        return "is not a file"
    if not os.access(p, os.R_OK):
        return f"is not readable by this process's user (uid {os.geteuid()})"
    return None


def _file_in_the_way(folder: Path) -> Path | None:
    """The nearest existing part of ``folder`` (itself or a parent) when it is
    not a directory: a folder cannot be made there. None when it can."""
    for part in (folder, *folder.parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def listens_beyond_loopback(server: Doc) -> bool:
    """The web server can be reached from the network: it binds an address other
    than loopback, or a reverse proxy (the TLS front) forwards to it."""
    host = server["bind"].rpartition(":")[0]
    return not is_loopback_host(host) or int(server.get("trusted_proxy_hops") or 0) > 0


def _absolutize_paths(d: Doc, ctx: Ctx, base: Path) -> None:
    """Paths: absolute, or relative to the config file's folder."""
    def absolutize(container: Doc, key: str, path: ConfigPath) -> None:
        v = container[key]
        pth = Path(v).expanduser()
        if not pth.is_absolute():
            pth = (base / pth)
        container[key] = str(pth.resolve() if pth.exists() else Path(os.path.normpath(pth)))

    absolutize(d, "data_dir", ("data_dir",))
    absolutize(d["backup"], "path", ("backup", "path"))
    for path, folder in ((("data_dir",), d["data_dir"]), (("backup", "path"), d["backup"]["path"])):
        blocker = _file_in_the_way(Path(folder))
        if blocker is not None:
            ctx.err(path, f"{blocker} is a file, not a folder: nothing can be written "
                          f"{'there' if blocker == Path(folder) else 'under it'}")
    absolutize(d["provider"]["csv"], "path", ("provider", "csv", "path"))
    if d["alerts"]["email"]["ca_file"]:
        absolutize(d["alerts"]["email"], "ca_file", ("alerts", "email", "ca_file"))
        if not Path(d["alerts"]["email"]["ca_file"]).is_file():
            ctx.err(("alerts", "email", "ca_file"), f"{d['alerts']['email']['ca_file']} is not a "
                                                    f"file (a PEM file of the CA)")


def unknown_key(key: str, close: str | None, schema_doc: Doc) -> str:
    """The message for an unknown ``key``: the close name of its section, or
    where the schema has such a setting (a block pasted under the wrong
    section: ``api_keys`` at the end of the file lands under ``dashboard``)."""
    if close:
        return f"unknown key {key!r} (did you mean {close!r}?)"
    homes: list[str] = []

    def walk(node: Any, at: str) -> None:
        if isinstance(node, dict):
            for name, sub in (node.get("properties") or {}).items():
                if name == key:
                    homes.append(f"{at}{name}")
                walk(sub, f"{at}{name}.")
            for sub in (node.get("$defs") or {}).values():
                walk(sub, at)
    walk(schema_doc, "")
    if not homes:
        return f"unknown key {key!r}"
    where = " or ".join(f"under {h.rsplit('.', 1)[0]}:" if "." in h else "at the top level"
                        for h in homes)
    return f"unknown key {key!r} here: it belongs {where} ({', '.join(homes)}); check the indentation"
