import logging
import threading

import pytest

from appliance.core.errors import ProviderAuthError, ProviderDataError, ProviderError
from appliance.providers.http import HttpClient, MemoryStats, RateLimiter, redact_text
from tests.fakes import StaticFake
from tests.fakes.polygon_fake import PolygonFake

KEY = "s3cr3t-key-0123456789"


class FakeTime:
    """A clock that only moves when something sleeps."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []
        self._lock = threading.Lock()

    def clock(self):
        with self._lock:
            return self.now

    def sleep(self, s):
        with self._lock:
            self.sleeps.append(s)
            self.now += s


def max_in_any_window(times, window=60.0):
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def client(ft, stats=None, **kw):
    kw.setdefault("requests_per_minute", 0)
    kw.setdefault("max_retries", 5)
    kw.setdefault("timeout_seconds", 2)
    return HttpClient("polygon", stats=stats or MemoryStats(), sleep=ft.sleep, clock=ft.clock,
                      **kw)


def test_it_never_exceeds_requests_per_minute():
    ft = FakeTime()
    lim = RateLimiter(5, clock=ft.clock, sleep=ft.sleep)
    sent = []
    for _ in range(37):
        lim.acquire()
        sent.append(ft.clock())
    assert max_in_any_window(sent, 60.0) <= 5
    # still at most 5 with a window widened by the safety margin
    assert max_in_any_window(sent, 61.0 - 1e-9) <= 5
    # and it does not crawl: 37 requests at 5/min take about 7 minutes
    assert sent[-1] - sent[0] < 8 * 61


def test_the_bucket_never_bursts_above_the_per_minute_limit():
    ft = FakeTime()
    lim = RateLimiter(5, burst=100, clock=ft.clock, sleep=ft.sleep)
    assert lim.capacity == 5
    sent = []
    for _ in range(12):
        lim.acquire()
        sent.append(ft.clock())
    assert sent[:5] == [sent[0]] * 5  # the first minute's five go at once
    assert sent[5] - sent[0] >= 60.0
    assert max_in_any_window(sent) <= 5


def test_a_burst_of_one_spaces_requests_evenly():
    ft = FakeTime()
    lim = RateLimiter(60, burst=1, clock=ft.clock, sleep=ft.sleep)
    sent = []
    for _ in range(5):
        lim.acquire()
        sent.append(ft.clock())
    assert [round(b - a, 6) for a, b in zip(sent, sent[1:], strict=False)] == [1.0] * 4


def test_the_limiter_is_shareable_between_threads():
    ft = FakeTime()
    lim = RateLimiter(10, clock=ft.clock, sleep=ft.sleep)
    slots = []
    lock = threading.Lock()

    def work():
        for _ in range(20):
            t = lim.reserve()
            with lock:
                slots.append(t)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(slots) == 80
    assert max_in_any_window(slots) <= 10


def test_a_limit_of_zero_does_not_wait():
    ft = FakeTime()
    lim = RateLimiter(0, clock=ft.clock, sleep=ft.sleep)
    for _ in range(100):
        assert lim.acquire() == 0.0
    assert ft.sleeps == []


def test_backoff_is_exponential_with_full_jitter_and_capped():
    ft = FakeTime()
    c = client(ft, backoff_base=1.0, backoff_max=10.0)
    for attempt in range(1, 8):
        vals = [c.backoff(attempt) for _ in range(200)]
        ceiling = min(10.0, 2 ** (attempt - 1))
        assert all(0 <= v <= ceiling for v in vals)
        assert max(vals) > ceiling * 0.8  # jitter spans the whole range
        assert min(vals) < ceiling * 0.2


def test_429_and_5xx_are_retried_then_succeed_and_are_counted():
    ft = FakeTime()
    stats = MemoryStats()
    with PolygonFake({}, api_key=None, faults=["429", "500", "502", "503"]) as f:
        c = client(ft, stats)
        status, data = c.get_json(f.base_url + "/v3/reference/splits", {"ticker": "X"})
    assert status == 200 and data["status"] == "OK"
    assert f.count("/v3/reference/splits") == 5
    assert len(ft.sleeps) == 4
    assert stats.get("polygon", "request", "429") == 1
    assert stats.get("polygon", "request", "503") == 1
    assert stats.get("polygon", "request", "200") == 1
    assert stats.get("polygon", "retry", "rate_limited") == 1
    assert stats.get("polygon", "retry", "server_error") == 3
    assert stats.get("polygon", "error") == 0


def test_retries_are_bounded_in_count():
    ft = FakeTime()
    stats = MemoryStats()
    with PolygonFake({}, api_key=None, faults=["500"] * 10) as f:
        c = client(ft, stats, max_retries=2)
        with pytest.raises(ProviderError) as e:
            c.get_json(f.base_url + "/v3/reference/splits")
    assert f.count() == 3
    assert e.value.permanent is False
    assert e.value.status == 500
    assert "3 attempts" in str(e.value)
    assert stats.get("polygon", "error", "server_error") == 1


def test_retries_are_bounded_in_time():
    ft = FakeTime()
    with PolygonFake({}, api_key=None, faults=["503"] * 50) as f:
        c = client(ft, max_retries=50, max_retry_seconds=30, backoff_base=8, backoff_max=8)
        with pytest.raises(ProviderError):
            c.get_json(f.base_url + "/v3/reference/splits")
    assert sum(ft.sleeps) <= 30
    assert f.count() < 50


def test_truncated_json_is_retried_then_reported_with_the_key_redacted(caplog):
    ft = FakeTime()
    caplog.set_level(logging.DEBUG)
    stats = MemoryStats()
    with PolygonFake({}, api_key=KEY, faults=["truncated"] * 3) as f:
        c = client(ft, stats, max_retries=2)
        with pytest.raises(ProviderDataError) as e:
            c.get_json(f.base_url + "/v3/reference/splits", {"ticker": "AAPL", "apiKey": KEY},
                       redact=(KEY,))
    msg = str(e.value)
    assert "/v3/reference/splits" in msg and "apiKey=REDACTED" in msg
    assert KEY not in msg and KEY not in (e.value.url or "")
    assert KEY not in caplog.text and "REDACTED" in caplog.text
    assert stats.get("polygon", "retry", "malformed_json") == 2
    assert stats.get("polygon", "error", "malformed_json") == 1


def test_truncated_json_once_is_retried_and_succeeds():
    ft = FakeTime()
    with PolygonFake({}, api_key=None, faults=["truncated"]) as f:
        status, data = client(ft).get_json(f.base_url + "/v3/reference/splits")
    assert status == 200 and data["results"] == []
    assert f.count() == 2


def test_a_hang_longer_than_the_timeout_is_retried():
    ft = FakeTime()
    stats = MemoryStats()
    with PolygonFake({}, api_key=None, faults=["hang"], hang_seconds=3) as f:
        c = client(ft, stats, timeout_seconds=0.3)
        status, _ = c.get_json(f.base_url + "/v3/reference/splits")
    assert status == 200
    assert stats.get("polygon", "request", "timeout") == 1
    assert stats.get("polygon", "retry", "timeout") == 1


def test_a_refused_connection_is_retried_then_a_transient_error():
    ft = FakeTime()
    stats = MemoryStats()
    f = PolygonFake({}, api_key=None).start()
    url = f.base_url + "/v3/reference/splits"
    f.stop()
    with pytest.raises(ProviderError) as e:
        client(ft, stats, max_retries=1).get_json(url)
    assert e.value.permanent is False
    assert stats.get("polygon", "request", "connection_error") == 2


def test_401_and_403_are_auth_errors_with_the_vendor_message():
    ft = FakeTime()
    routes = {"/a": (401, {"status": "ERROR", "request_id": "x", "error": "Unknown API Key"}),
              "/b": (403, {"status": "NOT_AUTHORIZED", "request_id": "y",
                           "message": "You are not entitled to this data."})}
    with StaticFake(routes) as f:
        c = client(ft)
        with pytest.raises(ProviderAuthError) as e1:
            c.get_json(f.base_url + "/a", {"apiKey": KEY}, redact=(KEY,))
        with pytest.raises(ProviderAuthError) as e2:
            c.get_json(f.base_url + "/b")
    assert "Unknown API Key" in str(e1.value) and e1.value.status == 401
    assert KEY not in str(e1.value)
    assert "not entitled" in str(e2.value) and e2.value.permanent
    assert f.count() == 2  # never retried
    assert ft.sleeps == []


def test_other_4xx_are_permanent_errors_without_retry():
    ft = FakeTime()
    with StaticFake({"/x": (400, {"status": "ERROR", "error": "bad from"})}) as f:
        with pytest.raises(ProviderError) as e:
            client(ft).get_json(f.base_url + "/x")
    assert e.value.permanent and e.value.status == 400 and "bad from" in str(e.value)
    assert f.count() == 1


def test_redaction_covers_the_secret_and_any_api_key_parameter():
    assert redact_text("u?apiKey=abc&x=1", ()) == "u?apiKey=REDACTED&x=1"
    assert redact_text("Bearer zzz", ("zzz",)) == "Bearer REDACTED"


def test_a_short_key_is_redacted_as_a_value_without_mangling_the_url():
    assert redact_text("/v2/aggs/ticker/X?apiKey=k", ("k",)) == "/v2/aggs/ticker/X?apiKey=REDACTED"
    assert redact_text("Authorization: Bearer k", ("k",)) == "Authorization: Bearer REDACTED"


def test_a_connection_error_keeps_its_cause_after_redaction():
    """The vendor error says why it could not connect (not a cut-off
    ``(Caused by N…``), and redaction keeps that while hiding the key."""
    import socket

    from appliance.config.redaction import redact
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: connection refused
    c = HttpClient("polygon", 6000, timeout_seconds=2, max_retries=0, max_retry_seconds=2,
                   backoff_base=0.01)
    with pytest.raises(ProviderError) as ei:
        c.get_json(f"http://127.0.0.1:{port}/v2/aggs/ticker/AAPL/range/1/day/2024-01-01/"
                   f"2024-01-05", params={"apiKey": "k3y-that-is-secret"}, redact=["k3y-that-is-secret"])
    shown = redact(ei.value.message)
    assert "Connection refused" in shown, shown
    assert "k3y-that-is-secret" not in shown
    assert f"http://127.0.0.1:{port}/v2/aggs/ticker/AAPL" in shown
