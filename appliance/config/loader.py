"""Loading, validating and comparing ``appliance.yaml``.

``load_config(path)`` is the only way a config comes to life. It reads the file,
interpolates ``${VAR}`` / ``${VAR:-default}`` (and ``VAR_FILE``), applies the
defaults, validates against ``appliance.schema.json`` and then runs the
semantic checks (cron strings, unique symbols, dates, ordered thresholds,
paths). Every problem is reported as ``PATH:LINE: at <json.path>: <message>``
in one ``ConfigError``; nothing half-valid is ever returned. The result is
read-only.
"""
from __future__ import annotations

import copy
import datetime as dt
import difflib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from appliance.config import rules as configrules
from appliance.config.env import ENV_FILE_NAME, appliance_env, env_file_path, read_env_file  # noqa: F401
from appliance.config.redaction import (
    MASK,
    mask_url,
    mask_webhook,
    redact,
    remember_secrets,
    url_passwords,
)
from appliance.config.rules import MIN_TOKEN_LENGTH, TOKEN_PATHS, ConfigPath, Doc  # noqa: F401 (the token rules' home is rules)
from appliance.core.errors import ConfigError
from appliance.jobs.registry import OFF, default_schedules

MAX_CONFIG_BYTES = 1024 * 1024
MAX_EXPANDED_NODES = 200_000  # aliases can make a small file huge ("billion laughs")
SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9.\-]{0,14}$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")
SCHEMA_PATH = Path(__file__).with_name("appliance.schema.json")

#: Keys whose values are secrets: masked in the console, the API and diffs.
SECRET_PATHS = {
    ("server", "admin_token"), ("server", "read_token"), ("server", "secret_key"),
    ("provider", "polygon", "api_key"), ("provider", "tiingo", "api_key"),
    ("alerts", "email", "password"), ("alerts", "webhook", "url"), ("server", "metrics_token"),
    ("provider", "polygon", "flat_files", "access_key_id"),
    ("provider", "polygon", "flat_files", "secret_access_key"),
}

#: Keys a reload cannot change: the processes would have to be restarted.
RESTART_KEYS = [("database", "url"), ("database", "read_url"), ("redis", "url"), ("data_dir",), ("server", "bind"),  # noqa: E501
                ("server", "workers"), ("server", "threads"), ("server", "worker_class")]

DEFAULTS: dict[str, Any] = {
    "database": {"url": "", "pool_size": 10, "connect_timeout_seconds": 3,
                 "statement_timeout_seconds": 60, "read_url": "",
                 "max_replica_lag_seconds": 30},
    "redis": {"url": ""},
    "data_dir": "./var",
    "server": {"bind": "127.0.0.1:8000", "workers": 2, "threads": 4, "worker_class": "gevent", "admin_token": "",  # noqa: E501
               "read_token": "", "login_for_read": False, "anonymous_reads": False,
               "secret_key": "",
               "max_request_bytes": 1024 * 1024, "metrics_token": "",
               "session_idle_minutes": 60, "session_max_hours": 12, "secure_cookies": False,
               "trusted_proxy_hops": 0, "auth_max_failures": 20,
               "auth_failure_window_seconds": 60, "auth_lockout_seconds": 300, "api_keys": [],
               "export": {"max_rows": 10_000_000}},
    "provider": {
        "name": "demo",
        "polygon": {"api_key": "", "base_url": "https://api.polygon.io", "requests_per_minute": 5,
                    "timeout_seconds": 30, "max_retries": 5, "auth": "query",
                    "grouped_daily": True, "max_retry_seconds": 120,
                    "retry_backoff_seconds": 1.0,
                    "flat_files": {"enabled": False, "endpoint": "https://files.polygon.io",
                                   "bucket": "flatfiles", "prefix": "us_stocks_sip", "access_key_id": "",
                                   "secret_access_key": "", "timeout_seconds": 60, "max_retries": 5}},
        "yahoo": {"base_url": "https://query1.finance.yahoo.com", "requests_per_minute": 60,
                  "timeout_seconds": 30, "max_retries": 5, "max_retry_seconds": 120,
                  "retry_backoff_seconds": 1.0},
        "tiingo": {"api_key": "", "base_url": "https://api.tiingo.com", "requests_per_minute": 50,
                   "timeout_seconds": 30, "max_retries": 5, "max_retry_seconds": 120,
                   "retry_backoff_seconds": 1.0},
        "csv": {"path": "./data/csv"},
        "demo": {"seed": 42},
    },
    "history": {"start": "2021-01-01", "lookback_sessions": 5},
    "symbols": ["AAPL", "MSFT"],
    "universe": {"enabled": False, "include": [],  # excluded: warrants, units, rights
                 "exclude": [r".*\.WS$", r".*\.WS\.[A-Z]$", r".*\.U$", r".*\.RT?$"],
                 "daily_start": "", "minute_start": ""},
    "timeframes": ["1d"],
    "session": "regular",
    "calendar": "XNYS",
    "schedules": default_schedules(),
    "jobs": {"timeout_seconds": 3600, "retries": 2, "retry_interval_seconds": 60,
             "catch_up": True},
    "retention": {"backups_keep": 12, "job_runs_days": 180, "events_days": 90, "data_years": None,
                  "bar_years": {}},
    "backup": {"path": "./var/backups", "min_free_pct": 20, "require_mount": False,
               "parallel_jobs": 2, "source": "primary"},
    "backfill": {"fan_out": True, "chunk_stale_seconds": 60, "chunk_attempts": 3},
    "alerts": {"validation_rate_warn_pct": 90, "validation_rate_critical_pct": 50,
               "stale_after_sessions": 1, "disk_free_min_pct": 20, "backup_max_age_days": 8,
               "backup_failing_days": 7, "gaps_flagged_max_pct": 5,
               "spot_check_mismatch_max_pct": 1, "scheduler_heartbeat_max_seconds": 120,
               "job_failures_max": 3, "rate_limited_max_per_hour": 20, "for_seconds": {},
               "webhook": {"url": "", "timeout_seconds": 5},
               "email": {"smtp_host": "", "smtp_port": 587, "starttls": True, "username": "",
                         "password": "", "from": "", "to": [], "ca_file": "",
                         "verify_tls": True}},
    "quality": {"gap_threshold_pct": 20, "split_tolerance_pct": 2,
                "grid": {"green": 0.95, "yellow": 0.85}},
    "spot_check": {"source": "yahoo", "samples": 20, "match_pct": 0.2, "mismatch_pct": 1},
    "dashboard": {"refresh_seconds": 10},
    "export": {"out": "", "timeframes": ["1m", "1d"]},
}


# --------------------------------------------------------------------------- YAML with lines

class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps dates as strings (the schema checks them) and
    refuses duplicate keys."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _walk_lines(node: Any, path: ConfigPath, lines: dict[ConfigPath, int],
                dupes: list[tuple[ConfigPath, int]]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            key = k.value
            if key in seen:
                dupes.append((path + (key,), k.start_mark.line + 1))
            seen.add(key)
            lines[path + (key,)] = k.start_mark.line + 1
            _walk_lines(v, path + (key,), lines, dupes)
            # the value's own line wins for scalars on the next line, keep the key's
            lines[path + (key,)] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk_lines(item, path + (i,), lines, dupes)


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Number of values ``node`` stands for once every alias is expanded;
    memoized per node, so it costs one visit per distinct node."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_EXPANDED_NODES + 1  # a cycle counts as too big
    if isinstance(node, yaml.MappingNode):
        n = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_expanded_size(v, memo) for v in node.value)
    else:
        n = 1
    memo[key] = n = min(n, MAX_EXPANDED_NODES + 1)
    return n


def json_path(path: ConfigPath) -> str:
    out = "$"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


@dataclass
class _Ctx:
    path: str
    lines: dict[ConfigPath, int]
    errors: list[str]
    #: paths already reported (a later check does not report them twice)
    reported: set[ConfigPath] = field(default_factory=set)

    def line(self, path: ConfigPath) -> int:
        path = tuple(path)
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def err(self, path: ConfigPath, message: str) -> None:
        self.reported.add(tuple(path))
        self.errors.append(f"{self.path}:{self.line(path)}: at {json_path(path)}: {message}")

    def err_once(self, path: ConfigPath, message: str) -> None:
        """An error, unless this path (or one inside or around it) already has one."""
        path = tuple(path)
        if any(p[:len(path)] == path or path[:len(p)] == p for p in self.reported):
            return
        self.err(path, message)


# --------------------------------------------------------------------------- interpolation

def _secret_from_env(name: str, env: Mapping[str, str], ctx: _Ctx,
                     path: ConfigPath) -> str | None:
    if name in env:
        return env[name]
    file_var = name + "_FILE"
    if file_var in env:
        try:
            return Path(env[file_var]).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            ctx.err(path, f"cannot read {file_var}={env[file_var]!r}: {e.__class__.__name__}: "
                          f"{getattr(e, 'strerror', None) or e}")
            return ""
    return None


def variable_values(text: str, env: Mapping[str, str]) -> dict[str, str | None]:
    """The value each ``${VAR}`` in ``text``'s settings (not its comments)
    takes in ``env``: VAR, else the content of the file VAR_FILE names; None
    when unset or empty (its default applies). ``{}`` for text that is not
    YAML."""
    try:
        raw = yaml.load(text, Loader=_Loader)
    except Exception:  # noqa: BLE001 - not YAML: nothing to say of it
        return {}
    names: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str):
            names.update(m.group(1) for m in _ENV_RE.finditer(v))
    walk(raw)
    ctx = _Ctx("", {}, [])
    return {n: _secret_from_env(n, env, ctx, ()) or None for n in sorted(names)}


def _interpolate(value: Any, path: ConfigPath, env: Mapping[str, str], ctx: _Ctx) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, path + (k,), env, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, path + (i,), env, ctx) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def repl(m: re.Match[str]) -> str:
        name, has_default, default = m.group(1), m.group(2), m.group(3)
        got = _secret_from_env(name, env, ctx, path)
        if got is None or (has_default and got == ""):
            if has_default:
                return default or ""
            ctx.err(path, f"environment variable {name} is not set (nor {name}_FILE) in the "
                          f"appliance's environment: put it in {ENV_FILE_NAME} (beside the "
                          f"config), or write ${{{name}:-default}}")
            return ""
        return got

    return _ENV_RE.sub(repl, value)


# --------------------------------------------------------------------------- read-only config

def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return MappingProxyType({k: _freeze(x) for k, x in v.items()})
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _thaw(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


def _deep_merge(base: Doc, over: Doc) -> Doc:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "for_seconds":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@dataclass(frozen=True)
class SymbolSpec:
    symbol: str
    since: dt.date
    active: bool = True
    timeframes: tuple[str, ...] = ("1d",)
    own_since: dt.date | None = None  # its own since:, not history.start's 1d (``since``)


class Config:
    """A validated, read-only configuration.

    ``cfg["server"]["bind"]`` reads values; ``cfg.get("alerts.for_seconds")``
    reads a dotted path. Paths (``data_dir``, ``backup.path``, ``provider.csv.path``)
    are already absolute.
    """

    def __init__(self, data: Doc, *, path: Path, text: str) -> None:
        #: restart-only keys whose value in the running config differs from
        #: the one in force (the boot value); applied at the next restart
        self.pending_restart: list[str] = []
        self._data = _freeze(data)
        self.path = path
        self.text = text
        self.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def get(self, dotted: str, default: Any = None) -> Any:
        cur: Any = self._data
        for part in dotted.split("."):
            if not isinstance(cur, Mapping) or part not in cur:
                return default
            cur = cur[part]
        return cur

    def to_dict(self) -> Doc:
        return _thaw(self._data)

    @property
    def data_dir(self) -> Path:
        return Path(self._data["data_dir"])

    def history_start(self, timeframe: str = "1d") -> dt.date:
        """``history.start``: one date for every stored resolution, or one per
        resolution (``{1d: ..., 1m: ...}``; a missing one falls back to 1d's,
        then to the default)."""
        start = self._data["history"]["start"]
        if isinstance(start, str):
            return dt.date.fromisoformat(start)
        value = start.get(timeframe) or start.get("1d") or DEFAULTS["history"]["start"]
        return dt.date.fromisoformat(value)

    @property
    def symbols(self) -> list[SymbolSpec]:
        start = self.history_start("1d")
        default_tfs = tuple(self._data["timeframes"])
        out = []
        for item in self._data["symbols"]:
            if isinstance(item, str):
                out.append(SymbolSpec(item, start, True, default_tfs))
            else:
                since = dt.date.fromisoformat(item["since"]) if item.get("since") else None
                out.append(SymbolSpec(item["symbol"], since or start, item.get("active", True),
                                      tuple(item.get("timeframes") or default_tfs), since))
        return out

    def symbols_with(self, timeframe: str) -> list[str]:
        """Active symbols that store ``timeframe`` (``1m`` or ``1d``)."""
        return [s.symbol for s in self.symbols if s.active and timeframe in s.timeframes]

    @property
    def active_symbols(self) -> list[str]:
        return [s.symbol for s in self.symbols if s.active]

    def masked(self) -> Doc:
        """The running config as a dict with every secret replaced by ``********``."""
        d = self.to_dict()
        for p in SECRET_PATHS:
            cur: Any = d
            for part in p[:-1]:
                cur = cur.get(part) if isinstance(cur, dict) else None
                if cur is None:
                    break
            if isinstance(cur, dict) and cur.get(p[-1]):
                cur[p[-1]] = mask_webhook(cur[p[-1]]) if p[-1] == "url" else MASK
        for sect, key in (("database", "url"), ("database", "read_url"), ("redis", "url")):
            if d.get(sect, {}).get(key):
                d[sect][key] = mask_url(d[sect][key])
        for k in d.get("server", {}).get("api_keys") or []:
            if isinstance(k, dict) and k.get("sha256"):
                k["sha256"] = k["sha256"][:8] + "…"
        return d

    def secret_values(self) -> list[str]:
        """Every secret this config holds, as text that must never be shown."""
        out = []
        for p in SECRET_PATHS:
            v = self.get(".".join(p))
            if isinstance(v, str) and v:
                out.append(v)
                if p[-1] == "url":  # a webhook's path is the credential (Slack, Teams)
                    path = re.sub(r"^[a-z][a-z0-9+.-]*://[^/]*", "", v, flags=re.I)
                    if len(path) > 1:
                        out.append(path)
                    out.extend(url_passwords(v))  # a basic-auth password in it
        for sect, key in (("database", "url"), ("database", "read_url"), ("redis", "url")):
            out.extend(url_passwords(self[sect].get(key) or ""))
        return out


def with_boot_values(cfg: Config, boot: Config | None) -> Config:
    """``cfg`` with the restart-only keys (RESTART_KEYS) at ``boot``'s values,
    the ones the processes started with; ``pending_restart`` names the keys
    whose new value waits for a restart."""
    if boot is None:
        return cfg
    data, b = cfg.to_dict(), boot.to_dict()
    pending = []
    for k in RESTART_KEYS:
        cur, old = data, b
        for part in k[:-1]:
            cur, old = cur[part], old[part]
        if cur.get(k[-1]) != old.get(k[-1]):
            pending.append(".".join(k))
            cur[k[-1]] = old.get(k[-1])
    if not pending:
        return cfg
    out = Config(data, path=cfg.path, text=cfg.text)
    out.pending_restart = pending
    return out


# --------------------------------------------------------------------------- loading

def default_config_path() -> Path:
    return Path(os.environ.get("APPLIANCE_CONFIG") or "config/appliance.yaml")


def load_config(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None,
                text: str | bytes | None = None) -> Config:
    """Load and validate a config file.

    ``text`` may be given to validate content not (yet) at ``path``.
    Raises ConfigError listing every problem."""
    p = Path(path) if path is not None else default_config_path()
    env = appliance_env(p) if env is None else env
    shown = str(path if path is not None else p)
    if text is None:
        try:
            if p.stat().st_size > MAX_CONFIG_BYTES:
                raise ConfigError([f"{shown}:1: at $: file is {p.stat().st_size} bytes, "
                                   f"more than the {MAX_CONFIG_BYTES} allowed"])
            raw = p.read_bytes()
        except FileNotFoundError:
            example = p.with_name("appliance.example.yaml")
            hint = (f" (copy {example} to it and edit it; `make up` does that the first time)"
                    if example.exists() else "")
            raise ConfigError([f"{shown}:1: at $: file not found{hint}"]) from None
        except IsADirectoryError:
            raise ConfigError([f"{shown}:1: at $: is a directory, not a file"]) from None
        except PermissionError as e:
            raise ConfigError([f"{shown}:1: at $: cannot read: {e.strerror}"]) from None
    else:
        raw = text.encode("utf-8") if isinstance(text, str) else text
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{shown}:1: at $: file is {len(raw)} bytes, more than the "
                           f"{MAX_CONFIG_BYTES} allowed"])
    try:
        src = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError([f"{shown}:{line}: at $: not valid UTF-8 (byte 0x{raw[e.start]:02x} "
                           f"at offset {e.start})"]) from None
    if "\x00" in src:
        line = src[: src.index("\x00")].count("\n") + 1
        raise ConfigError([f"{shown}:{line}: at $: contains a NUL byte"])

    ctx = _Ctx(shown, {}, [])
    try:
        node = yaml.compose(src, Loader=_Loader)
        data = yaml.load(src, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark else 1
        msg = getattr(e, "problem", None) or str(e)
        ctxt = getattr(e, "context", None)
        raise ConfigError([f"{shown}:{line}: at $: YAML syntax error: {msg}"
                           + (f" ({ctxt})" if ctxt else "")]) from None
    except RecursionError:
        raise ConfigError([f"{shown}:1: at $: YAML nesting too deep"]) from None
    if node is None or data is None:
        raise ConfigError([f"{shown}:1: at $: the file is empty; expected a mapping of settings"])
    if _expanded_size(node, {}) > MAX_EXPANDED_NODES:
        raise ConfigError([f"{shown}:1: at $: YAML anchors and aliases expand to more than "
                           f"{MAX_EXPANDED_NODES} values; write the settings out"])
    dupes: list[tuple[ConfigPath, int]] = []
    _walk_lines(node, (), ctx.lines, dupes)
    for dpath, line in dupes:
        ctx.errors.append(f"{shown}:{line}: at {json_path(dpath)}: duplicate key "
                          f"{dpath[-1]!r}")
    if not isinstance(data, dict):
        raise ConfigError([f"{shown}:1: at $: expected a mapping of settings, "
                           f"got {type(data).__name__}"])

    data = _interpolate(data, (), env, ctx)
    merged = _deep_merge(DEFAULTS, data)
    _validate_schema(merged, ctx)
    # every problem in one run: the semantic checks look at what the schema
    # found valid and skip the rest
    configrules.semantic_checks(merged, ctx, base=p.resolve().parent)
    if ctx.errors:
        raise ConfigError([redact(e) for e in ctx.errors])
    merged["schedules"] = {j: OFF if v is False else v for j, v in merged["schedules"].items()}
    cfg = Config(merged, path=p.resolve(), text=src)
    remember_secrets(cfg)
    return cfg


_validator: Draft202012Validator | None = None


def schema() -> Doc:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _validate_schema(data: Doc, ctx: _Ctx) -> None:
    global _validator
    if _validator is None:
        _validator = Draft202012Validator(schema())
    errors = sorted(_validator.iter_errors(data), key=lambda e: (ctx.line(e.absolute_path),
                                                                list(map(str, e.absolute_path))))
    for e in errors:
        path = tuple(e.absolute_path)
        if e.validator == "additionalProperties" and isinstance(e.instance, dict):
            allowed = set(e.schema.get("properties", {}))
            for extra in sorted(k for k in e.instance if k not in allowed):
                ctx.err(path + (extra,), configrules.unknown_key(
                    extra, _close_match(extra, allowed), _validator.schema))
            continue
        if e.validator == "oneOf" and path and path[0] == "symbols":
            val = e.instance
            if isinstance(val, str):
                ctx.err(path, f"{val!r} is not a valid symbol (expected upper-case letters, "
                              f"digits, '.' or '-', at most 15 characters)")
            elif isinstance(val, dict):
                sub = _validator.evolve(schema=e.schema["oneOf"][1])
                for se in sub.iter_errors(val):
                    spath = path + tuple(se.absolute_path)
                    if se.validator == "additionalProperties":
                        for extra in sorted(k for k in val
                                           if k not in ("symbol", "since", "active", "timeframes")):
                            ctx.err(path + (extra,), f"unknown key {extra!r}")
                    else:
                        ctx.err(spath, se.message)
            else:
                ctx.err(path, f"expected a symbol string or {{symbol, since}}, got "
                              f"{type(val).__name__}")
            continue
        if e.validator == "oneOf" and path == ("history", "start"):
            configrules.history_start_errors(e, ctx, _validator, _friendly)
            continue
        if _is_secret_path(path):
            # jsonschema quotes the value ("123456 is not of type 'string'"); a
            # secret's value is never repeated
            ctx.err(path, f"invalid value (not shown: it is a secret): expected "
                          f"{e.validator_value if e.validator == 'type' else 'a valid ' + e.validator}")
            continue
        ctx.err(path, _friendly(e))


def _is_secret_path(path: ConfigPath) -> bool:
    return any(tuple(path[:len(p)]) == p for p in SECRET_PATHS) or \
        (len(path) >= 4 and path[:2] == ("server", "api_keys") and path[3] == "sha256")


_PATTERN_HINTS = {
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}$": "is not a date (expected YYYY-MM-DD)",
    "^[^:]+:[0-9]{1,5}$": "is not HOST:PORT (e.g. 127.0.0.1:8000)",
    "^https?://": "is not an http(s):// URL",
}


def _friendly(e: Any) -> str:
    if tuple(e.path)[:1] == ("schedules",) and e.validator in ("anyOf", "type"):
        return configrules.not_a_schedule(tuple(e.path), e.instance)
    if e.validator == "enum" and tuple(e.path) == ("calendar",):
        return (f"{e.instance!r} is not a supported exchange calendar (supported: "
                f"{', '.join(e.validator_value)}; session hours and time zone are New York's)")
    if e.validator == "pattern" and e.validator_value in _PATTERN_HINTS:
        return f"{e.instance!r} {_PATTERN_HINTS[e.validator_value]}"
    return e.message


def _close_match(word: str, options: Iterable[str]) -> str | None:
    m = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.75)
    return m[0] if m else None
