"""HTTP behaviour shared by every vendor module.

* ``RateLimiter``: a token bucket (capacity at most ``requests_per_minute``)
  combined with a log of the last ``requests_per_minute`` request times, so no
  window of 60 s (plus a safety margin) ever holds more requests than the
  limit, whatever the bucket would allow. Thread-safe; share one limiter
  between every client that uses the same vendor key (``shared_limiter``).
* ``HttpClient.get_json``: GET + JSON with retries (tenacity; exponential
  backoff with full jitter, at least a 429's Retry-After) on 429, 5xx,
  timeouts, connection errors and malformed JSON,
  bounded both in count (``max_retries``) and in total time
  (``max_retry_seconds``). 401/403 raise ``ProviderAuthError`` carrying the
  vendor's own message; other 4xx raise a permanent ``ProviderError``.
  Secrets passed in ``redact`` never appear in a message or a log line.
* Every request, retry and error is counted through a ``stats`` object with
  ``incr(provider, kind, label)``; ``MemoryStats`` is the in-process default.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import requests
import tenacity

from appliance.core.errors import ProviderAuthError, ProviderDataError, ProviderError

log = logging.getLogger("appliance.providers.http")

REDACTED = "REDACTED"
#: secrets at least this long are replaced wherever they appear
MIN_LITERAL_SECRET = 6
_KEY_PARAM = re.compile(r"((?:apiKey|apikey|api_key|token)=)[^&\s]+")


_known_secrets: set[str] = set()


class _RedactingFilter(logging.Filter):
    """Rewrites records of the HTTP libraries' loggers (urllib3 logs every
    request line, query string included) so no key reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - leave odd records alone
            return True
        clean = redact_text(text, tuple(_known_secrets))
        if clean != text:
            record.msg, record.args = clean, ()
        return True


_redacting_filter = _RedactingFilter()
for _name in ("urllib3.connectionpool", "urllib3.util.retry", "requests"):
    logging.getLogger(_name).addFilter(_redacting_filter)


class Stats(Protocol):
    def incr(self, provider: str, kind: str, label: str) -> None: ...


class MemoryStats:
    """Thread-safe in-memory counters keyed by (provider, kind, label).

    kind is ``request`` (label: HTTP status, ``timeout`` or ``connection_error``),
    ``retry`` or ``error`` (label: the reason). ``drain()`` hands over the
    counts not drained yet (a job adds them to PostgreSQL, so every process's
    counts show in /metrics); the other readers see every count."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, str, str], int] = collections.Counter()
        self._undrained: dict[tuple[str, str, str], int] = collections.Counter()

    def incr(self, provider: str, kind: str, label: str) -> None:
        with self._lock:
            self.counters[(provider, kind, str(label))] += 1
            self._undrained[(provider, kind, str(label))] += 1

    def total(self, kind: str) -> int:
        return self.get(kind=kind)

    def drain(self) -> dict[tuple[str, str, str], int]:
        """The counts since the last ``drain()``, and forget them."""
        with self._lock:
            counts, self._undrained = dict(self._undrained), collections.Counter()
        return counts

    def get(self, provider: str | None = None, kind: str | None = None,
            label: str | None = None) -> int:
        """Sum of the counters matching every given key part."""
        with self._lock:
            return sum(v for (p, k, lab), v in self.counters.items()
                       if (provider is None or p == provider) and (kind is None or k == kind)
                       and (label is None or lab == str(label)))

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self.counters)


class RateLimiter:
    """Never more than ``requests_per_minute`` requests in any window of
    ``window_seconds + margin_seconds``.

    ``burst`` is the token bucket's capacity (1 = evenly spaced requests;
    it is capped at ``requests_per_minute``). ``acquire()`` reserves the next
    free slot under a lock and then sleeps outside it, so concurrent callers
    queue fairly. A limit of 0 or less disables limiting.
    """

    def __init__(self, requests_per_minute: float, burst: int | None = None, *,
                 window_seconds: float = 60.0, margin_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.rpm = float(requests_per_minute or 0)
        self.window = float(window_seconds)
        self.margin = float(margin_seconds)
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        if self.rpm > 0:
            self.limit = max(1, int(self.rpm))  # whole requests per window
            self.interval = self.window / self.rpm
            cap = self.limit if burst is None else int(burst)
            self.capacity = max(1, min(cap, self.limit))
            self._log: collections.deque[float] = collections.deque(maxlen=self.limit)
        self._tat: float | None = None  # theoretical arrival time (GCRA form of the bucket)
        self._paused_until = 0.0

    def reserve(self) -> float:
        """Reserve a slot; returns the clock time at which it may be used."""
        if self.rpm <= 0:
            return self.clock()
        with self._lock:
            now = self.clock()
            tat = now if self._tat is None else max(self._tat, now)
            # token bucket: allowed once tat - (capacity - 1) * interval <= t
            t = max(now, tat - (self.capacity - 1) * self.interval)
            # hard window: the request `limit` slots back must be a full window old
            if len(self._log) >= self.limit:
                t = max(t, self._log[0] + self.window + self.margin)
            t = max(t, self._paused_until)
            self._tat = max(tat, t) + self.interval
            self._log.append(t)
            return t

    def pause(self, seconds: float) -> None:
        """The vendor said 429: no request for ``seconds``."""
        with self._lock:
            self._paused_until = max(self._paused_until, self.clock() + seconds)

    def acquire(self) -> float:
        """Block until a request may be sent; returns the seconds waited."""
        t = self.reserve()
        wait = t - self.clock()
        if wait > 0:
            self.sleep(wait)
            return wait
        return 0.0


_shared: dict[str, RateLimiter] = {}
_shared_lock = threading.Lock()


def shared_limiter(vendor: str, secret: str | None, requests_per_minute: float) -> RateLimiter:
    """One limiter per (vendor, key, limit) in this process, shared by every client."""
    digest = hashlib.sha256((secret or "").encode()).hexdigest()[:16]
    k = f"{vendor}:{digest}:{requests_per_minute}"
    with _shared_lock:
        lim = _shared.get(k)
        if lim is None:
            lim = _shared[k] = RateLimiter(requests_per_minute)
        return lim


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret and every ``apiKey=...`` value replaced."""
    for s in secrets:
        if not s:
            continue
        if len(s) >= MIN_LITERAL_SECRET:
            text = text.replace(s, REDACTED)
        else:  # too short to replace blindly ("k" is in "ticker"): whole values only
            text = re.sub(r"(?<=[=\s])" + re.escape(s) + r"(?=$|[&\s;,)])", REDACTED, text)
    return _KEY_PARAM.sub(r"\1" + REDACTED, text)


def connection_cause(e: Exception) -> str:
    """Why a connection failed, first: requests wraps urllib3's reason
    (``Failed to establish a new connection: [Errno 111] Connection refused``,
    a name that does not resolve…) in a long ``HTTPConnectionPool(…): Max
    retries exceeded … (Caused by …)`` text, which a length limit cut before
    the cause. The URL is said by the caller."""
    reason = e.args[0] if e.args else None
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError -> its cause
    if isinstance(reason, BaseException):
        msg = str(reason)
        # "HTTPConnection(host=..., port=...): Failed to establish ...": the object's repr out
        tail = msg.split("): ", 1)[1] if "): " in msg else msg
        return f"{type(reason).__name__}: {tail}"
    return str(e)


def vendor_message(body: bytes | str | None) -> str | None:
    """The human message a vendor put in an error body, if any."""
    if not body:
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        text = " ".join(text.split())
        return text[:300] or None
    if isinstance(data, dict):
        for key in ("error", "message", "detail", "description"):
            v = data.get(key)
            if isinstance(v, str) and v:
                return v
            if isinstance(v, dict):
                inner = v.get("description") or v.get("message")
                if isinstance(inner, str):
                    return inner
        chart = data.get("chart") or data.get("finance")
        if isinstance(chart, dict) and isinstance(chart.get("error"), dict):
            e = chart["error"]
            return e.get("description") or e.get("code")
    return None


class _Retryable(Exception):
    def __init__(self, reason: str, detail: str, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status
        self.retry_after = retry_after


class HttpClient:
    """GET + JSON for one vendor, rate-limited and retried.

    ``sleep`` and ``clock`` are injectable so tests never wait; ``limiter`` may
    be shared between clients (default: a private ``RateLimiter`` using the
    same clock and sleep). ``allow_statuses`` lists non-2xx statuses returned
    to the caller instead of raised.
    """

    def __init__(self, name: str, requests_per_minute: float, timeout_seconds: float = 30,
                 max_retries: int = 5, max_retry_seconds: float = 120, stats: Stats | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, *,
                 limiter: RateLimiter | None = None, backoff_base: float = 1.0,
                 backoff_max: float = 60.0, rng: random.Random | None = None,
                 session_factory: Callable[[], requests.Session] = requests.Session):
        self.name = name
        self.requests_per_minute = requests_per_minute
        self.timeout_seconds = float(timeout_seconds)
        self.max_retries = int(max_retries)
        self.max_retry_seconds = float(max_retry_seconds)
        self.stats = stats if stats is not None else MemoryStats()
        self.sleep = sleep
        self.clock = clock
        self.limiter = limiter or RateLimiter(requests_per_minute, clock=clock, sleep=sleep)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.rng = rng or random.Random()
        self._session_factory = session_factory
        self._local = threading.local()

    # -- plumbing -------------------------------------------------------------
    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = self._session_factory()
            s.headers["User-Agent"] = "market-data-appliance"
            s.headers["Accept"] = "application/json"
        return s

    def close(self) -> None:
        s = getattr(self._local, "session", None)
        if s is not None:
            s.close()
            self._local.session = None

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(backoff_max, base * 2**(attempt-1))]."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** max(0, attempt - 1)))
        return self.rng.uniform(0, ceiling)

    @staticmethod
    def display_url(url: str, params: Mapping | None, secrets: Iterable[str] = ()) -> str:
        """The full URL as sent, with secrets redacted (safe for messages and logs)."""
        try:
            full = requests.Request("GET", url, params=params).prepare().url or url
        except Exception:  # noqa: BLE001 - only used for display
            full = url
        return redact_text(full, secrets)

    def _count(self, kind: str, label: str) -> None:
        try:
            self.stats.incr(self.name, kind, label)
        except Exception:  # counting must never break a fetch
            log.exception("stats.incr failed")

    # -- the request ------------------------------------------------------------
    def _attempt(self, url, params, headers, secrets, shown, allow):
        try:
            resp = self._session().get(url, params=params, headers=headers,
                                       timeout=self.timeout_seconds)
            body = resp.content
        except requests.Timeout as e:
            self._count("request", "timeout")
            raise _Retryable("timeout", f"timed out after {self.timeout_seconds:g}s") from e
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
            text = redact_text(connection_cause(e), secrets)
            if "timed out" in text.lower():
                self._count("request", "timeout")
                raise _Retryable("timeout", f"timed out after {self.timeout_seconds:g}s") from e
            self._count("request", "connection_error")
            raise _Retryable("connection_error", f"connection error: {text[:300]}") from e
        status = resp.status_code
        self._count("request", str(status))
        if 200 <= status < 300 or status in allow:
            try:
                return status, json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                if status in allow and not (200 <= status < 300):
                    return status, None
                raise _Retryable("malformed_json", f"malformed JSON ({len(body)} bytes): {e}",
                                 status) from e
        msg = redact_text(vendor_message(body) or resp.reason or "", secrets)
        if status == 429:
            retry_after = None
            ra = resp.headers.get("Retry-After")
            if ra:
                try:
                    retry_after = float(ra)
                except ValueError:
                    retry_after = None
            raise _Retryable("rate_limited", f"HTTP 429: {msg}", status, retry_after)
        if status >= 500:
            raise _Retryable("server_error", f"HTTP {status}: {msg}", status)
        if status in (401, 403):
            self._count("error", "auth")
            raise ProviderAuthError(f"{self.name}: {msg} (HTTP {status} for {shown})",
                                    status=status, url=shown)
        self._count("error", "client_error")
        raise ProviderError(f"{self.name}: HTTP {status}: {msg} ({shown})", status=status,
                            url=shown, permanent=True)

    def get_json(self, url: str, params: Mapping | None = None, headers: Mapping | None = None,
                 redact: Iterable[str] = (), allow_statuses: Iterable[int] = ()):
        """GET ``url`` and parse its JSON body; returns ``(status, data)``.

        Raises ``ProviderAuthError`` (401/403), ``ProviderError`` (other 4xx:
        permanent; transient failures once retries are exhausted) or
        ``ProviderDataError`` (malformed JSON on every attempt)."""
        secrets = tuple(s for s in redact if s)
        _known_secrets.update(secrets)
        allow = frozenset(allow_statuses)
        shown = self.display_url(url, params, secrets)
        started = self.clock()

        def attempt():
            self.limiter.acquire()
            return self._attempt(url, params, headers, secrets, shown, allow)

        def wait(rs: tenacity.RetryCallState) -> float:
            r = rs.outcome.exception()
            delay = self.backoff(rs.attempt_number)
            return delay if r.retry_after is None else max(delay, r.retry_after)

        def stop(rs: tenacity.RetryCallState) -> bool:
            return rs.attempt_number > self.max_retries or \
                self.clock() - started + rs.upcoming_sleep > self.max_retry_seconds

        def before_sleep(rs: tenacity.RetryCallState) -> None:
            r = rs.outcome.exception()
            self._count("retry", r.reason)
            if r.reason == "rate_limited":
                # the limit is the vendor's, not this client's: slow everyone
                self.limiter.pause(rs.upcoming_sleep)
            log.warning("%s: %s for %s; retry %d/%d in %.1fs", self.name, r.detail, shown,
                        rs.attempt_number, self.max_retries, rs.upcoming_sleep)

        def give_up(rs: tenacity.RetryCallState):
            r = rs.outcome.exception()
            elapsed = self.clock() - started
            self._count("error", r.reason)
            text = (f"{self.name}: {r.detail} for {shown} "
                    f"(gave up after {rs.attempt_number} attempts, {elapsed:.1f}s)")
            log.error("%s", text)
            if r.reason == "malformed_json":
                raise ProviderDataError(text, status=r.status, url=shown) from None
            raise ProviderError(text, status=r.status, url=shown, permanent=False) from None

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retryable), wait=wait, stop=stop,
            before_sleep=before_sleep, retry_error_callback=give_up,
            sleep=lambda d: self.sleep(d) if d > 0 else None)
        return retrying(attempt)


def client_for(vendor: str, settings: Mapping, *, stats: Stats | None = None,
               limiter: RateLimiter | None = None) -> HttpClient:
    """The HttpClient a ``provider.<vendor>`` config section describes."""
    return HttpClient(vendor, settings["requests_per_minute"],
                      timeout_seconds=settings["timeout_seconds"],
                      max_retries=settings["max_retries"],
                      max_retry_seconds=settings["max_retry_seconds"], stats=stats,
                      limiter=limiter, backoff_base=settings["retry_backoff_seconds"])
