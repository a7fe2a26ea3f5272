"""Secrets never shown: masking of URLs and webhooks, and ``redact``, which
every message passes through before it is stored (events, job run errors,
reload history) or logged."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "********"


def mask_webhook(url: str) -> str:
    """``https://hooks.example/services/T0/B0/xyz`` -> ``https://hooks.example/********``:
    the host says where notifications go, the path is the credential. Basic-auth
    userinfo keeps its user name only (``https://user:********@hooks.example/********``);
    a userinfo without a password may be a token, and is masked whole."""
    m = re.match(r"^([a-z][a-z0-9+.-]*://)([^/?#]*)", url, flags=re.I)
    if not m:
        return MASK
    head, authority = m.groups()
    userinfo, at, host = authority.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        head += (user + ":" + MASK if colon else MASK) + "@"
    return head + host + "/" + MASK


_QUERY_SECRET_RE = re.compile(r"([?&](?:password|pass|pwd|sslpassword|sslkey_password)=)[^&#]*",
                              re.I)


def _split_userinfo(url: str) -> tuple[str, str, str] | None:
    """(scheme://, userinfo, rest) of a URL with credentials, else None. The
    userinfo ends at the last ``@`` before the query, so a password holding
    an unencoded ``@`` is still all in it."""
    m = re.match(r"^([a-z][a-z0-9+.-]*://)(.*)$", url, flags=re.I | re.S)
    if not m:
        return None
    head, rest = m.groups()
    at = rest.split("?", 1)[0].rfind("@")
    if at < 0:
        return None
    return head, rest[:at], rest[at:]


def url_passwords(url: str) -> list[str]:
    """The passwords a database or Redis URL carries (userinfo and ``?password=``)."""
    out = []
    parts = _split_userinfo(url or "")
    if parts and ":" in parts[1]:
        out.append(parts[1].split(":", 1)[1])
    out.extend(m.group(0).split("=", 1)[1] for m in _QUERY_SECRET_RE.finditer(url or ""))
    return [p for p in out if p and p != MASK]


def mask_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:********@host/db``;
    ``?password=secret`` is masked too, and a password holding ``@``."""
    parts = _split_userinfo(url)
    if parts:
        head, userinfo, rest = parts
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + MASK
        url = head + userinfo + rest
    return _QUERY_SECRET_RE.sub(lambda m: m.group(1) + MASK, url)


# --------------------------------------------------------------------------- redaction

#: Secrets of every config loaded in this process (the running one and any
#: candidate): ``redact`` removes them from any text before it is stored or shown.
_known_secrets: set[str] = set()
_URL_USERINFO_RE = re.compile(r"([a-z][a-z0-9+.-]*://[^\s/:@]*:)[^\s@/]+@", re.I)
_BEARER_RE = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{12,}", re.I)


def remember_secrets(cfg: Any) -> None:
    """Learn the secrets of a loaded config (its ``secret_values()``)."""
    for v in cfg.secret_values():
        if len(v) >= 4:  # shorter ones would mangle ordinary words
            _known_secrets.add(v)


def redact(text: Any) -> Any:
    """``text`` with every known secret, URL password and Bearer token replaced
    by ``********``. Used on every message before it is stored (events, job
    run errors, reload history) or logged."""
    if not isinstance(text, str) or not text:
        return text
    for v in sorted(_known_secrets, key=len, reverse=True):
        if v in text:
            text = text.replace(v, MASK)
    text = _URL_USERINFO_RE.sub(lambda m: m.group(1) + MASK + "@", text)
    text = _QUERY_SECRET_RE.sub(lambda m: m.group(1) + MASK, text)
    return _BEARER_RE.sub(lambda m: m.group(1) + MASK, text)


def redact_obj(v: Any) -> Any:
    """``redact`` applied to every string in a JSON-like value."""
    if isinstance(v, str):
        return redact(v)
    if isinstance(v, Mapping):
        return {k: redact_obj(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [redact_obj(x) for x in v]
    return v
