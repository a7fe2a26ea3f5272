"""Loopback fake vendor servers (127.0.0.1, port 0, a thread each).

``FakeServer`` is the shared machinery: start/stop (also as a context
manager), per-path request counting, a request log and deterministic fault
injection. Faults are taken first from the ``faults`` queue (one entry per
request, ``None`` meaning "answer normally"), then drawn with probability
``fault_rate`` among ``fault_kinds`` from a ``random.Random(seed)``.

Fault kinds: ``"429"``, ``"500"``, ``"502"``, ``"503"``, ``"hang"`` (answer only
after ``hang_seconds``, longer than the client's timeout), ``"truncated"``
(a complete HTTP response whose JSON body is cut in half), ``"reset"`` (close
the connection without answering) and, for the Polygon aggregates,
``"empty_page"`` (a page with no results whose ``next_url`` repeats the
current position).
"""
from __future__ import annotations

import collections
import hashlib
import json
import random
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

FAULT_KINDS = ("429", "500", "502", "503", "hang", "truncated")


class Response:
    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: bytes | str | dict | list, headers: dict | None = None):
        self.status = status
        if isinstance(body, (dict, list)):
            body = json.dumps(body, separators=(",", ":"))
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = headers or {"Content-Type": "application/json; charset=utf-8"}


class FakeServer:
    """Base class: subclasses implement ``route(method, path, query, headers, fault)``."""

    def __init__(self, *, faults: Iterable[str | None] = (), fault_rate: float = 0.0,
                 fault_kinds: Iterable[str] = FAULT_KINDS, fault_paths: str | None = None,
                 seed: int = 0, hang_seconds: float = 2.0, bind: str = "127.0.0.1"):
        self.bind = bind  # another local address, e.g. a test bridge's, for containers
        self._faults: collections.deque = collections.deque(faults)
        self.fault_rate = float(fault_rate)
        self.fault_kinds = tuple(fault_kinds)
        self.fault_paths = fault_paths  # only paths starting with this get faults
        self.hang_seconds = float(hang_seconds)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()  # path -> count
        self.log: list[tuple[str, dict, int, str | None]] = []  # (path, query, status, fault)
        self.times: list[float] = []  # time.monotonic() of each request, in arrival order
        self.faults_served: collections.Counter = collections.Counter()
        self._n = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.bind}:{self.port}"

    def start(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # http.server API
                fake._handle(self)

            def log_message(self, *args):  # quiet
                pass

        self._httpd = ThreadingHTTPServer((self.bind, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- faults -------------------------------------------------------------------
    def add_faults(self, faults: Iterable[str | None]) -> None:
        with self._lock:
            self._faults.extend(faults)

    def _next_fault(self, path: str) -> str | None:
        if self.fault_paths and not path.startswith(self.fault_paths):
            return None
        if self._faults:
            return self._faults.popleft()
        if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
            return self._rng.choice(self.fault_kinds)
        return None

    def request_id(self, n: int) -> str:
        return hashlib.md5(f"{type(self).__name__}-{n}".encode()).hexdigest()

    def count(self, prefix: str = "") -> int:
        """Requests whose path starts with ``prefix``."""
        with self._lock:
            return sum(v for k, v in self.requests.items() if k.startswith(prefix))

    # -- the handler ------------------------------------------------------------------
    def fault_response(self, kind: str, n: int) -> Response | None:
        """The vendor's body for an injected HTTP error (subclasses refine)."""
        if kind == "429":
            return Response(429, {"error": "Too Many Requests"})
        if kind in ("500", "502", "503"):
            return Response(int(kind), "<html><body><h1>%s</h1></body></html>" % kind,  # noqa: UP031
                            {"Content-Type": "text/html"})
        return None

    def route(self, path: str, query: dict, headers, fault: str | None, n: int) -> Response:
        raise NotImplementedError

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        with self._lock:
            self._n += 1
            n = self._n
            self.times.append(time.monotonic())
            self.requests[path] += 1
            fault = self._next_fault(path)
            if fault:
                self.faults_served[fault] += 1
        if fault == "hang":
            if self._stopping.wait(self.hang_seconds):
                return
        if fault == "reset":
            self._log(path, query, 0, fault)
            h.close_connection = True
            return
        resp = self.fault_response(fault, n) if fault and fault != "hang" else None
        if resp is None:
            try:
                resp = self.route(path, query, h.headers, fault, n)
            except Exception as e:  # noqa: BLE001 - a fake bug must show, not hang
                resp = Response(500, {"status": "ERROR", "error": f"fake error: {e!r}"})
        body = resp.body
        if fault == "truncated" and resp.status == 200:
            body = body[: max(1, len(body) // 2)]
        self._log(path, query, resp.status, fault)
        try:
            h.send_response(resp.status)
            for k, v in resp.headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _log(self, path, query, status, fault) -> None:
        with self._lock:
            self.log.append((path, query, status, fault))


class StaticFake(FakeServer):
    """Answers canned bodies: ``routes`` maps a path to ``(status, body)``
    (body: bytes, str or JSON-able). ``{base}`` in a str body is replaced by
    the server's base URL (for ``next_url``)."""

    def __init__(self, routes: dict, **fault_kw):
        super().__init__(**fault_kw)
        self.routes = dict(routes)

    def route(self, path, query, headers, fault, n):
        if path not in self.routes:
            return Response(404, {"error": "no route " + path})
        status, body = self.routes[path]
        if isinstance(body, str):
            body = body.replace("{base}", self.base_url)
        return Response(status, body)
