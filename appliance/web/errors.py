"""Every API error is JSON: ``{"error": {"code", "message"}}``."""
from __future__ import annotations

import io
import logging

import psycopg
import redis
from flask import current_app, g, jsonify, request
from psycopg_pool import PoolTimeout
from werkzeug.exceptions import HTTPException

from appliance.runtime import replica

log = logging.getLogger("appliance.api")


def api_error(status: int, code: str, message: str, **extra):
    body = {"error": {"code": code, "message": message, **extra}}
    resp = jsonify(body)
    resp.status_code = status
    return resp


class BadRequest(Exception):
    def __init__(self, message: str, code: str = "bad_request", status: int = 400):
        super().__init__(message)
        self.message, self.code, self.status = message, code, status


def _is_api_path() -> bool:
    p = request.path
    return p.startswith("/api/") or p in ("/health", "/metrics")


def retry_on_primary(e: Exception):
    """A GET whose read failed on the replica (now marked down) is answered
    once more, its reads on the primary; the response, or None (not such a
    failure, a timeout, already retried, or the primary failed too)."""
    if not replica.failed_on_replica(e) or request.method not in ("GET", "HEAD") \
            or g.get("replica_retried") or isinstance(e, psycopg.errors.QueryCanceled):
        return None
    g.replica_retried = True
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None:
        return None
    try:
        return current_app.make_response(
            current_app.ensure_sync(view)(**(request.view_args or {})))
    except Exception:  # the original error is answered instead
        log.exception("the read failed on the primary too: %s %s", request.method, request.path)
        return None


def _read_chunked(limit: int):
    """A chunked body has no Content-Length: read it here, up to one byte
    past the limit, so that a body over it is refused (413) instead of
    being cut at the limit and accepted."""
    env = request.environ
    stream = env["wsgi.input"]
    buf = bytearray()
    while len(buf) <= limit:
        chunk = stream.read(limit + 1 - len(buf))
        if not chunk:
            break
        buf += chunk
    if len(buf) > limit:
        return api_error(413, "payload_too_large",
                         f"the chunked request body is more than {limit} bytes "
                         f"(server.max_request_bytes)")
    env["wsgi.input"] = io.BytesIO(bytes(buf))
    env["CONTENT_LENGTH"] = str(len(buf))
    env.pop("wsgi.input_terminated", None)
    request.__dict__.pop("content_length", None)
    request.__dict__.pop("stream", None)
    return None


def register(app) -> None:
    """The size limit (chunked bodies included) and the JSON answer for every error."""

    @app.before_request
    def _too_large():
        # before authentication and routing: a huge body is refused at once;
        # the limit of the running config (a reload changes it)
        max_bytes = app.config["RUNTIME"].config["server"]["max_request_bytes"]
        app.config["MAX_CONTENT_LENGTH"] = max_bytes
        n = request.content_length
        if max_bytes and n is not None and n > max_bytes:
            return api_error(413, "payload_too_large",
                             f"the request body is {n} bytes; at most {max_bytes} are accepted "
                             f"(server.max_request_bytes)")
        if max_bytes and n is None and \
                "chunked" in request.headers.get("Transfer-Encoding", "").lower():
            return _read_chunked(max_bytes)
        return None

    @app.errorhandler(BadRequest)
    def _bad(e: BadRequest):
        return api_error(e.status, e.code, e.message)

    @app.errorhandler(psycopg.OperationalError)
    @app.errorhandler(PoolTimeout)
    def _db_down(e):
        if (again := retry_on_primary(e)) is not None:
            return again
        if isinstance(e, psycopg.errors.QueryCanceled):
            return api_error(503, "timeout", "the query took too long; narrow the range")
        log.warning("database unavailable: %s", e)
        return api_error(503, "database_unavailable",
                         "the database is unreachable right now; try again shortly")

    @app.errorhandler(redis.RedisError)
    def _redis_down(e):
        log.warning("redis unavailable: %s", e)
        return api_error(503, "queue_unavailable",
                         "Redis (the job queue) is unreachable right now; try again shortly")

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        if _is_api_path() or request.accept_mimetypes.best == "application/json":
            code = (e.name or "error").lower().replace(" ", "_")
            resp = api_error(e.code or 500, code, e.description or e.name)
            if e.code == 405 and getattr(e, "valid_methods", None):
                resp.headers["Allow"] = ", ".join(e.valid_methods)
            return resp
        return e

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        if (again := retry_on_primary(e)) is not None:
            return again
        if isinstance(e, psycopg.errors.QueryCanceled):
            return api_error(503, "timeout", "the query took too long; narrow the range")
        log.exception("unhandled error on %s %s", request.method, request.path)
        return api_error(500, "internal_error", "internal error; see the server log")
